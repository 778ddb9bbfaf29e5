"""MLflow: one MLflow run per run directory in the experiment `train.project` (default: the config's name),
continued on resume (its id in `<run>/tracking.json`), on the store `MLFLOW_TRACKING_URI` names.

The resolved config is logged as parameters (flattened dotted keys, when the run is created) and as the artifact
`config.yaml`; the summary as the artifact `summary.json`. MLflow's metric names allow no `@`: `recall@1` is logged
as `recall_at_1`.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from ...config import Config, config_to_dict
from . import project_name, save_run_id, saved_run_id


def metric_name(key: str) -> str:
    """`val/text_retrieval_recall@1` -> `val/text_retrieval_recall_at_1` (MLflow's allowed characters)."""
    return re.sub(r"[^\w\-. :/]", "_", key.replace("@", "_at_"))


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in values.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:6000]
    return out


class MlflowTracker:
    def __init__(self, run_dir: Path, cfg: Config, resume: bool) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient()
        run_id = saved_run_id(run_dir, "mlflow") if resume else None
        if run_id is None:
            name = project_name(cfg)
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            params = [Param(k, v) for k, v in flatten(config_to_dict(cfg)).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
                self.client.log_batch(run_id, params=params[i:i + 100])
            save_run_id(run_dir, "mlflow", run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id, self.run_dir = run_id, run_dir
        if (run_dir / "config.yaml").is_file():
            self.client.log_artifact(run_id, str(run_dir / "config.yaml"))

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_name(k), float(v), now, step) for k, v in values.items() if isinstance(v, (int, float))]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, summary, "summary.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_tracker(run_dir: Path, cfg: Config, resume: bool) -> MlflowTracker:
    return MlflowTracker(run_dir, cfg, resume)
