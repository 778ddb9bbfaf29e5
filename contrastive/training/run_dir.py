"""Run directories: `output_dir/run_name`, created only once model and data are known to load.

A run directory is held by one process at a time (`claim_run_dir`). `train.overwrite=true` never loses the earlier run first: it is moved aside to `.<name>.replaced` and deleted once
the new run has written its first checkpoint, or put back when the new run stops before that.
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path

from ..config import Config, save_config
from ..errors import ConfigError
from ..interop.checkpoint import list_checkpoints, remove_partial_checkpoints
from ..interop.outputs import hold


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


class ReplacedRun:
    """The earlier run that `train.overwrite=true` moved aside (`.<name>.replaced`), owned by the run replacing it
    until that run's first checkpoint: `settle(keep_new=True)` then deletes it; `settle(keep_new=False)` (the new
    run stopped before a checkpoint) puts it back in place of the new run."""

    def __init__(self, run_dir: Path, aside: Path) -> None:
        self.run_dir, self.aside = run_dir, aside
        self.settled = False

    def settle(self, keep_new: bool) -> None:
        if self.settled:
            return
        self.settled = True
        if keep_new:
            shutil.rmtree(self.aside, ignore_errors=True)
            return
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.aside.replace(self.run_dir)
        print(f"kept the earlier run {self.run_dir}: the run meant to replace it stopped before its first checkpoint",
              flush=True)


def claim_run_dir(cfg: Config) -> tuple[Path, ReplacedRun | None]:
    """The run directory, held by this process (`outputs.hold`: a second process on it stops in one line naming this
    one, having touched nothing), an interrupted overwrite settled, prepared (see `prepare_run_dir`, whose
    `ReplacedRun` comes back too) and cleared of half-written checkpoints. The main process only."""
    run_dir = resolve_run_dir(cfg)
    hold(run_dir, "train")  # before anything in it is moved, restored or deleted
    recover_replaced(run_dir)
    replaced = prepare_run_dir(cfg, run_dir)
    remove_partial_checkpoints(run_dir / "checkpoints")
    return run_dir, replaced


def prepare_run_dir(cfg: Config, run_dir: Path) -> ReplacedRun | None:
    """Create the run directory. `train.overwrite=true` moves an earlier run aside, never deletes it here: the
    `ReplacedRun` returned removes it once the new run has written its first checkpoint, or puts it back if the new
    run fails before that."""
    if run_dir.exists() and any(run_dir.iterdir()) and not (cfg.train.resume or cfg.train.overwrite):
        raise ConfigError(
            f"run directory {run_dir} already exists; pass train.resume=true to continue it, "
            "train.overwrite=true to replace it, or another train.run_name"
        )
    replaced = None
    if run_dir.exists() and cfg.train.overwrite and not cfg.train.resume:
        recover_replaced(run_dir)  # a leftover of a killed overwrite would block the move
        replaced = ReplacedRun(run_dir, replaced_path(run_dir))
        run_dir.replace(replaced.aside)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return replaced


def replaced_path(run_dir: Path) -> Path:
    return run_dir.with_name(f".{run_dir.name}.replaced")


def recover_replaced(run_dir: Path) -> None:
    """After a process killed between moving an earlier run aside and the new run's first checkpoint: keep the new
    run if it has a checkpoint, else put the earlier one back."""
    aside = replaced_path(run_dir)
    if not aside.is_dir():
        return
    if (run_dir / "checkpoints").is_dir() and list_checkpoints(run_dir / "checkpoints"):  # it wrote one: it started
        shutil.rmtree(aside, ignore_errors=True)
        return
    if run_dir.exists():
        shutil.rmtree(run_dir)
    aside.replace(run_dir)
    print(f"restored the earlier run {run_dir}: the run meant to replace it stopped before its first checkpoint",
          flush=True)
