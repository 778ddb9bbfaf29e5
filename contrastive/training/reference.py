"""Forgetting: reference sets (`eval.reference`) that stand for what the starting model already knew, scored for
the starting weights at step 0 and again at every evaluation.

With one reference set its metrics are logged as `ref/<metric>`, with several as `ref/<name>/<metric>`; beside
every higher-is-better metric goes `retained_<metric>` = score now / score at step 0 (1.0: nothing forgotten).
Each set has a headline metric (`eval.reference_metric`; auto: text_retrieval_recall@1 for a retrieval table, acc1
for a zero-shot set) that the best checkpoint can weigh against the target metric (`eval.reference_weight`).
"""

from __future__ import annotations

import re
from typing import Callable

from torch import nn

from ..errors import ConfigError
from ..config import EvalConfig, ReferenceConfig
from ..data.eval_table import EvalTable, read_eval_table
from ..evaluation.evaluate import evaluate_table

HIGHER_IS_BETTER = re.compile(r"(image|text)_retrieval_recall@\d+|caption_ranking_acc1|acc1|acc5|mean_per_class_recall")


def read_reference_tables(refs: list[ReferenceConfig]) -> list[EvalTable]:
    """The reference tables, read and checked once (a missing file or class column fails before training)."""
    tables = [read_eval_table(r.data, r.task, image_key=r.image_key, caption_key=r.caption_key, class_key=r.class_key,
                              classes_file=r.classes or None, templates_file=r.templates or None, name=r.name)
              for r in refs]
    names = [t.name for t in tables]
    if len(set(names)) < len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"eval.reference: two sets are named {twice!r}; give them distinct `name`s")
    return tables


class ReferenceTracker:
    """Scores the reference sets and relates them to the scores at step 0 (`baseline`, set by `start`)."""

    def __init__(self, tables: list[EvalTable], cfg: EvalConfig) -> None:
        self.tables = tables
        self.headline = {t.name: cfg.reference_metric_name(t.task) for t in tables}
        self.baseline: dict[str, float] | None = None  # metrics at step 0, keyed as `measure` returns them

    def key(self, table: EvalTable, metric: str) -> str:
        """A metric's name under the `ref/` prefix the trainer adds: `<metric>`, or `<set>/<metric>` for several."""
        return metric if len(self.tables) == 1 else f"{table.name}/{metric}"

    def measure(self, model: nn.Module, preprocess: Callable, tokenizer: Callable, **kwargs) -> dict[str, float]:
        """Every reference set's metrics for `model` (kwargs: batch_size, device, precision)."""
        out: dict[str, float] = {}
        for table in self.tables:
            metrics = evaluate_table(model, table, preprocess, tokenizer, **kwargs)
            out.update({self.key(table, k): v for k, v in metrics.items()})
        return out

    def retained(self, metrics: dict[str, float]) -> dict[str, float]:
        """`retained_<metric>` = now / step 0 for each higher-is-better metric that was above 0 at step 0."""
        if self.baseline is None:
            return {}
        out = {}
        for key, value in metrics.items():
            prefix, _, metric = key.rpartition("/")
            start = self.baseline.get(key)
            if HIGHER_IS_BETTER.fullmatch(metric) and start:
                out[f"{prefix + '/' if prefix else ''}retained_{metric}"] = value / start
        return out

    def score(self, metrics: dict[str, float]) -> float | None:
        """The mean headline metric over the sets (None when a set's is missing, e.g. a failed evaluation)."""
        values = [metrics.get(self.key(t, self.headline[t.name])) for t in self.tables]
        return None if any(v is None for v in values) else sum(values) / len(values)

    def state_dict(self) -> dict:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict) -> None:
        self.baseline = state.get("baseline")


def selection_score(target: float | None, reference: float | None, weight: float) -> float | None:
    """What picks the best checkpoint: (1 - weight) * target + weight * reference (either alone at weight 0 / 1)."""
    if weight == 0.0:
        return target
    if weight == 1.0:
        return reference
    if target is None or reference is None:
        return None
    return (1.0 - weight) * target + weight * reference
