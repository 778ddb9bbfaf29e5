"""Where a run's numbers go: `metrics.jsonl` and TensorBoard on the main process (a no-op elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path


def named_metrics(set_name: str, metrics: dict[str, float]) -> dict[str, float]:
    """One eval set's metrics under the names the run logs: `<set>/<metric>`."""
    return {f"{set_name}/{k}": v for k, v in metrics.items()}


def metrics_of(set_name: str, logged: dict[str, float]) -> dict[str, float]:
    """The inverse of `named_metrics`: the metrics of eval set `set_name` among logged ones, by their own names."""
    prefix = f"{set_name}/"
    return {k[len(prefix):]: v for k, v in logged.items() if k.startswith(prefix)}


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


# Progress-bar names of the headline eval metrics (the bar is narrow; metrics.jsonl keeps the full names).
_POSTFIX = {"val/text_retrieval_recall@1": "i2t@1", "val/image_retrieval_recall@1": "t2i@1",
            "val/caption_ranking_acc1": "rank@1", "val/acc1": "zs@1",
            # forgetting: the share of the start's reference scores kept (see contrastive.training.reference)
            "ref/retained_text_retrieval_recall@1": "kept_i2t@1", "ref/retained_image_retrieval_recall@1": "kept_t2i@1",
            "ref/retained_acc1": "kept_zs@1"}


def eval_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The headline metrics of an eval, short-named and formatted for a progress bar."""
    return {short: f"{metrics[key]:.3f}" for key, short in _POSTFIX.items() if key in metrics}
