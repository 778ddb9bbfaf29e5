"""Weights & Biases: one W&B run per run directory, continued on resume (its id in `<run>/tracking.json`).

Files go under `<run>/wandb/`; with `WANDB_MODE=offline` nothing leaves the machine and `wandb sync <run>/wandb/...`
uploads the run later. The run is named after the run directory; its config is the resolved config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import Config, config_to_dict
from . import project_name, save_run_id, saved_run_id


class WandbTracker:
    def __init__(self, run_dir: Path, cfg: Config, resume: bool) -> None:
        import wandb

        run_id = saved_run_id(run_dir, "wandb") if resume else None  # None: W&B draws a new id
        self.run = wandb.init(project=project_name(cfg), name=run_dir.name, id=run_id, resume="allow",
                              dir=str(run_dir), config=config_to_dict(cfg), allow_val_change=True,
                              settings=wandb.Settings(silent=True))
        if run_id is None:
            save_run_id(run_dir, "wandb", self.run.id)

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)

    def close(self) -> None:
        self.run.finish()


def open_tracker(run_dir: Path, cfg: Config, resume: bool) -> WandbTracker:
    return WandbTracker(run_dir, cfg, resume)
