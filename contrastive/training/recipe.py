"""The training recipe: config in, run directory out.

    recipe = ContrastiveRecipe(cfg, info, stop)
    recipe.setup()      # setup_device, setup_text, setup_model, setup_data, setup_run_dir, setup_optimizer, restore
    recipe.train()      # the loop: lr, one step, then maybe_log / maybe_eval / maybe_save
    recipe.cleanup()

`train(cfg)` does exactly that inside the process group and the signal handler. Two seams for what runs beside the
loop: `model_hooks` (name -> `ModelStateHook`, e.g. a moving average of the weights: updated after every optimizer
step, saved in and restored from each checkpoint) and `eval_sets` (every `EvalSet` is evaluated at each evaluation
and logged under its name).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..interop.checkpoint import latest_checkpoint, prune_checkpoints, save_checkpoint
from ..config import Config
from ..data import TrainData, build_transform, read_records
from ..data.diversity import diversity_warnings
from ..data.mixture import open_train_data
from ..data.prefetch import device_batches
from ..distributed import (
    DistInfo,
    all_gather_object,
    all_reduce_mean,
    barrier,
    broadcast_object,
    init_distributed,
    is_sharded,
)
from ..distributed import cleanup as leave_process_group
from ..errors import ConfigError, RunError, UserError, error_line

from ..evaluation.evaluate import evaluate_records, record_labels
from ..interop.hf_import import checkpoint_files
from ..interop.outputs import release
from ..losses.batch import BatchLoss
from ..text.tokenizer import TextTokenizer
from ..interop.pretrained import resolve_model_config
from .distill import Teacher
from .finetune import ProbePhase, finetune_param_groups, phase_lr
from .forgetting import (EMA_SUFFIX, REFERENCE, BaselineHook, best_score, build_ema, reference_evaluation,
                         reference_tracker, trainable_line, with_ema_weights)
from .guards import NonFiniteGuard, check_inputs, save_or_report
from .logging import MetricsLogger, eval_postfix, metrics_of, named_metrics
from .tracking import check_installed, open_trackers
from .optim import build_optimizer, set_lr
from .run_dir import ReplacedRun, claim_run_dir
from .setup import build_model, prepare_text, resolve_device, wrap_for_training
from .signals import GracefulStop, Interrupted
from .state import (
    ModelStateHook,
    Progress,
    checkpoint_meta,
    gather_model_state,
    restore,
    seed_everything,
    training_state,
)
from .step import train_step, unwrap


@dataclasses.dataclass
class EvalSet:
    """A held-out set evaluated at every evaluation; its metrics are logged as `<name>/<metric>`."""

    name: str
    evaluate: Callable[[nn.Module], dict[str, float]]  # model -> metrics


@dataclasses.dataclass
class Window:
    """Steps since the last log line: their summed loss (on the device), count and start time."""

    loss_sum: torch.Tensor
    steps: int = 0
    start: float = dataclasses.field(default_factory=time.perf_counter)


class ContrastiveRecipe:
    """One training run (see the module docstring). Attributes are set by the `setup_*` steps in order."""

    def __init__(self, cfg: Config, info: DistInfo, stop: GracefulStop) -> None:
        self.cfg, self.info, self.stop = cfg, info, stop
        self.model_hooks: dict[str, ModelStateHook] = {}
        self.eval_sets: list[EvalSet] = []
        self.progress = Progress()
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = -1
        self.stopping = False
        self.logger: MetricsLogger | None = None
        self.bar = None
        self.train_data: TrainData | None = None
        self.ema = None  # the moving average of the weights (train.ema_decay)
        self.reference = None  # the reference sets that measure forgetting (eval.reference)
        self.replaced: ReplacedRun | None = None  # an earlier run train.overwrite moved aside, until our 1st checkpoint
        self.held_run_dir = False  # this process holds the run directory (the main process, once claimed)

    # ------------------------------------------------------------------------------------------------------------------
    # set-up

    def setup_device(self) -> None:
        """The device, and the checks that need neither model nor data (batch split, inputs, encoder arguments)."""
        cfg, info = self.cfg, self.info
        self.device = resolve_device(cfg.train.device, info)
        if cfg.train.batch_size % info.world_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is not divisible by the {info.world_size} "
                              "processes")
        if cfg.train.deterministic and self.device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        check_inputs(cfg)
        check_installed(cfg.train.report_to)

    def setup_text(self) -> None:
        """The resolved model config (pretrained sources decide towers and preprocessing; the context is fitted to
        the captions) and the tokenizer. The one place `self.cfg` changes: the run saves the resolved config."""
        cfg = dataclasses.replace(self.cfg, model=resolve_model_config(self.cfg.model))
        model_cfg, self.tokenizer, self.text_report = prepare_text(cfg, self.info)
        self.cfg = dataclasses.replace(cfg, model=model_cfg)
        if self.info.is_main:
            print(self.text_report.line(), flush=True)

    def setup_model(self) -> None:
        """The model as it will train (seeded), its moving average and the loss."""
        cfg, info = self.cfg, self.info
        seed_everything(cfg.train.seed)
        self.model, self.tokenizer = build_model(cfg, self.tokenizer, self.device, info)
        if info.is_main:
            print(trainable_line(self.model), flush=True)
        self.ema = build_ema(self.model, cfg)
        if self.ema is not None:
            self.model_hooks["ema"] = self.ema
        self.teacher = None
        if cfg.distill.teacher:
            self.teacher = Teacher(cfg.distill, cfg.model, self.device, cfg.train.precision)
            if info.is_main:
                print(self.teacher.describe(cfg.distill.teacher), flush=True)
        self.loss_fn = BatchLoss(cfg.loss, info, cfg.distill if self.teacher is not None else None)

    def setup_data(self) -> None:
        """Training batches and the eval sets."""
        cfg, t, info = self.cfg, self.cfg.train, self.info
        self.train_data = open_train_data(cfg.data, cfg.model, self.tokenizer, t.batch_size, t.seed, info.rank,
                                          info.world_size)
        self.steps_per_epoch = self.train_data.steps_per_epoch
        source = getattr(self.train_data.dataset, "source", None)  # a table or HF dataset (not streamed shards)
        if info.is_main and source is not None:
            for line in diversity_warnings(source, t.batch_size):
                print(line, file=sys.stderr, flush=True)
        if self.steps_per_epoch == 0:
            raise ConfigError(f"train.batch_size={t.batch_size} is larger than the {self.train_data.num_samples} "
                              "training samples")
        self.total_steps = t.max_steps if t.max_steps > 0 else t.epochs * self.steps_per_epoch
        if cfg.finetune.probe_steps >= self.total_steps:
            raise ConfigError(f"finetune.probe_steps={cfg.finetune.probe_steps} leaves none of the run's "
                              f"{self.total_steps} steps to fine-tune")
        if cfg.data.val_source() is not None:
            self.eval_sets.append(self.validation_set())
        self.forgetting_sets()

    def setup_run_dir(self) -> None:
        """The run directory, made only once model and data are known to load: a typo leaves nothing behind. The
        main process claims it (`run_dir.claim_run_dir`); every rank learns it, or why it was refused."""
        run_dir, error = None, None
        if self.info.is_main:
            try:
                run_dir, self.replaced = claim_run_dir(self.cfg)
                self.held_run_dir = True
            except UserError as e:
                error = e
        self.run_dir, reason = broadcast_object((run_dir, error_line(error) if error else ""), self.info)
        if error is not None:
            raise error
        if reason:
            raise RunError(reason)
        barrier(self.info)

    def validation_set(self) -> EvalSet:
        """`data.val` with `eval.tasks`, as the `val` eval set (a missing class column fails now)."""
        cfg = self.cfg
        val = cfg.data.val_source()
        records = read_records(val.path, val.image_key, val.caption_key, val.format)
        if "zeroshot" in cfg.eval.tasks:
            record_labels(records, cfg.eval.zeroshot_class_key)
        transform = build_transform(cfg.model, cfg.data, train=False)

        def evaluate(model: nn.Module) -> dict[str, float]:
            return evaluate_records(model, records, transform, self.tokenizer, tasks=cfg.eval.tasks,
                                    class_key=cfg.eval.zeroshot_class_key, batch_size=cfg.eval.batch_size,
                                    device=self.device, precision=cfg.train.precision)

        return EvalSet("val", evaluate)

    def forgetting_sets(self) -> None:
        """The reference sets (`ref`, their step-0 scores kept in checkpoints) and, with an EMA, every eval set again
        on the averaged weights (`<name>_ema`)."""
        self.reference = reference_tracker(self.cfg)
        if self.reference is not None:
            transform = build_transform(self.cfg.model, self.cfg.data, train=False)
            evaluate = reference_evaluation(self.reference, transform, self.tokenizer, self.cfg, self.device)
            self.eval_sets.append(EvalSet(REFERENCE, evaluate))
            self.model_hooks["reference"] = BaselineHook(self.reference)
        if self.ema is not None:
            self.eval_sets += [EvalSet(s.name + EMA_SUFFIX, with_ema_weights(self.ema, s.evaluate)) for s in self.eval_sets]

    def setup_optimizer(self) -> None:
        cfg = self.cfg
        groups = finetune_param_groups(self.model, cfg.optim, cfg.finetune)
        self.optimizer = build_optimizer(self.model, cfg.optim, groups)
        # LP-FT: the optimizer holds what the fine-tune trains; the probe phase freezes all but the head
        self.probe = ProbePhase(self.model, cfg.finetune.probe_steps) if cfg.finetune.probe_steps > 0 else None
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")

    def restore(self) -> None:
        """Continue from the run's latest checkpoint (`train.resume`), then wrap the model for the step."""
        t, info = self.cfg.train, self.info
        ckpt = latest_checkpoint(self.run_dir / "checkpoints") if t.resume else None
        if ckpt is not None:
            self.progress = restore(ckpt, self.model, self.optimizer, self.scaler, self.train_data, self.model_hooks)
            if info.is_main:
                print(f"resumed from {ckpt} (step {self.progress.step})")
        if self.probe is not None:
            self.probe.apply(self.model, self.progress.step)
            if self.probe.probing and info.is_main:
                print(f"LP-FT: only the projections and the temperature train until step {self.probe.probe_steps}",
                      flush=True)
        self.train_model, self.forward = wrap_for_training(self.model, t, info, self.device)
        self.progress.run_id = self.progress.run_id or uuid.uuid4().hex  # a fresh run, or one from before run ids
        self.guard = NonFiniteGuard(t.max_nan_steps, self.device, self.progress.nonfinite_steps,
                                    self.progress.nonfinite_streak)
        self.last_good = latest_checkpoint(self.run_dir / "checkpoints") if self.progress.step else None

    def setup(self) -> None:
        self.setup_device()
        self.setup_text()
        self.setup_model()
        self.setup_data()
        self.setup_run_dir()
        self.setup_optimizer()
        self.restore()

    # ------------------------------------------------------------------------------------------------------------------
    # the loop

    @property
    def done(self) -> bool:
        return self.progress.step >= self.total_steps

    def train(self) -> None:
        """Step until `total_steps` (or a stop signal), then report; raises Interrupted after a signal."""
        self.start_reporting()
        self.evaluate_start()
        self.model.train()
        while not self.done and not self.stopping:
            for batch in self.epoch_batches():
                self.maybe_end_probe()
                lr = phase_lr(self.progress.step, self.total_steps, self.cfg.optim, self.cfg.finetune.probe_steps)
                set_lr(self.optimizer, lr)
                loss, grad_norm = self.step(batch)
                self.after_step(loss, grad_norm)
                self.maybe_stop()
                self.maybe_log(lr, grad_norm)
                self.maybe_eval()
                self.maybe_save()
                if self.done or self.stopping:
                    break
        self.close_bar()
        if self.stopping:
            self.cleanup()
            raise Interrupted(self.stop.signum, f"stopped by {self.stop.name} after step {self.progress.step}; saved "
                                                f"{latest_checkpoint(self.run_dir / 'checkpoints')}; rerun with "
                                                "train.resume=true")
        self.write_summary()
        self.cleanup()

    def epoch_batches(self):
        """This epoch's remaining batches on the device (the next epoch when a resume found this one over)."""
        p = self.progress
        if p.batch_in_epoch >= self.steps_per_epoch:  # resumed on a smaller training set: that epoch is over
            p.epoch, p.batch_in_epoch = p.epoch + 1, 0
        batches = self.train_data.batches(p.epoch, p.batch_in_epoch)
        return device_batches(batches, self.device, self.cfg.data.copy_stream)

    def maybe_end_probe(self) -> None:
        """LP-FT: after `finetune.probe_steps` steps, train what the `finetune` section allows (wrappers rebuilt:
        DDP syncs the parameters that train)."""
        if self.probe is not None and self.probe.apply(self.model, self.progress.step):
            self.train_model, self.forward = wrap_for_training(self.model, self.cfg.train, self.info, self.device)
            if self.info.is_main:
                print(f"step {self.progress.step}: probe phase over; {trainable_line(self.model)}", flush=True)

    def step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.cfg.train
        if self.teacher is not None:
            batch["teacher"] = self.teacher(batch)
        return train_step(self.train_model, batch, self.optimizer, self.scaler, self.loss_fn, self.device,
                          precision=t.precision, grad_clip=self.cfg.optim.grad_clip,
                          micro_batch_size=t.micro_batch_size, info=self.info, forward=self.forward,
                          cudagraphs=t.compile and t.compile_mode == "reduce-overhead")

    def after_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Count the step (on the device: no host sync) and update the model-state hooks."""
        self.guard.record(torch.isfinite(loss) & torch.isfinite(grad_norm), self.progress.step + 1)
        self.window.loss_sum += loss
        self.window.steps += 1
        self.progress.advance(self.steps_per_epoch)
        for hook in self.model_hooks.values():
            hook.update(unwrap(self.model), self.progress.step)
        if self.bar is not None:
            self.bar.update(1)

    def maybe_stop(self) -> None:
        """A stop signal on any rank ends the run after this step (ranks agree at logging steps)."""
        if not self.info.enabled or self.progress.step % self.cfg.train.log_every_n_steps == 0:
            self.stopping = self.stopping or self.stop.any_rank(self.info, self.device)

    def maybe_log(self, lr: float, grad_norm: torch.Tensor) -> None:
        """Every `train.log_every_n_steps` and at the end: the window's mean loss and rates (a host sync)."""
        step, t = self.progress.step, self.cfg.train
        if step % t.log_every_n_steps and not self.done:
            return
        self.sync_guard()
        w, model = self.window, unwrap(self.model)
        values = {"loss": all_reduce_mean(w.loss_sum / w.steps, self.info).item(),
                  "logit_scale": model.logit_scale.exp().item(), "lr": lr, "grad_norm": grad_norm.item(),
                  "samples_per_s": w.steps * t.batch_size / max(time.perf_counter() - w.start, 1e-9),
                  "epoch": self.progress.epoch, "nonfinite_steps": self.progress.nonfinite_steps,
                  **self.train_data.log_values()}
        self.logger.log(step, values)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['loss']:.3f}", T=f"{values['logit_scale']:.1f}", lr=f"{lr:.1e}",
                                 sps=f"{values['samples_per_s']:.0f}", **self.train_data.postfix(),
                                 **eval_postfix(self.last_eval))
        self.window = Window(torch.zeros((), device=self.device))

    def maybe_eval(self) -> None:
        """Every `eval.every_n_steps` and at the end: every eval set (a sharded model evaluates on every rank)."""
        every = self.cfg.eval.every_n_steps
        due = (every > 0 and self.progress.step % every == 0) or self.done
        if self.eval_sets and due and (self.info.is_main or is_sharded(self.model)):
            self.last_eval, self.last_eval_step = self.evaluate(), self.progress.step
            self.logger.log(self.progress.step, self.last_eval)

    def evaluate_start(self) -> None:
        """With reference sets, at step 0: score the starting weights on every eval set (an EMA equals them) and
        keep the reference scores as the baseline that `retained_` ratios divide by."""
        if self.reference is None or self.progress.step > 0 or not (self.info.is_main or is_sharded(self.model)):
            return
        metrics = self.evaluate([s for s in self.eval_sets if not s.name.endswith(EMA_SUFFIX)])
        self.reference.baseline = metrics_of(REFERENCE, metrics) or None
        if self.reference.baseline is not None:
            metrics.update(named_metrics(REFERENCE, self.reference.retained(self.reference.baseline)))
        self.logger.log(0, metrics)

    def evaluate(self, eval_sets: list[EvalSet] | None = None) -> dict[str, float]:
        """Metrics of every eval set (or of `eval_sets`), as `<set>/<metric>`. A failing evaluation (a bad image,
        out of memory) is reported in one line and the run goes on: it never costs the training or the checkpoint
        that follows."""
        metrics: dict[str, float] = {}
        for eval_set in self.eval_sets if eval_sets is None else eval_sets:
            try:
                found = eval_set.evaluate(self.model)
            except Exception as e:  # noqa: BLE001 - reported, and training is worth more than one evaluation
                if is_sharded(self.model):  # ranks evaluate together; one failing alone would leave the others waiting
                    raise
                print(f"evaluation at step {self.progress.step} failed, training goes on: {type(e).__name__}: "
                      f"{error_line(e)}", flush=True)
                continue
            metrics.update(named_metrics(eval_set.name, found))
        return metrics

    def maybe_save(self) -> None:
        t = self.cfg.train
        if (t.save_every_n_steps > 0 and self.progress.step % t.save_every_n_steps == 0) or self.done or self.stopping:
            self.save_checkpoint()

    # ------------------------------------------------------------------------------------------------------------------
    # checkpoints, reports, the end

    def sync_guard(self) -> None:
        """Stop after too many non-finite steps in a row; bring the counts to the host (a host sync)."""
        if (failure := self.guard.failure(self.last_good)) is not None:
            raise RunError(failure)
        self.progress.nonfinite_steps, self.progress.nonfinite_streak = self.guard.counts()

    def save_checkpoint(self) -> None:
        """Write a checkpoint of this step (the main process; a sharded model is gathered on every rank first)."""
        self.sync_guard()
        if self.info.enabled:  # each rank knows where its own shard streams stand; the checkpoint keeps them all
            self.train_data.merge_cursors(all_gather_object(self.train_data.cursors, self.info))
        weights, optimizer_state = gather_model_state(self.model, self.optimizer)
        if self.info.is_main:
            p = self.progress
            # only an evaluation of these very weights can make them the best
            metric = best_score(self.last_eval, self.cfg, self.reference) if self.last_eval_step == p.step else None
            if metric is not None and metric > p.best_metric:
                p.best_metric, p.best_checkpoint = metric, f"step_{p.step:08d}"
            path = save_or_report(lambda: self.write_checkpoint(weights, optimizer_state), p.step,
                                  self.run_dir / "checkpoints", self.cfg.train.on_checkpoint_error,
                                  self.done or self.stopping)
            if path is not None and p.nonfinite_streak == 0:
                self.last_good = path
        barrier(self.info)

    def write_checkpoint(self, weights: dict[str, torch.Tensor], optimizer_state: dict) -> Path:
        p, checkpoints = self.progress, self.run_dir / "checkpoints"
        state = training_state(optimizer_state, self.scaler, self.train_data, self.model_hooks)
        extra = {}
        if isinstance(self.tokenizer, TextTokenizer):  # the toolkit's own vocabulary travels with the weights
            extra["tokenizer.json"] = self.tokenizer.tokenizer.to_str()
        extra.update(checkpoint_files(unwrap(self.model), self.tokenizer))  # HF tower configs / tokenizer files
        ema = self.ema.state_dict_for_model() if self.ema is not None else None
        path = save_checkpoint(checkpoints / f"step_{p.step:08d}", weights, state, checkpoint_meta(p, self.cfg), extra,
                               ema_weights=ema)
        prune_checkpoints(checkpoints, self.cfg.train.keep_checkpoints, protect={p.best_checkpoint}, run_id=p.run_id)
        if self.replaced is not None:  # the new run has a checkpoint: the one it replaces may go
            self.replaced.settle(keep_new=True)
        return path

    def start_reporting(self) -> None:
        self.window = Window(torch.zeros((), device=self.device))
        trackers = open_trackers(self.cfg, self.run_dir, self.cfg.train.resume) if self.info.is_main else []
        self.logger = MetricsLogger(self.run_dir, self.info.is_main, trackers)
        if self.info.is_main and self.cfg.train.progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total_steps, initial=self.progress.step, desc=self.run_dir.name,
                            dynamic_ncols=True)

    def write_summary(self) -> None:
        """`summary.json` and the closing lines (main process)."""
        if not self.info.is_main:
            return
        summary: dict[str, Any] = {"steps": self.progress.step, **{k: round(v, 4) for k, v in self.last_eval.items()}}
        print(f"done: {self.run_dir} " + " ".join(f"{k}={v}" for k, v in summary.items()))
        summary["text"] = dataclasses.asdict(self.text_report)
        data = self.train_data.summary()
        print(f"data: bad samples skipped: {self.train_data.tracker.describe()} ({data['bad_skips']} skips in "
              f"{data['samples_loaded']} loads); captions truncated: {data['truncated_captions']} of "
              f"{data['captions_seen']}")
        (self.run_dir / "summary.json").write_text(json.dumps({**summary, "data": data}, indent=1))
        if self.logger is not None:
            self.logger.log_summary({**summary, "data": data})

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def cleanup(self) -> None:
        """Close the progress bar, the metrics file, the trackers and the data workers (safe to call twice)."""
        self.close_bar()
        if self.train_data is not None:
            self.train_data.close()
        if self.logger is not None:
            self.logger.close()
            self.logger = None


def train(cfg: Config) -> Path:
    """Run training as configured; returns the run directory."""
    info = init_distributed("cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu")
    recipe = None
    try:
        with GracefulStop() as stop:  # SIGINT/SIGTERM: finish the step, save, raise Interrupted
            recipe = ContrastiveRecipe(cfg, info, stop)
            try:
                recipe.setup()
                recipe.train()
            finally:
                recipe.cleanup()
        if recipe.replaced is not None:
            recipe.replaced.settle(keep_new=True)
    except BaseException:
        if recipe is not None and recipe.replaced is not None:  # stopped before its first checkpoint
            recipe.replaced.settle(keep_new=False)
        raise
    finally:
        if recipe is not None and recipe.held_run_dir:
            release(recipe.run_dir)  # after the earlier run is settled: nothing in it changes once let go
        leave_process_group(info)
    return recipe.run_dir
