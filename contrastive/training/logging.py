"""Where a run's numbers go: `metrics.jsonl` and the trackers of `train.report_to` (TensorBoard by default, W&B,
MLflow; see `tracking`), on the main process (a no-op elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import error_line
from .tracking import Tracker


def named_metrics(set_name: str, metrics: dict[str, float]) -> dict[str, float]:
    """One eval set's metrics under the names the run logs: `<set>/<metric>`."""
    return {f"{set_name}/{k}": v for k, v in metrics.items()}


def metrics_of(set_name: str, logged: dict[str, float]) -> dict[str, float]:
    """The inverse of `named_metrics`: the metrics of eval set `set_name` among logged ones, by their own names."""
    prefix = f"{set_name}/"
    return {k[len(prefix):]: v for k, v in logged.items() if k.startswith(prefix)}


class MetricsLogger:
    """metrics.jsonl + the run's trackers on the main process; a no-op elsewhere. A tracker that fails (a full disk,
    an unreachable server) is warned about once and dropped: it never stops the training."""

    def __init__(self, run_dir: Path, enabled: bool, trackers: list[Tracker] | None = None) -> None:
        self.enabled = enabled
        self.file = (run_dir / "metrics.jsonl").open("a") if enabled else None
        if self.file is not None and self.file.tell() > 0:  # a kill mid-write left a partial line: end it
            with (run_dir / "metrics.jsonl").open("rb") as f:
                f.seek(-1, 2)
                if f.read(1) != b"\n":
                    self.file.write("\n")
        self.trackers = list(trackers or []) if enabled else []

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as e:  # noqa: BLE001 - a tracker is worth less than the run it watches
                print(f"warning: {type(tracker).__name__}.{method} failed, no more logging to it: "
                      f"{type(e).__name__}: {error_line(e, 200)}", flush=True)
                self.trackers.remove(tracker)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        self._each("log", step, values)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self._each("log_summary", summary)

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
        self._each("close")
        self.trackers = []


# Progress-bar names of the headline eval metrics (the bar is narrow; metrics.jsonl keeps the full names).
_POSTFIX = {"val/text_retrieval_recall@1": "i2t@1", "val/image_retrieval_recall@1": "t2i@1",
            "val/caption_ranking_acc1": "rank@1", "val/acc1": "zs@1",
            # forgetting: the share of the start's reference scores kept (see contrastive.training.reference)
            "ref/retained_text_retrieval_recall@1": "kept_i2t@1", "ref/retained_image_retrieval_recall@1": "kept_t2i@1",
            "ref/retained_acc1": "kept_zs@1"}


def eval_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The headline metrics of an eval, short-named and formatted for a progress bar."""
    return {short: f"{metrics[key]:.3f}" for key, short in _POSTFIX.items() if key in metrics}
