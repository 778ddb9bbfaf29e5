"""Training-speed benchmark: this toolkit's train step against OpenCLIP's, alternating in one process (the
harness behind `scripts/bench.py`; it lives beside the scripts, outside the library).

A *contender* is one way of running a training step (a model, its optimizer and a step function). All contenders
of a run share one architecture size (`BenchSpec`), batch, precision and AdamW settings, and run in turns — one
step each, round after round — so that load from other processes on a shared machine falls on all of them alike;
ratios are medians over rounds. Per contender the report gives samples/s, the time split of a step (data / forward
/ backward / optimizer, from separate synchronised steps), peak memory, FLOPs per sample (`torch.utils.flop_counter`)
and MFU against the matmul rate measured on the same device in the same run, twice: in useful FLOPs (what the
plain model's step computes, the same for every contender) and in executed FLOPs (what the contender's own step
computes: less where it skips work).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from contrastive.config import Config, LossConfig, ModelConfig, OptimConfig, TrainConfig
from contrastive.encoders import TextTransformer, VisionTransformer
from contrastive.model import ContrastiveModel
from contrastive.losses.batch import BatchLoss
from contrastive.training.optim import build_optimizer, param_groups
from contrastive.training.step import compute_loss, step_loss_fn, train_step


@dataclass(frozen=True)
class BenchSpec:
    """Architecture sizes shared by every contender (CLIP's ViT image tower + causal text tower)."""

    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    context_length: int
    vocab_size: int
    embed_dim: int
    batch_size: int


SPECS: dict[str, BenchSpec] = {
    # the default recipe's towers (configs/shapes_tiny.yaml), for CPU
    "tiny": BenchSpec(64, 8, 192, 4, 3, 192, 4, 3, 64, 259, 128, 128),
    "b32": BenchSpec(224, 32, 768, 12, 12, 512, 12, 8, 77, 49408, 512, 512),
    "b16": BenchSpec(224, 16, 768, 12, 12, 512, 12, 8, 77, 49408, 512, 256),
    "l14": BenchSpec(224, 14, 1024, 24, 16, 768, 12, 12, 77, 49408, 768, 128),
}


@dataclass(frozen=True)
class StepOptions:
    """Switches of this toolkit's step; `plain` turns every optimisation off."""

    fused_adamw: bool = True  # optim.fused
    foreach: bool = True  # optim.foreach (used when fused_adamw is off)
    fused_qkv: bool = True  # model.fused_qkv
    pooled_last_block: bool = True  # model.pooled_last_block
    trim_padding: bool = True  # data.trim_padding: the batch's tokens cut to its longest caption (see `trim_length`)
    onednn_linear: bool = True  # model.onednn_linear: fp32 CPU linear layers on oneDNN's GEMM instead of MKL's
    grad_checkpointing: bool = False  # train.grad_checkpointing: tower activations recomputed in the backward
    compile: bool = False  # train.compile
    sync_each_step: bool = False  # read the loss on the host after every step (what logging every step costs)


# every switch off: the step as a straightforward implementation would run it
PLAIN = StepOptions(fused_adamw=False, foreach=False, fused_qkv=False, pooled_last_block=False, trim_padding=False,
                    onednn_linear=False)

# name -> options; "default" is what `contrastive train` runs with the shipped config defaults; "+x" is plain with
# switch x alone turned on, "default-x" the default with x off
VARIANTS: dict[str, StepOptions] = {
    "plain": PLAIN,
    "+foreach_adamw": dataclasses.replace(PLAIN, foreach=True),
    "+fused_adamw": dataclasses.replace(PLAIN, fused_adamw=True),
    "+fused_qkv": dataclasses.replace(PLAIN, fused_qkv=True),
    "+pooled_last_block": dataclasses.replace(PLAIN, pooled_last_block=True),
    "+trim_padding": dataclasses.replace(PLAIN, trim_padding=True),
    "+onednn_linear": dataclasses.replace(PLAIN, onednn_linear=True),
    "default": StepOptions(),
    "default-onednn_linear": StepOptions(onednn_linear=False),
    "default+grad_ckpt": StepOptions(grad_checkpointing=True),
    "default+sync": StepOptions(sync_each_step=True),
    "default+compile": StepOptions(compile=True),
}


# ----------------------------------------------------------------------------------------------------------------------
# contenders


class PhaseScaler(torch.amp.GradScaler):
    """A GradScaler that stamps phase boundaries: `scale` ends the forward, `unscale_` ends the backward.

    Both train steps call them in that order, so the real step functions are timed without being rewritten.
    """

    def __init__(self, device: torch.device, enabled: bool) -> None:
        super().__init__(device.type, enabled=enabled)
        self.device = device
        self.marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        synchronize(self.device)
        self.marks.append((name, time.perf_counter()))

    def scale(self, outputs):  # type: ignore[override]
        self.mark("forward")
        return super().scale(outputs)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        self.mark("backward")
        super().unscale_(optimizer)


@dataclass
class Contender:
    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: Callable[[dict[str, Any], torch.amp.GradScaler], Any]  # one optimizer step on a device batch
    sync_each_step: bool = False


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(spec: BenchSpec, precision: str, options: StepOptions, lr: float = 5e-4) -> Config:
    """The run config whose train step a toolkit contender executes: the CLIP loss with the default config's
    duplicate-aware targets, as `contrastive train` runs it (OpenCLIP's ClipLoss has no such targets)."""
    return Config(
        loss=LossConfig(name="clip"),
        optim=OptimConfig(lr=lr, fused=options.fused_adamw, foreach=options.foreach),
        model=ModelConfig(fused_qkv=options.fused_qkv, pooled_last_block=options.pooled_last_block,
                          onednn_linear=options.onednn_linear),
        train=TrainConfig(batch_size=spec.batch_size, precision=precision, compile=options.compile,
                          grad_checkpointing=options.grad_checkpointing),
    )


def build_toolkit_model(spec: BenchSpec, fused_qkv: bool = True, pooled_last_block: bool = True,
                        onednn_linear: bool = True) -> ContrastiveModel:
    switches = dict(fused_qkv=fused_qkv, pooled_last_block=pooled_last_block, onednn_linear=onednn_linear)
    image = VisionTransformer(spec.image_size, spec.patch_size, spec.vision_width, spec.vision_layers, spec.vision_heads,
                              **switches)
    text = TextTransformer(spec.vocab_size, spec.context_length, spec.text_width, spec.text_layers, spec.text_heads,
                           eot_token_id=spec.vocab_size - 1, **switches)
    return ContrastiveModel(image, text, spec.embed_dim)


def toolkit_contender(name: str, spec: BenchSpec, device: torch.device, precision: str, options: StepOptions) -> Contender:
    cfg = bench_config(spec, precision, options)
    model = build_toolkit_model(spec, cfg.model.fused_qkv, cfg.model.pooled_last_block, cfg.model.onednn_linear).to(device)
    model.set_grad_checkpointing(cfg.train.grad_checkpointing)  # as the recipe's setup does
    optimizer = build_optimizer(model, cfg.optim, param_groups(model, cfg.optim))
    forward = step_loss_fn(compute_loss, options.compile)
    loss_fn = BatchLoss(cfg.loss)

    def step(batch: dict[str, Any], scaler: torch.amp.GradScaler):
        if options.trim_padding and "trim_length" in batch:  # what the loader's collate does in its workers
            batch = {**batch, "tokens": batch["tokens"][:, : batch["trim_length"]]}
        return train_step(model, batch, optimizer, scaler, loss_fn, device, precision=cfg.train.precision,
                          grad_clip=cfg.optim.grad_clip, forward=forward)[0]

    return Contender(name, model, optimizer, step, options.sync_each_step)


def openclip_contender(name: str, spec: BenchSpec, device: torch.device, precision: str, compile: bool = False,
                       fused_adamw: bool = False, grad_checkpointing: bool = False, lr: float = 5e-4) -> Contender:
    """OpenCLIP's CLIP at the same sizes, stepped as its `train_one_epoch` does (autocast, ClipLoss, clip grad
    norm, AdamW, logit-scale clamp). Its training script builds AdamW with torch's default implementation (the
    per-tensor loop on CPU); `fused_adamw` gives it the fused kernel the toolkit's default uses, so that the ratio
    to the toolkit separates optimizer settings from model code. `grad_checkpointing` is its `--grad-checkpointing`
    (`model.set_grad_checkpointing()`)."""
    from open_clip.loss import ClipLoss
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    vision = CLIPVisionCfg(layers=spec.vision_layers, width=spec.vision_width,
                           head_width=spec.vision_width // spec.vision_heads, patch_size=spec.patch_size,
                           image_size=spec.image_size)
    text = CLIPTextCfg(context_length=spec.context_length, vocab_size=spec.vocab_size, width=spec.text_width,
                       heads=spec.text_heads, layers=spec.text_layers)
    model = CLIP(spec.embed_dim, vision, text, output_dict=True).to(device)
    model.set_grad_checkpointing(grad_checkpointing)
    o = OptimConfig(lr=lr)

    def no_decay(n: str, p: torch.Tensor) -> bool:  # OpenCLIP's exclusion rule
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": o.weight_decay}],
        lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused_adamw or None)
    loss_fn = ClipLoss()
    forward = torch.compile(model) if compile else model
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step(batch: dict[str, Any], scaler: torch.amp.GradScaler):
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = forward(batch["pixels"], batch["tokens"])
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        return loss.detach()

    return Contender(name, model, optimizer, step)


# ----------------------------------------------------------------------------------------------------------------------
# inputs


def synthetic_batch(spec: BenchSpec, device: torch.device, seed: int = 0,
                    caption_lengths: tuple[int, int] | None = None) -> dict[str, Any]:
    """Random pixels and captions ending in end-of-text (the highest id, as both towers pool there): full-length,
    or of lengths drawn uniformly from `caption_lengths` (tokens, end-of-text included) and padded with 0.

    `trim_length` is the width `data.trim_padding` cuts the batch to; toolkit contenders with that switch use it,
    OpenCLIP (whose tokenizer always pads to the context) gets the padded tokens.
    """
    from contrastive.data.samples import padded_length

    g = torch.Generator().manual_seed(seed)
    B, T = spec.batch_size, spec.context_length
    tokens = torch.randint(1, spec.vocab_size - 1, (B, T), generator=g)
    if caption_lengths is None:
        tokens[:, -1] = spec.vocab_size - 1
    else:
        lo, hi = max(1, caption_lengths[0]), min(T, caption_lengths[1])
        lengths = torch.randint(lo, hi + 1, (B,), generator=g)  # (B,)
        tokens[torch.arange(B), lengths - 1] = spec.vocab_size - 1
        tokens[torch.arange(T)[None] >= lengths[:, None]] = 0
    return {
        "pixels": torch.randn(B, 3, spec.image_size, spec.image_size, generator=g).to(device),  # (B, 3, S, S)
        "tokens": tokens.to(device),  # (B, T)
        "trim_length": padded_length(tokens, 0),
        "image_ids": torch.arange(B, device=device),
        "text_ids": torch.arange(B, device=device),
    }


def loader_batches(data: str, spec: BenchSpec, device: torch.device, num_workers: int, pin_memory: bool,
                   copy_stream: bool = True) -> Iterator[dict[str, Any]]:
    """Endless batches of real images and captions through the training loader (transforms, tokenizer, workers),
    padded to the context as OpenCLIP's are; `trim_length` tells toolkit contenders where their loader would cut."""
    from contrastive.config import DataConfig, ModelConfig
    from contrastive.data import TrainData
    from contrastive.data.samples import padded_length
    from contrastive.text.tokenizer import build_tokenizer
    from contrastive.data.prefetch import device_batches

    if spec.vocab_size < 259:
        raise ValueError("end-to-end mode uses the byte tokenizer, which needs vocab_size >= 259")
    model_cfg = ModelConfig(image_size=spec.image_size, context_length=spec.context_length)
    data_cfg = DataConfig(train=data, num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                          trim_padding=False)
    tokenizer = build_tokenizer("byte", spec.context_length)
    train_data = TrainData(data_cfg, model_cfg, tokenizer, spec.batch_size, seed=0)

    def with_trim_length(batch: dict[str, Any]) -> dict[str, Any]:
        batch["trim_length"] = padded_length(batch["tokens"], tokenizer.pad_token_id)
        return batch

    epoch = 0
    while True:
        yield from device_batches((with_trim_length(b) for b in train_data.batches(epoch, 0)), device, copy_stream)
        epoch += 1


def openclip_table(data: str, folder: str) -> str:
    """The training table in the form OpenCLIP's `CsvDataset` reads: tab-separated `filepath` / `title` columns,
    image paths as given to its `--train-data` (absolute here, as it opens them from the working directory)."""
    import pandas as pd

    from contrastive.config import DataConfig

    keys = DataConfig()
    df = pd.read_csv(data, sep="\t" if data.endswith(".tsv") else ",")
    root = Path(data).resolve().parent
    out = pd.DataFrame({"filepath": [str(root / f) for f in df[keys.image_key]], "title": df[keys.caption_key]})
    path = Path(folder) / "openclip_train.tsv"
    out.to_csv(path, sep="\t", index=False)
    return str(path)


def openclip_batches(data: str, spec: BenchSpec, device: torch.device, num_workers: int,
                     folder: str) -> Iterator[dict[str, Any]]:
    """Endless batches from OpenCLIP's own pipeline, built as its training script builds it (`open_clip_train.data`:
    `CsvDataset` with `image_transform(size, is_train=True)`, a shuffled DataLoader that drops the last batch,
    pinned on CUDA, new workers each epoch; the batch copied to the device with `non_blocking`). The captions go
    through the byte tokenizer (its ids, padded to the context): the towers of all contenders share one vocabulary."""
    from open_clip import image_transform
    from open_clip_train.data import CsvDataset
    from torch.utils.data import DataLoader

    from contrastive.text.tokenizer import build_tokenizer

    dataset = CsvDataset(openclip_table(data, folder), image_transform(spec.image_size, is_train=True),
                         img_key="filepath", caption_key="title", sep="\t",
                         tokenizer=build_tokenizer("byte", spec.context_length))
    loader = DataLoader(dataset, batch_size=spec.batch_size, shuffle=True, num_workers=num_workers,
                        pin_memory=device.type == "cuda", drop_last=True)
    while True:
        for images, texts in loader:
            yield {"pixels": images.to(device, non_blocking=True), "tokens": texts.to(device, non_blocking=True)}


# ----------------------------------------------------------------------------------------------------------------------
# measurements


_CPU_SDPA = {}
if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    # the flop counter knows the CUDA attention kernels but not the CPU one; count it with the same formula
    def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def _cpu_sdpa_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    _CPU_SDPA = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    }


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's linear ((..., K) @ (N, K)^T), which the counter does not know: 2 M N K, as for `mm`."""
    return 2 * math.prod(x_shape[:-1]) * w_shape[0] * w_shape[1]


_FLOP_FORMULAS = dict(_CPU_SDPA)
if hasattr(torch.ops.mkldnn, "_linear_pointwise"):
    _FLOP_FORMULAS[torch.ops.mkldnn._linear_pointwise] = _onednn_linear_flops


def step_flops(contender: Contender, batch: dict[str, Any], device: torch.device) -> int:
    """FLOPs of one training step (forward + backward; the optimizer's elementwise work is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    scaler = torch.amp.GradScaler(device.type, enabled=False)
    with FlopCounterMode(display=False, custom_mapping=_FLOP_FORMULAS) as counter:
        contender.step(batch, scaler)
    return int(counter.get_total_flops())


def clock(device: torch.device) -> float:
    """Seconds for timing work on `device`: on a GPU the wall clock; on the CPU the CPU time of this process (all
    its threads), which other processes on a shared machine do not inflate, as they do the wall clock."""
    return time.perf_counter() if device.type == "cuda" else time.process_time()


def gemm_shapes(spec: BenchSpec) -> list[tuple[int, int, int]]:
    """(M, K, N) of the towers' linear layers for `spec` (rows = batch x tokens): what the peak-rate probe runs."""
    shapes = []
    for tokens, width in (((spec.image_size // spec.patch_size) ** 2 + 1, spec.vision_width),
                          (spec.context_length, spec.text_width)):
        m = spec.batch_size * tokens
        shapes += [(m, width, 3 * width), (m, width, 4 * width), (m, 4 * width, width)]
    return shapes


def matmul_rate(device: torch.device, dtype: torch.dtype, shapes: list[tuple[int, int, int]],
                repeats: int = 3) -> float:
    """Best FLOP/s of (M, K) @ (K, N) products over `shapes` and, on the CPU, over both of PyTorch's GEMM
    kernels there (MKL behind `F.linear`, oneDNN behind `mkldnn._linear_pointwise`): the MFU denominator.

    Timed with `clock` (CPU time on the CPU), as the steps are, so that the ratio does not depend on the load
    from other processes at the moment of the probe; the best of several kernels and shapes, so that no step
    can run its GEMMs faster than the rate it is measured against."""
    from contrastive.encoders.linear import _KERNEL

    kernels = [lambda x, w: torch.nn.functional.linear(x, w)]
    if device.type == "cpu" and _KERNEL is not None:
        kernels.append(lambda x, w: _KERNEL(x, w, None, "none", [], ""))
    best = 0.0
    for m, k, n in shapes:
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        for kernel in kernels:
            kernel(x, w)
            for _ in range(repeats):
                synchronize(device)
                t0 = clock(device)
                kernel(x, w)
                synchronize(device)
                best = max(best, 2 * m * n * k / max(clock(device) - t0, 1e-9))
    return best


def phase_split(contender: Contender, batches: Iterator[dict[str, Any]], device: torch.device, precision: str,
                steps: int) -> dict[str, float]:
    """Mean seconds per step spent in data / forward / backward / optimizer (synchronised at each boundary)."""
    totals = {"data": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    scaler = PhaseScaler(device, enabled=precision == "fp16")
    for _ in range(steps):
        scaler.marks.clear()
        scaler.mark("start")
        batch = next(batches)
        scaler.mark("data")
        contender.step(batch, scaler)
        scaler.mark("optimizer")
        for (_, t0), (name, t1) in zip(scaler.marks, scaler.marks[1:]):
            totals[name] += t1 - t0
    return {k: v / steps for k, v in totals.items()}


def peak_memory(contender: Contender, batch: dict[str, Any], device: torch.device, precision: str) -> float:
    """Peak bytes held during one step: CUDA's allocator peak; on CPU the tensors alive before the step (weights and
    optimizer state) plus the highest rise of allocations during it (from the profiler's memory records)."""
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        contender.step(batch, scaler)
        synchronize(device)
        return float(torch.cuda.max_memory_allocated(device))
    from torch.profiler import ProfilerActivity, profile

    live = [p for p in contender.model.parameters()]
    live += [t for s in contender.optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
    before = sum(t.numel() * t.element_size() for t in live)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        contender.step(batch, scaler)
    # each op's own allocations net of its frees, plus frees outside ops ("[memory]" events), in time order
    rise, peak = 0, 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        rise += e.self_cpu_memory_usage
        peak = max(peak, rise)
    return float(before + peak)


@dataclass
class Result:
    name: str
    samples_per_s: float
    step_s: float  # median seconds per step over rounds
    cpu_step_s: float = 0.0  # on the CPU: median CPU seconds of this process per step (what the MFU divides by)
    cpu_speedup_vs_reference: float = 0.0  # on the CPU: median over rounds of (reference CPU time / own CPU time)
    round_s: list[float] = field(default_factory=list)
    phases_s: dict[str, float] = field(default_factory=dict)
    peak_memory_gib: float = 0.0
    useful_gflop_per_sample: float = 0.0  # the plain model's step: the work the task needs, the same for all
    executed_gflop_per_sample: float = 0.0  # this contender's own step (less where it skips work)
    mfu_useful: float = 0.0  # useful FLOPs / step time / matmul rate
    mfu_executed: float = 0.0  # executed FLOPs / step time / matmul rate
    speedup_vs_reference: float = 1.0  # median over rounds of (reference step time / this step time)
    speedups: dict[str, float] = field(default_factory=dict)  # the same against each compared contender, by name
    compile_s: float = 0.0  # first-step time (includes compilation for compiled contenders)


def run_alternating(contenders: list[Contender], batches: Iterator[dict[str, Any]], device: torch.device,
                    precision: str, rounds: int, steps_per_round: int,
                    cpu_times: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Seconds per step of each contender in each round; contenders take turns (one block of steps each). The
    caller warms every contender up first (compilation, allocator caches, optimizer state): every round counts.
    `cpu_times`, if given, receives the same in CPU seconds of this process (all threads)."""
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        order = contenders if r % 2 == 0 else contenders[::-1]  # no contender always runs right after another
        for c in order:
            batch_list = [next(batches) for _ in range(steps_per_round)]
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for batch in batch_list:
                loss = c.step(batch, scaler)
                if c.sync_each_step:
                    loss.item()
            synchronize(device)
            times[c.name].append((time.perf_counter() - t0) / steps_per_round)
            if cpu_times is not None:
                cpu_times.setdefault(c.name, []).append((time.process_time() - c0) / steps_per_round)
    return times


def run_end_to_end(contenders: list[Contender], feeds: dict[str, Iterator[dict[str, Any]]], device: torch.device,
                   precision: str, rounds: int, steps_per_round: int) -> dict[str, list[float]]:
    """Like `run_alternating`, but each contender fetches each batch from its own pipeline (`feeds[name]`) inside
    the timed block, so waiting for data counts (workers keep preparing batches while a step runs)."""
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(rounds):
        for c in contenders if r % 2 == 0 else contenders[::-1]:
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                c.step(next(feeds[c.name]), scaler)
            synchronize(device)
            times[c.name].append((time.perf_counter() - t0) / steps_per_round)
    return times


def summarise(contenders: list[Contender], times: dict[str, list[float]], batch_size: int, reference: str,
              also: tuple[str, ...] = (), cpu_times: dict[str, list[float]] | None = None) -> list[Result]:
    """Per contender: median step time and samples/s, and the median over rounds of (reference time / own time)
    for `reference` and for each contender named in `also` (e.g. `plain` beside OpenCLIP); with `cpu_times`, the
    median CPU time per step and its ratio to the reference's."""
    results = []
    for c in contenders:
        ts = times[c.name]
        speedups = {ref: statistics.median([a / t for a, t in zip(times[ref], ts)]) for ref in (reference, *also)}
        step_s = statistics.median(ts)
        r = Result(c.name, batch_size / step_s, step_s, round_s=[round(t, 4) for t in ts],
                   speedup_vs_reference=speedups[reference], speedups={k: round(v, 4) for k, v in speedups.items()})
        if cpu_times:
            r.cpu_step_s = statistics.median(cpu_times[c.name])
            r.cpu_speedup_vs_reference = statistics.median(
                [a / t for a, t in zip(cpu_times[reference], cpu_times[c.name])])
        results.append(r)
    return results


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


def markdown_table(results: list[Result], reference: str) -> str:
    """One row per contender; on the CPU (CPU times recorded) also the CPU time per step and its ratio."""
    others = [k for k in (results[0].speedups if results else {}) if k != reference]
    cpu = bool(results) and results[0].cpu_step_s > 0
    rows = ["| contender | samples/s | × " + " | × ".join([reference, *others]) + " | step ms "
            + (f"| CPU ms | × {reference} in CPU time " if cpu else "")
            + "| data / fwd / bwd / opt ms | peak GiB | GFLOP/sample useful / executed | MFU useful / executed |",
            "|---|---:|" + "---:|" * (1 + len(others)) + "---:|" + ("---:|---:|" if cpu else "") + "---|---:|---:|---:|"]
    for r in results:
        ph = " / ".join(f"{1000 * r.phases_s.get(k, 0.0):.0f}" for k in ("data", "forward", "backward", "optimizer"))
        ratios = " | ".join(f"{x:.2f}" for x in [r.speedup_vs_reference, *(r.speedups[k] for k in others)])
        cpu_cells = f"| {1000 * r.cpu_step_s:.0f} | {r.cpu_speedup_vs_reference:.2f} " if cpu else ""
        rows.append(f"| {r.name} | {r.samples_per_s:,.1f} | {ratios} | {1000 * r.step_s:.0f} {cpu_cells}| {ph} "
                    f"| {r.peak_memory_gib:.2f} | {r.useful_gflop_per_sample:.2f} / {r.executed_gflop_per_sample:.2f} "
                    f"| {100 * r.mfu_useful:.1f}% / {100 * r.mfu_executed:.1f}% |")
    return "\n".join(rows)


def as_dict(result: Result) -> dict[str, Any]:
    return dataclasses.asdict(result)
