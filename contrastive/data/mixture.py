"""Training on several sources at once, each batch mixed by weight (`data.train` as a list of sources).

    data:
      train:
        - {path: icons/train.csv, weight: 0.9}
        - {path: "start/{000..009}.tar", weight: 0.1, image_key: jpg, caption_key: txt}   # rehearsal

Allocation: the draws of the whole run form one stream, and the first n draws hold exactly
`count_k(n) = floor(m_k * q_k)` of source k, where m_k = n - (draws of the sources before k) and
q_k = w_k / (w_k + w_{k+1} + ...), the last source taking the rest. Each count is within k + 1 of n * w_k / sum(w),
so every batch holds each source's share by weight (up to rounding), and any position's counts are a closed form:
the sampler's state is its position, as for one table. Within a global batch the sources' slots are shuffled from
(seed, epoch, batch), so every rank's slice is mixed too.

Rows: source k's j-th draw of the run is row perm_k(r)[j mod n_k] of its pass r = j // n_k, a permutation drawn
from (seed, k, r): a source visits every row once per pass, a fresh order each pass, and a pass carries on across
epochs.

Epoch: the sum of the sources' sizes, in samples (steps = that // batch size). A source weighted above its share of
the rows repeats within an epoch (upsampling); one weighted below it takes up, in the next epoch, where it stopped.

Samples: each source keeps its own columns (shard extensions), format and bad-sample accounting; a bad sample is
replaced by another row of the same source, so the mixture holds. Shards in a mixture are read by position
(`shard_rows.py`: local, uncompressed tar files). The trainer logs, per source, the samples its batches held and
the bad samples skipped (`samples/<name>`, `bad/<name>` in metrics.jsonl; `data.sources` in summary.json); under
several processes these are the main process's share.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig, ModelConfig, SourceConfig
from ..errors import DataError
from .bad import BadSampleTracker
from .images import build_transform
from .loader import ImageTextDataset, TrainData, check_usable, loader_options
from .samples import Collate, Sample, sample_seed
from .sources import Source, detect_format, open_source


class Allocation:
    """How many of the run's first n draws each source holds (see the module docstring): exact, monotone in n,
    and within k + 1 of n * share for the k-th source."""

    def __init__(self, weights: list[float]) -> None:
        w = [Fraction(x) for x in weights]
        self.shares = [float(x / sum(w)) for x in w]
        # q_k = w_k / (w_k + ... + w_last): source k's share of what the sources before it left
        self.q = [w[k] / sum(w[k:]) for k in range(len(w))]

    def counts(self, n: int) -> list[int]:
        out, left = [], n
        for q in self.q[:-1]:
            c = math.floor(left * q)
            out.append(c)
            left -= c
        return out + [left]


class MixtureBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields this rank's share of each global batch as (source, row, sample seed) triples, from `start_batch` on.

    The global batch b of epoch e holds the draws [n, n + B) of the run's stream, n = (e * steps_per_epoch + b) * B.
    Rank r takes its contiguous slice of the shuffled slots. `set_position` moves a sampler that a DataLoader with
    persistent workers keeps."""

    def __init__(self, sizes: list[int], weights: list[float], batch_size: int, seed: int, steps_per_epoch: int,
                 epoch: int = 0, start_batch: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
        self.sizes, self.allocation = sizes, Allocation(weights)
        self.batch_size, self.seed, self.steps_per_epoch = batch_size, seed, steps_per_epoch
        self.epoch, self.start_batch, self.rank, self.world_size = epoch, start_batch, rank, world_size
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start_batch, 0)

    def row(self, source: int, draw: int) -> int:
        """The row of `source`'s `draw`-th draw of the run."""
        n = self.sizes[source]
        key = (source, draw // n)
        if key not in self._perms:
            if len(self._perms) > 2 * len(self.sizes):  # keep only recent passes
                self._perms.clear()
            g = torch.Generator().manual_seed(sample_seed(self.seed, source, key[1]) ^ 0x3C6EF372)
            self._perms[key] = torch.randperm(n, generator=g)
        return int(self._perms[key][draw % n])

    def global_batch(self, epoch: int, b: int) -> list[tuple[int, int]]:
        """(source, row) of each slot of global batch `b` of `epoch`."""
        start = (epoch * self.steps_per_epoch + b) * self.batch_size
        before, after = self.allocation.counts(start), self.allocation.counts(start + self.batch_size)
        slots = torch.tensor([k for k, (lo, hi) in enumerate(zip(before, after)) for _ in range(hi - lo)])
        g = torch.Generator().manual_seed(sample_seed(self.seed ^ 0x6D697874, epoch, b))
        slots = slots[torch.randperm(self.batch_size, generator=g)].tolist()
        drawn = list(before)  # each source's next draw, in slot order
        out = []
        for k in slots:
            out.append((k, self.row(k, drawn[k])))
            drawn[k] += 1
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        local = self.batch_size // self.world_size
        for b in range(self.start_batch, self.steps_per_epoch):
            lo = self.rank * local
            slots = self.global_batch(self.epoch, b)[lo: lo + local]
            positions = range(b * self.batch_size + lo, b * self.batch_size + lo + local)
            yield [(k, row, sample_seed(self.seed, self.epoch, p)) for (k, row), p in zip(slots, positions)]


class MixtureDataset(Dataset):
    """Indexed by (source, row, sample seed): (source, Sample), a bad row replaced from the same source."""

    def __init__(self, datasets: list[ImageTextDataset]) -> None:
        self.datasets = datasets

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[int, Sample]:
        source, row, seed = item
        return source, self.datasets[source][(row, seed)]


class MixtureCollate(Collate):
    """`Collate`, plus each source's good samples in the batch (`source_counts`) and the source of each skipped
    sample (`bad_sources`, aligned with `bad`)."""

    def __init__(self, tokenizer: Callable, trim: bool, num_sources: int) -> None:
        super().__init__(tokenizer, trim)
        self.num_sources = num_sources

    def __call__(self, items: list[tuple[int, Sample]]) -> dict:
        out = super().__call__([s for _, s in items])
        counts = [0] * self.num_sources
        for k, s in items:
            counts[k] += s.pixels is not None
        out["source_counts"] = torch.tensor(counts)
        out["bad_sources"] = [k for k, s in items for _ in s.bad]
        return out


def source_names(sources: list[SourceConfig]) -> list[str]:
    """Each source's `name`, else its file's (or folder's) stem, made unique with its position."""
    names = []
    for i, s in enumerate(sources):
        stem = Path(s.path.split("{")[0].rstrip("/") or f"source{i}").name.split(".")[0] or f"source{i}"
        names.append(s.name or stem)
    return [n if names.count(n) == 1 else f"{n}{i}" for i, n in enumerate(names)]


def open_mixed_source(source: SourceConfig, split: str) -> Source:
    """A source read by position: a table, an HF dataset, or local shards (`IndexedShards`)."""
    fmt = source.format or detect_format(source.path)
    if fmt == "webdataset":
        from .shard_rows import IndexedShards

        return IndexedShards(source.path, source.image_key, source.caption_key)
    return open_source(source.path, fmt, source.image_key, source.caption_key, split)


class MixtureData(TrainData):
    """The training data of a run on several sources (see the module docstring); the trainer uses it as TrainData."""

    def __init__(self, data_cfg: DataConfig, model_cfg: ModelConfig, tokenizer: Callable, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.cfg, self.tokenizer, self.batch_size, self.seed = data_cfg, tokenizer, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.sources = data_cfg.train_sources()
        self.names = source_names(self.sources)
        transform = build_transform(model_cfg, data_cfg, train=True)
        datasets = []
        for i, s in enumerate(self.sources):
            try:
                datasets.append(ImageTextDataset(open_mixed_source(s, data_cfg.split), transform, data_cfg.max_image_pixels))
            except DataError as e:
                raise DataError(f"data.train[{i}] ({s.path}): {e}") from None
            check_usable(datasets[-1], seed, f"data.train[{i}] ({s.path})")
        self.dataset = MixtureDataset(datasets)
        self.sizes = [len(d) for d in datasets]
        self.num_samples = sum(self.sizes)
        self.steps_per_epoch = self.num_samples // batch_size
        self.tracker = BadSampleTracker(data_cfg.on_bad_sample, data_cfg.max_bad_fraction, data_cfg.bad_check_after)
        # per source: good samples received, and its skipped samples (counted, never stopping the run on their own)
        self.source_samples = [0] * len(self.sources)
        self.source_bad = [BadSampleTracker(max_bad_fraction=1.0, show_first=0) for _ in self.sources]
        self.num_truncated = self.num_captions = 0
        self.cursors: dict[int, tuple[int, int, int]] = {}  # no streams: every source is read by position
        self._loader: DataLoader | None = None
        self._closer = None

    def _loader_at(self, epoch: int, start_batch: int) -> DataLoader:
        opts = loader_options(self.cfg)
        if self._loader is None or not opts["persistent_workers"]:
            weights = [s.weight for s in self.sources]
            sampler = MixtureBatchSampler(self.sizes, weights, self.batch_size, self.seed, self.steps_per_epoch,
                                          epoch, start_batch, self.rank, self.world_size)
            collate = MixtureCollate(self.tokenizer, self.cfg.trim_padding, len(self.sources))
            self.keep_loader(DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate, **opts))
        self._loader.batch_sampler.set_position(epoch, start_batch)
        return self._loader

    def observe(self, batch: dict) -> None:
        counts, bad_sources = batch.pop("source_counts").tolist(), batch.pop("bad_sources")
        bad = batch.get("bad", [])
        for k, n in enumerate(counts):
            mine = [b for b, s in zip(bad, bad_sources) if s == k]
            self.source_samples[k] += n
            self.source_bad[k].update(n + len(mine), mine)
        super().observe(batch)

    def log_values(self) -> dict[str, float]:
        out = super().log_values()
        for name, n, bad in zip(self.names, self.source_samples, self.source_bad):
            out[f"samples/{name}"] = n
            out[f"bad/{name}"] = bad.total
        return out

    def summary(self) -> dict[str, Any]:
        seen = max(sum(self.source_samples), 1)
        total = sum(s.weight for s in self.sources)
        sources = [{"name": name, "path": s.path, "rows": size, "weight": s.weight, "share": s.weight / total,
                    "samples": n, "share_seen": n / seen, "bad_samples": bad.summary()["bad_samples"]}
                   for name, s, size, n, bad in zip(self.names, self.sources, self.sizes, self.source_samples,
                                                    self.source_bad)]
        return {**super().summary(), "sources": sources}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "source_samples": torch.tensor(self.source_samples),
                "source_bad": [t.state_dict() for t in self.source_bad]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if "source_samples" in state and len(state["source_samples"]) == len(self.sources):
            self.source_samples = [int(v) for v in state["source_samples"].tolist()]
            for tracker, s in zip(self.source_bad, state["source_bad"]):
                tracker.load_state_dict(s)


def open_train_data(data_cfg: DataConfig, model_cfg: ModelConfig, tokenizer: Callable, batch_size: int, seed: int,
                    rank: int = 0, world_size: int = 1) -> TrainData:
    """The run's training data: one source as it always was (a table, HF dataset or streamed shards), several as a
    mixture."""
    cls = MixtureData if len(data_cfg.train_sources()) > 1 else TrainData
    return cls(data_cfg, model_cfg, tokenizer, batch_size, seed, rank, world_size)
