"""What a run adds for fine-tuning without forgetting: the reference sets (`eval.reference`, scored for the starting
weights at step 0 and at every evaluation as `ref/...` with `ref/retained_...`), the moving average of the weights
(`train.ema_decay`, evaluated beside them as `val_ema/...` and `ref_ema/...`), the score that picks the best
checkpoint from both, and the start-up line with the trainable-parameter counts."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..config import Config
from .logging import metrics_of
from .ema import EMA
from .reference import ReferenceTracker, read_reference_tables, selection_score

REFERENCE, EMA_SUFFIX = "ref", "_ema"  # eval-set name of the reference sets; suffix of the EMA's eval sets


class BaselineHook:
    """The reference scores at step 0, kept in every checkpoint (a model-state hook that the weights never move),
    so that a resumed run still relates its scores to the true start."""

    def __init__(self, tracker: ReferenceTracker) -> None:
        self.tracker = tracker

    def update(self, model: nn.Module, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return self.tracker.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.tracker.load_state_dict(state)


def reference_tracker(cfg: Config) -> ReferenceTracker | None:
    """The run's reference sets, read and checked now (None without `eval.reference`)."""
    if not cfg.eval.reference:
        return None
    return ReferenceTracker(read_reference_tables(cfg.eval.reference), cfg.eval)


def reference_evaluation(tracker: ReferenceTracker, preprocess: Callable, tokenizer: Callable, cfg: Config,
                         device: torch.device) -> Callable[[nn.Module], dict[str, float]]:
    """model -> its reference metrics and, once the baseline is known, their `retained_` ratios."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        measured = tracker.measure(model, preprocess, tokenizer, batch_size=cfg.eval.batch_size, device=device,
                                   precision=cfg.train.precision)
        return {**measured, **tracker.retained(measured)}

    return evaluate


def build_ema(model: nn.Module, cfg: Config) -> EMA | None:
    t = cfg.train
    return EMA(model, t.ema_decay, every=t.ema_every_n_steps, warmup=t.ema_warmup) if t.ema_decay > 0 else None


def with_ema_weights(ema: EMA, evaluate: Callable[[nn.Module], dict[str, float]]) -> Callable[[nn.Module], dict[str, float]]:
    """`evaluate` run on the moving average (the trained weights are put back afterwards, bit for bit)."""

    def run(model: nn.Module) -> dict[str, float]:
        with ema.applied_to(model):
            return evaluate(model)

    return run


def best_score(metrics: dict[str, float], cfg: Config, tracker: ReferenceTracker | None) -> float | None:
    """What ranks checkpoints: `val/<eval.best_metric>`, or with reference sets and `eval.reference_weight` w,
    (1 - w) * that + w * the mean reference headline metric."""
    target = metrics.get(f"val/{cfg.eval.best_metric_name()}") if cfg.eval.best_metric_name() else None
    if tracker is None or cfg.eval.reference_weight == 0:
        return target
    reference = tracker.score(metrics_of(REFERENCE, metrics))
    return selection_score(target, reference, cfg.eval.reference_weight)


def trainable_line(model: nn.Module) -> str:
    """`trainable parameters: image tower 0 of 940,032 (locked), text tower 12,288 of 1,103,616 (LoRA), ...`."""
    parts = []
    for name in ("image", "text"):
        tower = getattr(model, f"{name}_encoder")
        total = sum(p.numel() for p in tower.parameters())
        trainable = [(n, p) for n, p in tower.named_parameters() if p.requires_grad]
        count = sum(p.numel() for _, p in trainable)
        how = ("LoRA" if trainable and all("lora_" in n for n, _ in trainable) else
               "locked" if not trainable else "all" if count == total else "partly")
        parts.append(f"{name} tower {count:,} of {total:,} ({how})")
    towers = {id(p) for t in (model.image_encoder, model.text_encoder) for p in t.parameters()}
    rest = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in towers)
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"trainable parameters: {', '.join(parts)}, projections and temperature {rest:,}; {total:,} in all"
