"""Experiment trackers (`train.report_to`): TensorBoard, Weights & Biases and MLflow behind one interface.

Each backend is one module with `open_tracker(run_dir, cfg, resume) -> Tracker`. A tracker gets the resolved config
when it opens, the same scalars as `metrics.jsonl` (`log`), and the final `summary.json` (`log_summary`). Only the
main process opens trackers. A run that continues in the same run directory (`train.resume=true`) continues the
same tracked run: the W&B run id and the MLflow run id are kept in `<run>/tracking.json`.

Offline use: `WANDB_MODE=offline` writes the W&B run under `<run>/wandb/` (`wandb sync` uploads it later); MLflow
logs to whatever `MLFLOW_TRACKING_URI` names (a `sqlite:///file.db` or a folder).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Protocol

from ...config import Config
from ...errors import ConfigError


class Tracker(Protocol):
    def log(self, step: int, values: dict[str, float]) -> None:
        """Scalars of one step (the same as a `metrics.jsonl` line)."""

    def log_summary(self, summary: dict[str, Any]) -> None:
        """The run's final `summary.json`."""

    def close(self) -> None: ...


# report_to name -> (module of this package, the package it needs, the extra that installs it)
BACKENDS = {"tensorboard": ("tensorboard", "tensorboard", None), "wandb": ("wandb", "wandb", "wandb"),
            "mlflow": ("mlflow", "mlflow", "mlflow")}


def check_installed(report_to: list[str]) -> None:
    """Raise ConfigError (one line, naming what to install) when a tracker's package is missing."""
    for name in report_to:
        _, package, extra = BACKENDS[name]
        try:
            importlib.import_module(package)  # imported at the start anyway, when the tracker opens
        except ImportError:
            how = f'pip install -e ".[{extra}]" (or pip install {package})' if extra else f"pip install {package}"
            raise ConfigError(f"train.report_to: {name} is not installed; {how}") from None


def open_trackers(cfg: Config, run_dir: Path, resume: bool) -> list[Tracker]:
    """The trackers of `train.report_to`, each opened on this run (call on the main process only)."""
    out = []
    for name in dict.fromkeys(cfg.train.report_to):
        module = importlib.import_module(f"{__name__}.{BACKENDS[name][0]}")
        out.append(module.open_tracker(run_dir, cfg, resume))
    return out


def saved_run_id(run_dir: Path, backend: str) -> str | None:
    """The id of the tracked run this run directory continues (None for a new one)."""
    path = run_dir / "tracking.json"
    try:
        return json.loads(path.read_text()).get(backend)
    except (OSError, ValueError, AttributeError):
        return None


def save_run_id(run_dir: Path, backend: str, run_id: str) -> None:
    path = run_dir / "tracking.json"
    try:
        ids = json.loads(path.read_text())
    except (OSError, ValueError):
        ids = {}
    ids[backend] = run_id
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(ids, indent=1))
    tmp.replace(path)


def project_name(cfg: Config) -> str:
    """The W&B project / MLflow experiment: `train.project`, else the config's name."""
    return cfg.train.project or cfg.name
