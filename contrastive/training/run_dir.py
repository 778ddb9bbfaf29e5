"""Run directories: `output_dir/run_name`, created only once model and data are known to load.

`train.overwrite=true` never loses the earlier run first: it is moved aside to `.<name>.replaced` and deleted once
the new run has written its first checkpoint, or put back when the new run stops before that.
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path

from ..checkpoint import list_checkpoints
from ..config import Config, save_config
from ..errors import ConfigError


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
    aside = replaced_path(run_dir)
    if not aside.is_dir() or run_dir in _REPLACED:
        return
    if (run_dir / "checkpoints").is_dir() and list_checkpoints(run_dir / "checkpoints"):  # it wrote one: it started
        shutil.rmtree(aside, ignore_errors=True)
        return
    if run_dir.exists():
        shutil.rmtree(run_dir)
    aside.replace(run_dir)
    print(f"restored the earlier run {run_dir}: the run meant to replace it stopped before its first checkpoint",
          flush=True)
