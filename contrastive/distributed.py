"""torch.distributed plumbing: process group set-up from torchrun's environment, rank helpers, feature gathering
with autograd, and FSDP2 sharding of the towers. (The loss over the global batch is `losses.batch`.)"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn



@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (WORLD_SIZE > 1); a plain process gets rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (a collective: every rank calls it)."""
    if not info.enabled:
        return [obj]
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, obj)
    return parts


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / info.world_size


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------------
# gathering features across ranks


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's (b, ...) tensor into (N·b, ...), differentiably.

    Every rank's loss reads every rank's rows, so the gradient reaching this rank's rows is the sum over ranks of
    the gradient each rank's loss sends them: all-reduce (sum), then keep this rank's slice. Data-parallel
    averaging of parameter gradients then yields the gradient of the mean of the per-rank losses, as one process
    on the whole batch would compute it (no extra factor of the world size).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts)  # (N·b, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()  # (N·b, ...); all_reduce works in place
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """(b, ...) on each rank -> (world·b, ...) in rank order, with gradients flowing back to every rank's rows.

    Every rank must pass the same shape (the trainer gives each rank batch_size / world_size rows).
    """
    if not info.enabled:
        return x
    return _AllGatherWithGrad.apply(x)


@torch.no_grad()
def all_gather_tensor(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """(b, ...) on each rank -> (world·b, ...) in rank order, without gradients (ids, labels)."""
    if not info.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


# ----------------------------------------------------------------------------------------------------------------------
# FSDP2: towers too large for one device


def shard_model(model: nn.Module) -> nn.Module:
    """Shard `model` in place with FSDP2 `fully_shard`: each block of every ModuleList, each tower, then the root.

    fully_shard refuses 0-dim parameters, so the temperature and bias stay replicated on every rank (they are two
    numbers); `sync_replicated_grads` averages their gradients. Build the optimizer after this call: sharding
    replaces the parameters.
    """
    from torch.distributed.fsdp import fully_shard

    for tower in (model.image_encoder, model.text_encoder):
        done: list[str] = []
        for name, module in tower.named_modules():
            if isinstance(module, nn.ModuleList) and not any(name.startswith(d + ".") for d in done):
                for block in module:
                    fully_shard(block)
                done.append(name)
        fully_shard(tower)
    fully_shard(model, ignored_params={p for p in model.parameters() if p.ndim == 0})
    from torch.distributed.fsdp import register_fsdp_forward_method

    for method in ("encode_image", "encode_text"):  # evaluation calls these, not forward: gather for them too
        register_fsdp_forward_method(model, method)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def sync_replicated_grads(model: nn.Module, info: DistInfo) -> None:
    """Average over ranks the gradients of parameters FSDP leaves replicated (the 0-dim temperature and bias)."""
    for p in model.parameters():
        if p.grad is not None and not _is_dtensor(p.grad):
            dist.all_reduce(p.grad)
            p.grad /= info.world_size


def clip_sharded_grad_norm_(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Global gradient norm of a sharded model (sharded and replicated parameters), clipped to `max_norm` if > 0."""
    sharded, replicated = [], []
    for p in model.parameters():
        if p.grad is not None:
            (sharded if _is_dtensor(p.grad) else replicated).append(p.grad)
    local = [g.to_local() for g in sharded]
    device = (local + replicated)[0].device
    sq_sharded = sum((g.float().square().sum() for g in local), torch.zeros((), device=device))
    dist.all_reduce(sq_sharded)  # shards are disjoint: their squares add up over ranks
    sq_replicated = sum((g.float().square().sum() for g in replicated), torch.zeros((), device=device))
    total = (sq_sharded + sq_replicated).sqrt()
    if max_norm > 0:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        with torch.no_grad():
            for g in local + replicated:
                g.mul_(coef.to(g.dtype))
    return total


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts of a sharded model, gathered whole onto rank 0's CPU (empty on other ranks).

    A collective: every rank must call it. The optimizer's state is keyed by parameter name.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, optimizer, options=options))


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim_state: dict) -> None:
    """Load whole (unsharded) state dicts, as `full_state_dicts` wrote them, into a sharded model on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)
