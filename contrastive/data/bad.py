"""Bad samples: what counts as one, and the running tally that decides whether a run may go on.

A sample that cannot be used (a missing or corrupt image, an empty caption, ...) raises `BadSample` with a reason
from `REASONS` where it is loaded. The loader skips it and draws a replacement; the main process feeds every
skipped sample to a `BadSampleTracker`, which counts them by reason, remembers the first offenders, and raises
`DataError` when `data.on_bad_sample` is `error` or the bad fraction passes `data.max_bad_fraction`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import DataError  # noqa: F401  (raised here; importable from contrastive.data)

# reason -> what the user is told
REASONS: dict[str, str] = {
    "missing_file": "image file not found",
    "unreadable_file": "image file cannot be opened",  # permission denied, a symlink loop, a name too long, a folder
    "empty_file": "zero-byte image file",
    "corrupt_image": "unreadable or corrupt image",
    "decompression_bomb": "image larger than the pixel limit (decompression bomb)",
    "empty_caption": "empty or whitespace caption",
    "bad_text": "caption is not valid UTF-8 text",
    "missing_columns": "row lacks the image or caption column",
    "outside_root": "image path leads outside the collection root",
    "long_caption": "caption longer than the field limit (131072 characters)",
}


class BadSample(Exception):
    """Raised while loading one sample; `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class BadRecord:
    """One skipped sample, as it travels from a loader worker to the main process."""

    reason: str
    where: str  # "<file>:<row>" or "<shard>:<member key>"
    key: int  # stable id of the sample (to count each bad sample once)
    detail: str = ""

    def line(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.where}: {REASONS[self.reason]}{detail}"


@dataclass
class BadSampleTracker:
    """Counts skipped samples by reason. `counts` holds distinct bad samples; `skips` every failed load (a bad
    sample drawn again later counts once in `counts`). The bad fraction is skips / loads."""

    on_bad_sample: str = "skip"  # skip | error
    max_bad_fraction: float = 0.1
    min_loads: int = 1000  # loads before the fraction is checked (fewer loads give a noisy fraction)
    show_first: int = 5  # offenders printed as they are found
    setting: str = "data.max_bad_fraction"  # what the limit is called where it was set (a config key, an option)
    loads: int = 0
    skips: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first: list[str] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)

    def update(self, loads: int, bad: list[BadRecord]) -> None:
        """Account for one batch: `loads` load attempts (good + bad), the bad ones listed."""
        self.loads += loads
        for record in bad:
            if self.on_bad_sample == "error":
                raise DataError(f"bad sample at {record.line()}; set data.on_bad_sample=skip to skip such samples")
            self.skips += 1
            if record.key in self._seen:
                continue
            self._seen.add(record.key)
            self.counts[record.reason] = self.counts.get(record.reason, 0) + 1
            if len(self.first) < self.show_first:
                self.first.append(record.line())
                print(f"skipped bad sample: {record.line()}", file=sys.stderr)
        if self.loads >= self.min_loads and self.skips > self.max_bad_fraction * self.loads:
            raise DataError(
                f"{self.skips} of {self.loads} samples loaded were bad ({self.skips / self.loads:.1%} > "
                f"{self.setting}={self.max_bad_fraction}): {self.describe()}; first: {self.first[0] if self.first else '-'}"
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())) or "none"

    def summary(self) -> dict[str, Any]:
        return {"bad_samples": dict(sorted(self.counts.items())), "bad_skips": self.skips, "samples_loaded": self.loads,
                "bad_sample_examples": list(self.first)}

    def state_dict(self) -> dict[str, Any]:
        # tensors and plain containers only: checkpoints load training state weights-only
        return {"loads": self.loads, "skips": self.skips, "counts": dict(self.counts), "first": list(self.first),
                "seen": torch.tensor(sorted(self._seen), dtype=torch.long)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loads, self.skips = int(state["loads"]), int(state["skips"])
        self.counts = {str(k): int(v) for k, v in state["counts"].items()}
        self.first = [str(s) for s in state["first"]]
        self._seen = set(state["seen"].tolist())
