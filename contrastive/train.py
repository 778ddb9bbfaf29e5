"""The training loop: config in, run directory out.

Read top to bottom: set up (devices, run directory, model, data, optimizer), optionally resume, then loop over
steps: lr from a pure schedule, one `train_step`, periodic logging / evaluation / checkpointing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import time
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_state,
    load_weights,
    prune_checkpoints,
    remove_partial_checkpoints,
    save_checkpoint,
)
from .config import Config, config_to_dict, save_config
from .errors import ConfigError, RunError, error_line
from .data import TrainData, build_transform, read_records
from .data.prefetch import device_batches
from .distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup,
    clip_sharded_grad_norm_,
    full_state_dicts,
    global_batch_loss,
    init_distributed,
    is_sharded,
    load_full_state_dicts,
    shard_model,
    sync_replicated_grads,
)
from .evaluate import autocast_context, eval_postfix, evaluate_records, record_labels
from .encoders.hf import HFTower
from .factory import create_model
from .gradcache import gradcache_backward
from .guards import NonFiniteGuard, check_inputs, parse_device, save_or_report, step_if_finite
from .finetune import apply_finetune, finetune_param_groups
from .hf_import import checkpoint_files
from .pretrained import resolve_model_config
from .model import ContrastiveModel
from .optim import build_optimizer, lr_at, set_lr
from .signals import GracefulStop, Interrupted
from .speed import set_fused_qkv, set_pooled_last_block, step_loss_fn


def resolve_device(spec: str, info: DistInfo) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = parse_device(spec, "train.device")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device


def resolve_run_dir(cfg: Config) -> Path:
    """`output_dir/run_name`; without a run name: `<config>-<time>` (resume: the newest `<config>-*` run)."""
    root = Path(cfg.train.output_dir)
    if cfg.train.run_name:
        return root / cfg.train.run_name
    if cfg.train.resume:  # only this config's own timestamped runs: `clip` must not resume `clip-large-...`
        stamped = re.compile(re.escape(cfg.name) + r"-\d{8}-\d{6}")
        previous = sorted(p for p in root.glob(f"{cfg.name}-*") if p.is_dir() and stamped.fullmatch(p.name))
        if previous:
            return previous[-1]
    return root / f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def prepare_run_dir(cfg: Config, run_dir: Path) -> None:
    """Create the run directory. `train.overwrite=true` moves an earlier run aside (`.<name>.replaced`), never
    deletes it here: it is removed once the new run has written its first checkpoint, and put back if the new run
    fails before that (see `settle_replaced`)."""
    if run_dir.exists() and any(run_dir.iterdir()) and not (cfg.train.resume or cfg.train.overwrite):
        raise ConfigError(
            f"run directory {run_dir} already exists; pass train.resume=true to continue it, "
            "train.overwrite=true to replace it, or another train.run_name"
        )
    if run_dir.exists() and cfg.train.overwrite and not cfg.train.resume:
        recover_replaced(run_dir)  # a leftover of a killed overwrite would block the move
        aside = replaced_path(run_dir)
        run_dir.replace(aside)
        _REPLACED[run_dir] = aside
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")


# run directory -> the earlier run that train.overwrite=true moved aside, until the new run's first checkpoint
_REPLACED: dict[Path, Path] = {}


def replaced_path(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.replaced")


def settle_replaced(keep_new: bool, run_dir: Path | None = None) -> None:
    """Delete the earlier run(s) moved aside by `prepare_run_dir` (`keep_new`), or put them back in place of the
    new run that failed before its first checkpoint. `run_dir`: only that run's."""
    import shutil

    for new in [run_dir] if run_dir is not None else list(_REPLACED):
        aside = _REPLACED.pop(new, None)
        if aside is None:
            continue
        if keep_new:
            shutil.rmtree(aside, ignore_errors=True)
        else:
            shutil.rmtree(new, ignore_errors=True)
            aside.replace(new)
            print(f"kept the earlier run {new}: the run meant to replace it stopped before its first checkpoint",
                  flush=True)


def recover_replaced(run_dir: Path) -> None:
    """After a process killed between moving an earlier run aside and the new run's first checkpoint: keep the new
    run if it has a checkpoint, else put the earlier one back."""
    import shutil

    aside = replaced_path(run_dir)
    if not aside.is_dir() or run_dir in _REPLACED:
        return
    from .checkpoint import list_checkpoints

    if (run_dir / "checkpoints").is_dir() and list_checkpoints(run_dir / "checkpoints"):  # it wrote one: it started
        shutil.rmtree(aside, ignore_errors=True)
        return
    if run_dir.exists():
        shutil.rmtree(run_dir)
    aside.replace(run_dir)
    print(f"restored the earlier run {run_dir}: the run meant to replace it stopped before its first checkpoint",
          flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2]}
    if torch.cuda.is_available():  # this process's device only: a resume may see a different number of GPUs
        state["cuda_device"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_pos"]))
    if "cuda_device" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda_device"])


# ----------------------------------------------------------------------------------------------------------------------
# one step


def compute_loss(model: nn.Module, batch: dict[str, Any], cfg: Config, info: DistInfo = DistInfo()) -> torch.Tensor:
    """Forward both towers on this rank's batch and return its contrastive loss over the global batch (0-dim)."""
    out = model(batch["pixels"], batch["tokens"])
    return global_batch_loss(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias,
                             batch["image_ids"], batch["text_ids"], cfg.loss, info)


def unwrap(model: nn.Module) -> ContrastiveModel:
    """The ContrastiveModel inside DDP and/or torch.compile wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model._orig_mod
    return model


def train_step(model: nn.Module, batch: dict[str, Any], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               cfg: Config, device: torch.device, info: DistInfo = DistInfo(), loss_fn=compute_loss) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns (loss, grad norm) as device tensors (no host sync). `loss_fn` may be
    `compute_loss` compiled (see `speed.step_loss_fn`)."""
    if cfg.train.compile and cfg.train.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()  # a new step: CUDA-graph outputs of the last one may be reused
    micro = cfg.train.micro_batch_size
    if 0 < micro < batch["pixels"].shape[0]:
        def loss_fn(image, text, scale, bias):
            return global_batch_loss(image, text, scale, bias, batch["image_ids"], batch["text_ids"], cfg.loss, info)

        loss = gradcache_backward(model, batch["pixels"], batch["tokens"], loss_fn, micro,
                                  autocast=lambda: autocast_context(device, cfg.train.precision), scale_loss=scaler.scale)
    else:
        with autocast_context(device, cfg.train.precision):
            loss = loss_fn(model, batch, cfg, info)
        scaler.scale(loss).backward()
    sharded = is_sharded(unwrap(model))
    if sharded:
        sync_replicated_grads(model, info)
    scaler.unscale_(optimizer)
    params = [p for p in model.parameters() if p.grad is not None]
    if sharded:
        grad_norm = clip_sharded_grad_norm_(model, cfg.optim.grad_clip)
    elif cfg.optim.grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    else:
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    step_if_finite(optimizer, scaler, loss, grad_norm)  # a NaN/inf loss or gradient leaves weights and state as they were
    optimizer.zero_grad(set_to_none=True)
    unwrap(model).clamp_logit_scale_()
    return loss.detach(), grad_norm.detach()


# ----------------------------------------------------------------------------------------------------------------------
# logging


class MetricsLogger:
    """metrics.jsonl + TensorBoard on the main process; a no-op elsewhere."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.file = (run_dir / "metrics.jsonl").open("a") if enabled else None
        if self.file is not None and self.file.tell() > 0:  # a kill mid-write left a partial line: end it
            with (run_dir / "metrics.jsonl").open("rb") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    self.file.write("\n")
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except ImportError:  # tensorboard is a dependency, but a broken install must not stop training
                self.tb = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


# ----------------------------------------------------------------------------------------------------------------------
# the run


@dataclasses.dataclass
class Progress:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batch_in_epoch: int = 0  # global batches of this epoch already consumed
    best_metric: float = -math.inf
    best_checkpoint: str = ""
    nonfinite_steps: int = 0  # steps skipped for a NaN/inf loss or gradient
    nonfinite_streak: int = 0  # of which in a row, up to `step`


def _checkpoint(run_dir: Path, model: nn.Module, optimizer, scaler, progress: Progress, cfg: Config, tokenizer,
                full: tuple[dict, dict] | None = None, train_data: TrainData | None = None) -> Path:
    """Write a checkpoint (main process); `full`: whole (model, optimizer) state dicts of a sharded model."""
    weights: Any = unwrap(model)
    if full is not None:
        weights = SimpleNamespace(state_dict=lambda: full[0])
    state = {"optimizer": optimizer.state_dict() if full is None else full[1], "scaler": scaler.state_dict(),
             "rng": rng_state()}
    if train_data is not None:
        state["data"] = train_data.state_dict()
    meta = {
        "step": progress.step,
        "epoch": progress.epoch,
        "batch_in_epoch": progress.batch_in_epoch,
        "samples_seen": progress.step * cfg.train.batch_size,
        "best_metric": progress.best_metric if math.isfinite(progress.best_metric) else None,
        "best_checkpoint": progress.best_checkpoint,
        "nonfinite_steps": progress.nonfinite_steps,
        "nonfinite_streak": progress.nonfinite_streak,
        "config": config_to_dict(cfg),
        "format_version": 1,
    }
    extra = {}
    if hasattr(tokenizer, "tokenizer") and hasattr(tokenizer.tokenizer, "to_str"):
        extra["tokenizer.json"] = tokenizer.tokenizer.to_str()
    extra.update(checkpoint_files(unwrap(model), tokenizer))  # HF tower configs / tokenizer files, if any
    path = save_checkpoint(run_dir / "checkpoints" / f"step_{progress.step:08d}", weights, state, meta, extra)
    prune_checkpoints(run_dir / "checkpoints", cfg.train.keep_checkpoints, protect={progress.best_checkpoint})
    settle_replaced(keep_new=True, run_dir=run_dir)  # the new run has a checkpoint: the one it replaces may go
    return path


def _restore(ckpt: Path, model: ContrastiveModel, optimizer, scaler, progress: Progress,
             train_data: TrainData | None = None) -> None:
    from .checkpoint import read_meta

    meta = read_meta(ckpt)
    state = load_state(ckpt)
    try:
        if is_sharded(model):
            load_full_state_dicts(model, optimizer, load_weights(ckpt), state["optimizer"])
        else:
            model.load_state_dict(load_weights(ckpt))
            optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:  # another model, optimizer layout or precision
        raise CheckpointError(f"cannot resume from {ckpt}: it does not fit this run's model, optimizer or "
                              f"precision ({error_line(e) or type(e).__name__}); resume with the config it was "
                              "saved with") from None
    set_rng_state(state["rng"])
    if train_data is not None and "data" in state:
        train_data.load_state_dict(state["data"])
    progress.step, progress.epoch, progress.batch_in_epoch = meta["step"], meta["epoch"], meta["batch_in_epoch"]
    progress.best_metric = meta.get("best_metric") if meta.get("best_metric") is not None else -math.inf
    progress.best_checkpoint = meta.get("best_checkpoint", "")
    progress.nonfinite_steps, progress.nonfinite_streak = meta.get("nonfinite_steps", 0), meta.get("nonfinite_streak", 0)


def init_weights_from(model: ContrastiveModel, source: str) -> None:
    """Initialise from another run/checkpoint (or an HF directory where a loader is registered)."""
    from .factory import load

    other, _, _ = load(source)
    missing, unexpected = model.load_state_dict(other.state_dict(), strict=False)
    if missing or unexpected:
        raise ConfigError(f"model.init_from={source}: weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})")


def _prepare_text(cfg: Config, info: DistInfo):
    """(model config with its context resolved, tokenizer, caption report). A resumed run keeps the vocabulary and
    context its checkpoint was trained with; under torchrun every rank takes the main process's vocabulary."""
    from tokenizers import Tokenizer

    from .checkpoint import read_meta
    from .tokenizer import TextTokenizer, build_tokenizer
    from .vocab import prepare_text

    model_cfg, saved = cfg.model, None
    ckpt = latest_checkpoint(resolve_run_dir(cfg) / "checkpoints") if cfg.train.resume else None
    if ckpt is not None and (ckpt / "tokenizer.json").is_file():
        saved = ckpt / "tokenizer.json"
        if model_cfg.context_length == 0:
            try:
                model_cfg = dataclasses.replace(model_cfg, context_length=int(read_meta(ckpt)["config"]["model"]["context_length"]))
            except (CheckpointError, KeyError, TypeError, ValueError):
                pass
    if not info.enabled:
        return prepare_text(model_cfg, cfg.data, saved)
    # the main process reads the captions once; the others take its context and, for a vocabulary of the toolkit's
    # own, that vocabulary itself
    ours = prepare_text(model_cfg, cfg.data, saved) if info.is_main else None
    vocab = ours[1].tokenizer.to_str() if ours is not None and isinstance(ours[1], TextTokenizer) else None
    model_cfg, report, vocab = broadcast_object(None if ours is None else (ours[0], ours[2], vocab), info)
    if ours is not None:
        return ours
    if vocab is not None:
        return model_cfg, TextTokenizer(Tokenizer.from_str(vocab), model_cfg.context_length, model_cfg.tokenizer), report
    return model_cfg, build_tokenizer(model_cfg.tokenizer, model_cfg.context_length, model_cfg.trust_remote_code), report


def train(cfg: Config) -> Path:
    """Run training as configured; returns the run directory."""
    info = init_distributed("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    if info.is_main and cfg.train.run_name:
        recover_replaced(resolve_run_dir(cfg))
    try:
        with GracefulStop() as stop:  # SIGINT/SIGTERM: finish the step, save, raise Interrupted
            run_dir = _train(cfg, info, stop)
    except BaseException:
        settle_replaced(keep_new=False)
        raise
    finally:
        cleanup(info)
    settle_replaced(keep_new=True)
    return run_dir


def _train(cfg: Config, info: DistInfo, stop: GracefulStop) -> Path:
    t = cfg.train
    device = resolve_device(t.device, info)
    if t.batch_size % info.world_size:
        raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by the {info.world_size} processes")
    if t.deterministic and device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    check_inputs(cfg)
    # pretrained sources decide towers / preprocessing; the run saves the resolved config
    cfg = dataclasses.replace(cfg, model=resolve_model_config(cfg.model))

    model_cfg, tokenizer, text_report = _prepare_text(cfg, info)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    if info.is_main:
        print(text_report.line(), flush=True)

    seed_everything(t.seed)
    try:
        model, tokenizer = create_model(cfg.model, tokenizer)
    except ValueError as e:  # a tower, pooling or tokenizer setting that does not fit: one line, not a traceback
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"model: {e}") from None
    if cfg.model.init_from:
        init_weights_from(model, cfg.model.init_from)
    apply_finetune(model, cfg.finetune)
    if t.grad_checkpointing:
        model.set_grad_checkpointing(True)
    set_fused_qkv(model, t.fused_qkv)
    set_pooled_last_block(model, t.pooled_last_block)
    model.to(device)
    if info.enabled:  # every rank waits for a gradient of every trainable parameter: freeze those never used
        for tower in (m for m in model.modules() if isinstance(m, HFTower)):
            if (unused := tower.freeze_unused()) and info.is_main:
                print(f"{tower.source}: froze {len(unused)} parameters its pooling does not use ({unused[0]}, ...)")
    if t.fsdp and info.enabled:
        shard_model(model)  # before the optimizer: sharding replaces the parameters

    train_data = TrainData(cfg.data, cfg.model, tokenizer, t.batch_size, t.seed, info.rank, info.world_size)
    steps_per_epoch = train_data.steps_per_epoch
    if steps_per_epoch == 0:
        raise ConfigError(f"train.batch_size={t.batch_size} is larger than the {train_data.num_samples} training samples")
    total_steps = t.max_steps if t.max_steps > 0 else t.epochs * steps_per_epoch
    val_records = read_records(cfg.data.val, cfg.data.image_key, cfg.data.caption_key) if cfg.data.val else None
    if val_records is not None and "zeroshot" in cfg.eval.tasks:
        record_labels(val_records, cfg.eval.zeroshot_class_key)  # a missing class column fails now, not at the first eval
    eval_transform = build_transform(cfg.model, cfg.data, train=False)
    # the run directory is made only once model and data are known to load: a typo leaves nothing behind
    run_dir = broadcast_object(resolve_run_dir(cfg) if info.is_main else None, info)
    if info.is_main:
        prepare_run_dir(cfg, run_dir)
        remove_partial_checkpoints(run_dir / "checkpoints")
    barrier(info)

    optimizer = build_optimizer(model, cfg.optim, finetune_param_groups(model, cfg.optim, cfg.finetune))
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "fp16")
    progress = Progress()
    if t.resume:
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is not None:
            _restore(ckpt, model, optimizer, scaler, progress, train_data)
            if info.is_main:
                print(f"resumed from {ckpt} (step {progress.step})")
    train_model: nn.Module = model
    if info.enabled and not t.fsdp:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # one graph for towers + loss where the step is one forward; otherwise compile the towers only (keeping the
    # loss's collectives, and gradient caching's two passes around the loss, out of the graph)
    whole_step = t.compile and not info.enabled and t.micro_batch_size == 0
    loss_fn = step_loss_fn(compute_loss, whole_step, mode=t.compile_mode)
    if t.compile and not whole_step:
        train_model = torch.compile(train_model, mode=t.compile_mode)

    logger = MetricsLogger(run_dir, info.is_main)
    bar = None
    if info.is_main and t.progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=progress.step, desc=run_dir.name, dynamic_ncols=True)

    sharded = is_sharded(model)  # a sharded model evaluates and gathers its state on every rank

    def run_eval() -> dict[str, float]:
        """Validation metrics; a failing evaluation (a bad val image, out of memory) is reported in one line and
        the run goes on, so it never costs the training or the checkpoint that follows."""
        try:
            metrics = evaluate_records(model, val_records, eval_transform, tokenizer, tasks=cfg.eval.tasks,
                                       class_key=cfg.eval.zeroshot_class_key, batch_size=cfg.eval.batch_size,
                                       device=device, precision=t.precision)
        except Exception as e:  # noqa: BLE001 - reported, and training is worth more than one evaluation
            if sharded:  # ranks evaluate together; one failing alone would leave the others waiting
                raise
            print(f"evaluation at step {progress.step} failed, training goes on: {type(e).__name__}: {error_line(e)}",
                  flush=True)
            return {}
        return {f"val/{k}": v for k, v in metrics.items()}

    loss_sum = torch.zeros((), device=device)
    window_steps, window_start = 0, time.perf_counter()
    last_eval: dict[str, float] = {}
    last_eval_step = -1
    guard = NonFiniteGuard(t.max_nan_steps, device, progress.nonfinite_steps, progress.nonfinite_streak)
    last_good = latest_checkpoint(run_dir / "checkpoints") if progress.step else None
    stopping = False

    def sync_guard() -> None:  # a host sync: only where the loop syncs anyway
        if (failure := guard.failure(last_good)) is not None:
            raise RunError(failure)
        progress.nonfinite_steps, progress.nonfinite_streak = guard.counts()

    model.train()
    while progress.step < total_steps and not stopping:
        if progress.batch_in_epoch >= steps_per_epoch:  # resumed on a smaller training set: that epoch is over
            progress.epoch, progress.batch_in_epoch = progress.epoch + 1, 0
        epoch_batches = train_data.batches(progress.epoch, progress.batch_in_epoch)
        for batch in device_batches(epoch_batches, device, cfg.data.copy_stream):
            lr = lr_at(progress.step, total_steps, cfg.optim)
            set_lr(optimizer, lr)
            loss, grad_norm = train_step(train_model, batch, optimizer, scaler, cfg, device, info, loss_fn)
            guard.record(torch.isfinite(loss) & torch.isfinite(grad_norm), progress.step + 1)
            loss_sum += loss
            progress.step += 1
            progress.batch_in_epoch += 1
            window_steps += 1
            if progress.batch_in_epoch >= steps_per_epoch:
                progress.epoch += 1
                progress.batch_in_epoch = 0

            if not info.enabled or progress.step % t.log_every_n_steps == 0:  # ranks agree at sync points
                stopping = stopping or stop.any_rank(info, device)
            if progress.step % t.log_every_n_steps == 0 or progress.step == total_steps:
                sync_guard()
                mean_loss = all_reduce_mean(loss_sum / window_steps, info).item()
                elapsed = time.perf_counter() - window_start
                values = {
                    "loss": mean_loss,
                    "logit_scale": unwrap(model).logit_scale.exp().item(),
                    "lr": lr,
                    "grad_norm": grad_norm.item(),
                    "samples_per_s": window_steps * t.batch_size / max(elapsed, 1e-9),
                    "epoch": progress.epoch,
                    "nonfinite_steps": progress.nonfinite_steps,
                    "bad_samples": train_data.tracker.total,
                }
                logger.log(progress.step, values)
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.3f}", T=f"{values['logit_scale']:.1f}", lr=f"{lr:.1e}",
                                    sps=f"{values['samples_per_s']:.0f}", **train_data.postfix(), **eval_postfix(last_eval))
                loss_sum.zero_()
                window_steps, window_start = 0, time.perf_counter()
            if bar is not None:
                bar.update(1)

            done = progress.step >= total_steps
            if val_records is not None and (info.is_main or sharded) and (
                (cfg.eval.every_n_steps > 0 and progress.step % cfg.eval.every_n_steps == 0) or done
            ):
                last_eval, last_eval_step = run_eval(), progress.step
                logger.log(progress.step, last_eval)
            if (t.save_every_n_steps > 0 and progress.step % t.save_every_n_steps == 0) or done or stopping:
                sync_guard()
                full = full_state_dicts(model, optimizer) if sharded else None
                if info.is_main:
                    # only an evaluation of these very weights can make them the best
                    metric = last_eval.get(f"val/{cfg.eval.best_metric_name()}") if last_eval_step == progress.step else None
                    if metric is not None and metric > progress.best_metric:
                        progress.best_metric = metric
                        progress.best_checkpoint = f"step_{progress.step:08d}"
                    path = save_or_report(lambda: _checkpoint(run_dir, model, optimizer, scaler, progress, cfg, tokenizer, full, train_data),
                                          progress.step, run_dir / "checkpoints", t.on_checkpoint_error, done or stopping)
                    if path is not None and progress.nonfinite_streak == 0:
                        last_good = path
                barrier(info)
            if done or stopping:
                break
    if bar is not None:
        bar.close()
    logger.close()
    if stopping:
        raise Interrupted(stop.signum, f"stopped by {stop.name} after step {progress.step}; saved "
                                       f"{latest_checkpoint(run_dir / 'checkpoints')}; rerun with train.resume=true")
    if info.is_main:
        summary = {"steps": progress.step, **{k: round(v, 4) for k, v in last_eval.items()}}
        print(f"done: {run_dir} " + " ".join(f"{k}={v}" for k, v in summary.items()))
        summary["text"] = dataclasses.asdict(text_report)
        data_summary = train_data.summary()
        print(f"data: bad samples skipped: {train_data.tracker.describe()} ({data_summary['bad_skips']} skips in "
              f"{data_summary['samples_loaded']} loads); captions truncated: {data_summary['truncated_captions']} of "
              f"{data_summary['captions_seen']}")
        (run_dir / "summary.json").write_text(json.dumps({**summary, "data": data_summary}, indent=1))
    return run_dir
