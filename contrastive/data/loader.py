"""Datasets, batches and the deterministic, resumable order of an epoch (one sample's pieces: `samples`).

Determinism: the order of an epoch is a permutation drawn from (seed, epoch); every sample also gets its own seed
from (seed, epoch, position), which drives its caption choice, its augmentation and, when it is bad, the choice of
its replacement. A batch therefore depends only on the seed and its position, never on worker scheduling, so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import signal
import weakref
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig, ModelConfig
from .bad import BadRecord, BadSample, BadSampleTracker
from ..errors import DataError
from .images import PIL_MAX_PIXELS, build_transform
from .samples import Collate, Sample, load_sample, sample_seed
from .sources import Record, RawSample, Source, detect_format, open_source, stable_id

MAX_TRIES = 64  # draws per sample before giving up on finding a good one


class _RecordList:
    """Adapts a list of Records (the pre-source API) to the Source protocol."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def where(self, index: int) -> str:
        return f"record {index}"

    def get(self, index: int) -> RawSample:
        r = self.records[index]
        return RawSample(r.image, r.captions, f"record {index} ({r.image})", r.image)


class ImageTextDataset(Dataset):
    """Indexed by (row index, sample seed): returns a Sample. A bad row is replaced by a row drawn from the sample
    seed, so the batch keeps its size and the draw is the same on every run."""

    def __init__(self, source: Source | list[Record], transform: Callable, max_pixels: int = PIL_MAX_PIXELS) -> None:
        self.source = _RecordList(source) if isinstance(source, list) else source
        self.transform, self.max_pixels = transform, max_pixels

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int]) -> Sample:
        index, seed = item
        g = torch.Generator().manual_seed(seed)
        bad: list[BadRecord] = []
        for _ in range(MAX_TRIES):
            raw = None
            try:
                raw = self.source.get(index)
                pixels, caption = load_sample(raw, self.transform, g, self.max_pixels)
                return Sample(pixels, caption, raw.image_id, bad)
            except BadSample as e:
                where = raw.where if raw is not None else self.source.where(index)
                bad.append(BadRecord(e.reason, where, stable_id(where), e.detail))
            index = int(torch.randint(len(self.source), (1,), generator=g))
        return Sample(None, "", "", bad)


# ----------------------------------------------------------------------------------------------------------------------
# order


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's share of each global batch as (index, sample seed) pairs, from `start_batch` on.

    The global batch b of epoch e is permutation(seed, e)[b*B:(b+1)*B]; rank r takes its contiguous slice, so N ranks
    see the same global batches as one process with the whole batch. The incomplete last batch is dropped.
    `set_position` moves a sampler that a DataLoader with persistent workers keeps.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, epoch: int = 0, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.epoch, self.start_batch, self.rank, self.world_size, self.shuffle = epoch, start_batch, rank, world_size, shuffle

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return max(self.num_samples // self.batch_size - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        local = self.batch_size // self.world_size
        for b in range(self.start_batch, self.num_samples // self.batch_size):
            lo = b * self.batch_size + self.rank * local
            positions = range(lo, lo + local)
            yield [(int(order[p]), sample_seed(self.seed, self.epoch, p)) for p in positions]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: Slurm, `timeout` and Ctrl-C signal the whole process group, and
    the main process alone decides how to stop (it finishes its step and saves); a worker that died of the signal
    would end the run with a traceback instead. Workers still exit when the main process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


def fixed_mmap_threshold(size: int = 128 * 1024) -> None:
    """Make glibc's malloc serve every block of `size` bytes or more with its own mapping, returned to the system when
    freed. By default glibc raises that threshold each time such a block is freed, up to 32 MiB, after which a worker's
    batches (a 256 x 3 x 64 x 64 float batch is 12 MiB; one 224-pixel image 0.6 MiB) come from its heap, whose freed
    pieces it cannot give back: a worker decoding 1.5 x 10^5 rows for `contrastive embed` grew by 1.2 GiB. With
    the threshold fixed it stays flat (`python -m scripts.bench_worker_memory`). No-op where the C library is not
    glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(M_MMAP_THRESHOLD, size)
    except OSError:
        pass


def init_worker(worker_id: int) -> None:
    """`worker_init_fn` of every loader that decodes in workers: stop signals are the main process's to act on, and
    a fixed mmap threshold keeps the worker's memory flat."""
    ignore_stop_signals(worker_id)
    fixed_mmap_threshold()


def shutdown_workers(loader: DataLoader) -> None:
    """End the worker processes a persistent-workers loader keeps between epochs. They would otherwise live until the
    loader is garbage-collected, and since they ignore SIGTERM (`ignore_stop_signals`), an interpreter exiting with
    them alive would wait for them for ever: multiprocessing's exit handler sends its daemonic children SIGTERM and
    joins them."""
    iterator = getattr(loader, "_iterator", None)  # where torch keeps a persistent loader's live iterator
    if iterator is not None:
        iterator._shutdown_workers()
        loader._iterator = None


def loader_options(data_cfg: DataConfig) -> dict[str, Any]:
    workers = data_cfg.num_workers
    return {
        "num_workers": workers,
        "worker_init_fn": init_worker if workers > 0 else None,
        "pin_memory": data_cfg.pin_memory and torch.cuda.is_available(),
        "persistent_workers": data_cfg.persistent_workers and workers > 0,
        "prefetch_factor": data_cfg.prefetch_factor if workers > 0 else None,
    }


def build_train_loader(dataset: ImageTextDataset, tokenizer: Callable, data_cfg: DataConfig, batch_size: int,
                       seed: int, epoch: int, start_batch: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, epoch, start_batch, rank, world_size)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=Collate(tokenizer, data_cfg.trim_padding),
                      **loader_options(data_cfg))


# ----------------------------------------------------------------------------------------------------------------------
# what the trainer holds


def check_usable(dataset: ImageTextDataset, seed: int, key: str, rounds: int = 4) -> None:
    """Raise DataError unless some sample of `dataset` loads (a table whose every image is missing fails here, before
    the trainer writes anything). Costs one decode for good data; the draws do not touch the epoch's order. `key`
    names the data in the message."""
    bad: list[BadRecord] = []
    for r in range(rounds):
        sample = dataset[(0, sample_seed(seed, -1 - r, 0))]
        bad += sample.bad
        if sample.pixels is not None:
            return
    counts: dict[str, int] = {}
    for b in bad:
        counts[b.reason] = counts.get(b.reason, 0) + 1
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    raise DataError(f"{key}: none of {len(bad)} samples drawn from its {len(dataset)} rows could be used "
                    f"({reasons}); first: {bad[0].line()}")


class TrainData:
    """The training data of a run: steps per epoch, the batches of an epoch from a position, and the tallies of
    skipped samples and truncated captions (checked, shown and checkpointed by the trainer)."""

    def __init__(self, data_cfg: DataConfig, model_cfg: ModelConfig, tokenizer: Callable, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        sources = data_cfg.train_sources()
        if len(sources) > 1:
            raise ValueError("several training sources: use contrastive.data.mixture.open_train_data")
        data_cfg = data_cfg.for_source(sources[0])
        self.cfg, self.tokenizer, self.batch_size, self.seed = data_cfg, tokenizer, batch_size, seed
        self.rank, self.world_size = rank, world_size
        transform = build_transform(model_cfg, data_cfg, train=True)
        fmt = data_cfg.format or detect_format(data_cfg.train)
        if fmt == "webdataset":
            from .shards import ShardStream

            self.dataset: Dataset = ShardStream(data_cfg, transform, tokenizer, batch_size, seed, rank, world_size)
            self.num_samples = self.dataset.num_samples
            self.steps_per_epoch = self.dataset.steps_per_epoch
        else:
            source = open_source(data_cfg.train, fmt, data_cfg.image_key, data_cfg.caption_key, data_cfg.split)
            self.dataset = ImageTextDataset(source, transform, data_cfg.max_image_pixels)
            self.num_samples = len(self.dataset)
            self.steps_per_epoch = self.num_samples // batch_size
        self.tracker = BadSampleTracker(data_cfg.on_bad_sample, data_cfg.max_bad_fraction, data_cfg.bad_check_after)
        self.num_truncated = 0
        self.num_captions = 0
        # shard streams: stream -> (epoch, batch, raw samples taken) of its last batch seen, for a resume that skips
        # without reading (see data.shards)
        self.cursors: dict[int, tuple[int, int, int]] = {}
        self._loader: DataLoader | None = None
        self._closer: weakref.finalize | None = None  # ends a kept loader's persistent workers
        if isinstance(self.dataset, ImageTextDataset) and self.num_samples:
            self.check_usable()

    def check_usable(self) -> None:
        """Raise DataError unless some sample loads (see `check_usable`)."""
        check_usable(self.dataset, self.seed, "data.train")

    def _loader_at(self, epoch: int, start_batch: int) -> DataLoader:
        opts = loader_options(self.cfg)
        if hasattr(self.dataset, "set_position"):  # a stream: workers hold a copy, so a new loader each epoch
            self.dataset.set_position(epoch, start_batch, self.cursors)
            opts["persistent_workers"] = False
            return DataLoader(self.dataset, batch_size=None, **opts)
        if self._loader is None or not opts["persistent_workers"]:
            sampler = ResumableBatchSampler(len(self.dataset), self.batch_size, self.seed, epoch, start_batch,
                                            self.rank, self.world_size)
            self.keep_loader(DataLoader(self.dataset, batch_sampler=sampler,
                                        collate_fn=Collate(self.tokenizer, self.cfg.trim_padding), **opts))
        self._loader.batch_sampler.set_position(epoch, start_batch)
        return self._loader

    def keep_loader(self, loader: DataLoader) -> None:
        """Hold `loader` for the next epochs; its persistent workers end at `close()`, when this object is collected,
        or at interpreter exit, whichever comes first."""
        self.close()
        self._loader = loader
        if loader.persistent_workers:
            self._closer = weakref.finalize(self, shutdown_workers, loader)

    def close(self) -> None:
        """End the kept loader's worker processes (safe to call twice)."""
        if self._closer is not None:
            self._closer()
        self._loader = self._closer = None

    def batches(self, epoch: int, start_batch: int) -> Iterator[dict]:
        """This rank's batches of `epoch` from global batch `start_batch` on; raises DataError when the data is too
        bad to go on (or at the first bad sample with data.on_bad_sample=error)."""
        for batch in self._loader_at(epoch, start_batch):
            self.observe(batch)
            yield batch

    def observe(self, batch: dict) -> None:
        bad = batch.pop("bad", [])
        self.tracker.update(batch.pop("loads", 0), bad)
        if batch.pop("failed", 0):
            raise DataError(f"{MAX_TRIES} draws in a row found only bad samples ({self.tracker.describe()}); check data.train")
        self.num_truncated += batch.pop("num_truncated", 0)
        if (cursor := batch.pop("stream_cursor", None)) is not None:
            self.cursors[cursor[0]] = tuple(cursor[1:])
        self.num_captions += len(batch.get("captions", ()))

    def log_values(self) -> dict[str, float]:
        """Values for each metrics line beside the loss (bad samples; a mixture adds each source's count)."""
        return {"bad_samples": self.tracker.total}

    def postfix(self) -> dict[str, str]:
        """Progress-bar fields: skipped samples, when there are any."""
        return {"bad": str(self.tracker.total)} if self.tracker.total else {}

    def summary(self) -> dict[str, Any]:
        return {**self.tracker.summary(), "truncated_captions": self.num_truncated, "captions_seen": self.num_captions}

    def state_dict(self) -> dict[str, Any]:
        return {"bad": self.tracker.state_dict(), "num_truncated": self.num_truncated, "num_captions": self.num_captions,
                "stream_cursors": {s: list(c) for s, c in self.cursors.items()}}

    def merge_cursors(self, parts: list[dict[int, tuple[int, int, int]]]) -> None:
        """Take every rank's stream cursors (each rank sees only its own streams), so one checkpoint holds them all."""
        for part in parts:
            self.cursors.update(part)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["bad"])
        self.num_truncated, self.num_captions = int(state["num_truncated"]), int(state["num_captions"])
        self.cursors = {int(s): tuple(int(v) for v in c) for s, c in state.get("stream_cursors", {}).items()}
