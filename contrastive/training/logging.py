"""Where a run's numbers go: `metrics.jsonl` and TensorBoard on the main process (a no-op elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path


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
