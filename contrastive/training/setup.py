"""Set-up steps of a run that are not the loop: the device, the text side (tokenizer and context), the model as
it will train (pretrained weights, fine-tuning choices, sharding), and its training wrappers
(DDP, torch.compile)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from torch import nn

from ..interop.checkpoint import latest_checkpoint, read_meta
from ..config import Config, ModelConfig, TrainConfig
from ..distributed import DistInfo, broadcast_object, shard_model
from ..encoders.hf import HFTower
from ..errors import CheckpointError, ConfigError
from ..interop.loading import init_from
from ..model import ContrastiveModel, create_model
from .finetune import apply_finetune, reset_logit_scale
from .guards import parse_device
from .run_dir import resolve_run_dir
from .step import compute_loss, step_loss_fn


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    """`train.device` as a torch.device; `auto` is cuda when a GPU is visible; under torchrun cuda is this rank's."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(spec, "train.device")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device


def _saved_text(cfg: Config) -> tuple[ModelConfig, Any]:
    """(model config, tokenizer.json of the checkpoint to resume or None): a resumed run keeps the vocabulary and
    context its checkpoint was trained with."""
    model_cfg, saved = cfg.model, None
    ckpt = latest_checkpoint(resolve_run_dir(cfg) / "checkpoints") if cfg.train.resume else None
    if ckpt is not None and (ckpt / "tokenizer.json").is_file():
        saved = ckpt / "tokenizer.json"
        if model_cfg.context_length == 0:
            try:
                context = int(read_meta(ckpt)["config"]["model"]["context_length"])
                model_cfg = dataclasses.replace(model_cfg, context_length=context)
            except (CheckpointError, KeyError, TypeError, ValueError):
                pass
    return model_cfg, saved


def prepare_text(cfg: Config, info: DistInfo):
    """(model config with its context resolved, tokenizer, caption report). Under torchrun every rank takes the
    main process's vocabulary: only the main process reads the captions."""
    from tokenizers import Tokenizer

    from ..text.tokenizer import TextTokenizer, build_tokenizer
    from ..text.vocab import prepare_text as fit_text

    model_cfg, saved = _saved_text(cfg)
    if not info.enabled:
        return fit_text(model_cfg, cfg.data, saved)
    # the others take the main process's context and, for a vocabulary of the toolkit's own, that vocabulary itself
    ours = fit_text(model_cfg, cfg.data, saved) if info.is_main else None
    vocab = ours[1].tokenizer.to_str() if ours is not None and isinstance(ours[1], TextTokenizer) else None
    model_cfg, report, vocab = broadcast_object(None if ours is None else (ours[0], ours[2], vocab), info)
    if ours is not None:
        return ours
    if vocab is not None:
        return model_cfg, TextTokenizer(Tokenizer.from_str(vocab), model_cfg.context_length, model_cfg.tokenizer), report
    return model_cfg, build_tokenizer(model_cfg.tokenizer, model_cfg.context_length, model_cfg.trust_remote_code), report


def build_model(cfg: Config, tokenizer: Any, device: torch.device, info: DistInfo) -> tuple[ContrastiveModel, Any]:
    """(model on `device` as it will train, tokenizer): built (with the speed switches of `model.`), initialised,
    with the fine-tuning choices applied, and sharded under `train.fsdp` (before the optimizer: sharding replaces
    the parameters)."""
    t = cfg.train
    try:
        model, tokenizer = create_model(cfg.model, tokenizer)
    except ValueError as e:  # a tower, pooling or tokenizer setting that does not fit: one line, not a traceback
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"model: {e}") from None
    if cfg.model.init_from:
        init_from(model, cfg.model.init_from)
    apply_finetune(model, cfg.finetune)
    if cfg.finetune.reset_logit_scale > 0:  # a resumed run then loads its own scale over it
        reset_logit_scale(model, cfg.finetune.reset_logit_scale)
    if t.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if info.enabled:  # every rank waits for a gradient of every trainable parameter: freeze those never used
        for tower in (m for m in model.modules() if isinstance(m, HFTower)):
            if (unused := tower.freeze_unused()) and info.is_main:
                print(f"{tower.source}: froze {len(unused)} parameters its pooling does not use ({unused[0]}, ...)")
    if t.fsdp and info.enabled:
        shard_model(model)
    return model, tokenizer


def wrap_for_training(model: nn.Module, t: TrainConfig, info: DistInfo,
                      device: torch.device) -> tuple[nn.Module, Callable[..., torch.Tensor]]:
    """(the module the step runs, the step's forward-and-loss function): DDP when replicated over ranks; one
    compiled graph for towers + loss where the step is one forward, else the towers compiled alone (keeping the
    loss's collectives, and gradient caching's two passes around the loss, out of the graph)."""
    train_model: nn.Module = model
    if info.enabled and not t.fsdp:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    whole_step = t.compile and not info.enabled and t.micro_batch_size == 0
    forward = step_loss_fn(compute_loss, whole_step, mode=t.compile_mode)
    if t.compile and not whole_step:
        train_model = torch.compile(train_model, mode=t.compile_mode)
    return train_model, forward
