"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=2` (gloo, CPU).

Every rank holds the same global batch (same seed); it computes the single-process reference on a private copy of
the model, then its own slice through DDP (or FSDP2) with the features all-gathered, and checks that the mean loss
over ranks and the synchronised parameter gradients equal the reference. Prints "checks passed: N" on rank 0.
"""

from __future__ import annotations

import copy
import sys

import torch
from torch import nn

import torch.nn.functional as F

from contrastive.config import DistillConfig, LossConfig, ModelConfig
from contrastive.distributed import (
    DistInfo,
    all_reduce_mean,
    cleanup,
    init_distributed,
    shard_model,
    sync_replicated_grads,
)
from contrastive.model import create_model
from contrastive.losses.batch import BatchLoss, global_batch_loss
from contrastive.losses.distill import TeacherFeatures
from contrastive.training.step import gradcache_backward
from tests.helpers.grads import ZERO_GRADIENT, ZERO_GRADIENT_CLIP, assert_grads_close

TINY = {"layers": 1, "width": 32, "heads": 2}


def full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for n, p in model.named_parameters():
        g = p.grad
        out[n] = (g.full_tensor() if hasattr(g, "full_tensor") else g).detach().clone()
    model.zero_grad(set_to_none=True)
    return out


def backward_step(wrapper, pixels, tokens, loss_fn, micro: int):
    """This rank's loss, its gradients accumulated: gradient caching over micro-batches of `micro` rows, or one
    forward and backward when `micro` is 0."""
    if micro:
        return gradcache_backward(wrapper, pixels, tokens, loss_fn, micro)
    out = wrapper(pixels, tokens)
    loss = loss_fn(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias)
    loss.backward()
    return loss


def distill_checks(base: nn.Module, ddp: nn.Module, pixels: torch.Tensor, tokens: torch.Tensor, ids: torch.Tensor,
                   rows: slice, info: DistInfo) -> int:
    """CLIP mixed with distillation from a teacher's features (gathered across ranks), local (tiled) and global,
    with and without gradient caching, under DDP: mean loss and gradients equal one process on the whole batch."""
    gen = torch.Generator().manual_seed(1)
    teacher = TeacherFeatures(F.normalize(torch.randn(len(ids), 24, generator=gen), dim=-1),
                              F.normalize(torch.randn(len(ids), 24, generator=gen), dim=-1), torch.tensor(20.0))
    mine = TeacherFeatures(teacher.image[rows], teacher.text[rows], teacher.logit_scale)
    distill = DistillConfig(teacher="t", weight=0.7, temperature=2.0)
    checks = 0
    for local, chunk in ((True, 3), (False, 0)):
        loss_cfg = LossConfig(local_loss=local, chunk_size=chunk)
        ref_model = copy.deepcopy(base)
        out = ref_model(pixels, tokens)
        ref_loss = BatchLoss(loss_cfg, DistInfo(), distill)(out.image_embeds, out.text_embeds, out.logit_scale,
                                                           out.logit_bias, ids, ids, teacher=teacher)
        ref_loss.backward()
        ref = full_grads(ref_model)
        batch_loss = BatchLoss(loss_cfg, info, distill)
        for micro in (0, 3):
            what = f"distill local={local} chunk={chunk} ddp micro={micro}:"

            def loss_fn(i, t, s, bias):
                return batch_loss(i, t, s, bias, ids[rows], ids[rows], teacher=mine)

            loss = backward_step(ddp, pixels[rows], tokens[rows], loss_fn, micro)
            torch.testing.assert_close(all_reduce_mean(loss.detach(), info), ref_loss.detach(), rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{what} loss: {m}")
            assert_grads_close(full_grads(ddp.module), ref, what=what, zero=ZERO_GRADIENT_CLIP)
            checks += 1
    return checks


def main() -> int:
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    assert info.world_size == 2, "run with --nproc_per_node=2"
    torch.manual_seed(0)
    cfg = ModelConfig(image_encoder_args=TINY, text_encoder_args=TINY, embed_dim=16, image_size=16,
                      context_length=12, init_logit_bias=-10.0, tokenizer="byte")
    base = create_model(cfg)[0]
    big, b = 8, 8 // info.world_size
    pixels = torch.randn(big, 3, 16, 16)  # (B, 3, H, W)
    tokens = torch.randint(3, 200, (big, 12))  # (B, T)
    tokens[:, -1] = 257
    ids = torch.tensor([0, 1, 2, 1, 3, 4, 5, 2])  # duplicates inside a rank and across ranks
    rows = slice(info.rank * b, (info.rank + 1) * b)

    ddp = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
    fsdp = shard_model(copy.deepcopy(base))
    checks = 0
    for name in ("clip", "siglip"):
        for local in (True, False):
            for chunk in ((3,) if local else (0,)):  # tiled local loss, plain global loss
                loss_cfg = LossConfig(name=name, local_loss=local, chunk_size=chunk)
                ref_model = copy.deepcopy(base)
                out = ref_model(pixels, tokens)
                ref_loss = global_batch_loss(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias,
                                             ids, ids, loss_cfg, DistInfo())
                ref_loss.backward()
                ref = full_grads(ref_model)
                for wrapper, kind in ((ddp, "ddp"), (fsdp, "fsdp")):
                    for micro in (0, 3):  # 3 rows of this rank's 4: an uneven last micro-batch
                        what = f"{name} local={local} chunk={chunk} {kind} micro={micro}:"

                        def loss_fn(i, t, s, bias):
                            return global_batch_loss(i, t, s, bias, ids[rows], ids[rows], loss_cfg, info)

                        loss = backward_step(wrapper, pixels[rows], tokens[rows], loss_fn, micro)
                        if kind == "fsdp":
                            sync_replicated_grads(wrapper, info)
                        torch.testing.assert_close(all_reduce_mean(loss.detach(), info), ref_loss.detach(),
                                                   rtol=1e-5, atol=1e-6, msg=lambda m: f"{what} loss: {m}")
                        got = full_grads(wrapper.module if kind == "ddp" else wrapper)
                        assert_grads_close(got, ref, what=what, zero=ZERO_GRADIENT_CLIP if name == "clip" else ZERO_GRADIENT)
                        checks += 1
    checks += distill_checks(base, ddp, pixels, tokens, ids, rows, info)
    if info.is_main:
        print(f"checks passed: {checks}")
    cleanup(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
