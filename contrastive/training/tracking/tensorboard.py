"""TensorBoard events under `<run>/tensorboard/`: every scalar, the resolved config and the summary as text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ...config import Config, config_to_dict


class TensorBoardTracker:
    def __init__(self, run_dir: Path, cfg: Config) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + yaml.safe_dump(config_to_dict(cfg), sort_keys=False) + "```")

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=1) + "\n```")

    def close(self) -> None:
        self.writer.close()


def open_tracker(run_dir: Path, cfg: Config, resume: bool) -> TensorBoardTracker:
    return TensorBoardTracker(run_dir, cfg)
