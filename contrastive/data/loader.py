"""Samples, batches and the deterministic, resumable order of an epoch.

Determinism: the order of an epoch is a permutation drawn from (seed, epoch); every sample also gets its own seed
from (seed, epoch, position), which drives its caption choice, its augmentation and, when it is bad, the choice of
its replacement. A batch therefore depends only on the seed and its position, never on worker scheduling, so a
resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig, ModelConfig
from .bad import BadRecord, BadSample, BadSampleTracker, DataError
from .images import PIL_MAX_PIXELS, ImageTransform, build_transform, decode_image
from .sources import Record, RawSample, Source, TableSource, detect_format, open_source, pick_caption, stable_id

MAX_TRIES = 64  # draws per sample before giving up on finding a good one


@dataclass
class Sample:
    pixels: torch.Tensor | None  # (3, S, S); None when no good sample was found in MAX_TRIES draws
    caption: str
    image_id: str
    bad: list[BadRecord] = field(default_factory=list)  # the samples skipped to get this one


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


def load_sample(raw: RawSample, transform: Callable, generator: torch.Generator, max_pixels: int) -> tuple[torch.Tensor, str]:
    """(pixels (3, S, S), caption) of one raw sample. Raises BadSample; nothing else escapes for a sample's sake."""
    caption = pick_caption(raw.captions, generator)
    min_side = transform.min_side if isinstance(transform, ImageTransform) else 0
    img = decode_image(raw.image, max_pixels, min_side)
    try:
        if isinstance(transform, ImageTransform):
            return transform(img, generator), caption
        with torch.random.fork_rng(devices=[]):  # a plain callable draws from the global RNG: seed it per sample
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            return transform(img), caption
    except Exception as e:  # Pillow raises many types on odd files; a sample never stops the run
        raise BadSample("corrupt_image", f"{type(e).__name__}: {str(e)[:120]}") from None


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


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + position * 0xC2B2AE3D) % (2**63 - 1)


def padded_length(tokens: torch.Tensor | dict, pad_token_id: int | None, multiple: int = 8) -> int:
    """Columns a batch of captions needs: its longest caption rounded up to `multiple` (at most T); T when the
    padding cannot be told (no pad id, a dict without an attention mask, or left padding)."""
    if isinstance(tokens, dict):
        mask = tokens.get("attention_mask")
        if mask is None or mask.ndim != 2 or (mask[:, 0] == 0).any():  # no mask, or left padding: keep all
            return next(iter(tokens.values())).shape[1]
        longest, T = int(mask.sum(1).max()), mask.shape[1]
    else:
        T = tokens.shape[1]
        if pad_token_id is None or tokens.ndim != 2:
            return T
        real = tokens != pad_token_id  # (B, T)
        # each row's length: one past its last non-pad token
        lengths = torch.where(real.any(1), T - real.flip(1).int().argmax(1), torch.zeros_like(tokens[:, 0]))
        longest = int(lengths.max())
    return min(T, -(-max(longest, 1) // multiple) * multiple)


def trim_padding(tokens: torch.Tensor | dict, pad_token_id: int | None, multiple: int = 8) -> torch.Tensor | dict:
    """Drop the padding columns that every caption of a batch shares: (B, T) -> (B, L), L = `padded_length`.

    Text towers give the same features either way: the built-in ones attend causally and pool at end-of-text, so
    no kept token ever saw a dropped one; transformers towers mask padding out of attention and pooling. Token
    dicts (`input_ids`, `attention_mask`) are measured by the mask and trimmed only when padded on the right.
    """
    keep = padded_length(tokens, pad_token_id, multiple)
    if isinstance(tokens, dict):
        T = next(iter(tokens.values())).shape[1]
        return tokens if keep == T else {k: v[:, :keep].contiguous() if v.ndim == 2 else v for k, v in tokens.items()}
    return tokens if keep == tokens.shape[1] else tokens[:, :keep].contiguous()


def text_content_ids(tokens: torch.Tensor | dict, pad_token_id: int | None) -> torch.Tensor:
    """(B,) ids equal for captions that reach the text tower as the same tokens, on every process: what the
    tokenizer normalises away (case, whitespace) or truncation cuts off does not make two captions differ, since the
    model could not tell them apart. Padding is left out, so batches trimmed to other widths agree."""
    if isinstance(tokens, dict):
        ids, mask = tokens["input_ids"], tokens.get("attention_mask")  # (B, T)
        rows = list(ids) if mask is None else [r[m.bool()] for r, m in zip(ids, mask)]
    elif pad_token_id is None:
        rows = list(tokens)
    else:
        # each row up to one past its last non-pad token
        real = tokens != pad_token_id  # (B, T)
        lengths = torch.where(real.any(1), tokens.shape[1] - real.flip(1).int().argmax(1), 0)
        rows = [r[:n] for r, n in zip(tokens, lengths.tolist())]
    return torch.tensor([stable_id(" ".join(map(str, r.tolist()))) for r in rows], dtype=torch.long)


class Collate:
    """Stacks pixels, tokenizes captions (in the worker), trims the padding all captions share (`trim_padding`),
    derives content ids for duplicate-aware targets, and carries the skipped samples and truncation counts to the
    main process."""

    def __init__(self, tokenizer: Callable, trim: bool = True) -> None:
        self.tokenizer = tokenizer
        self.trim = trim

    def __call__(self, samples: list[Sample]) -> dict:
        bad = [b for s in samples for b in s.bad]
        good = [s for s in samples if s.pixels is not None]
        if not good:
            return {"bad": bad, "loads": len(bad), "failed": len(samples)}
        captions = [s.caption for s in good]
        truncated_before = getattr(self.tokenizer, "num_truncated", 0)
        tokens = self.tokenizer(captions)
        pad_token_id = getattr(self.tokenizer, "pad_token_id", None)
        if self.trim:
            tokens = trim_padding(tokens, pad_token_id)
        return {
            "pixels": torch.stack([s.pixels for s in good]),  # (B, 3, S, S)
            "tokens": tokens,  # (B, T) or dict of (B, T)
            "image_ids": torch.tensor([stable_id(s.image_id) for s in good], dtype=torch.long),  # (B,)
            "text_ids": text_content_ids(tokens, pad_token_id),  # (B,)
            "captions": captions,
            "bad": bad,
            "loads": len(good) + len(bad),
            "failed": len(samples) - len(good),
            "num_truncated": getattr(self.tokenizer, "num_truncated", 0) - truncated_before,
        }


def loader_options(data_cfg: DataConfig) -> dict[str, Any]:
    workers = data_cfg.num_workers
    return {
        "num_workers": workers,
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


class TrainData:
    """The training data of a run: steps per epoch, the batches of an epoch from a position, and the tallies of
    skipped samples and truncated captions (checked, shown and checkpointed by the trainer)."""

    def __init__(self, data_cfg: DataConfig, model_cfg: ModelConfig, tokenizer: Callable, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
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
        self._loader: DataLoader | None = None
        if isinstance(self.dataset, ImageTextDataset) and self.num_samples:
            self.check_usable()

    def check_usable(self, rounds: int = 4) -> None:
        """Raise DataError unless some sample loads (a table whose every image is missing fails here, before the
        trainer writes anything). Costs one decode for good data; the draws do not touch the epoch's order."""
        bad: list[BadRecord] = []
        for r in range(rounds):
            sample = self.dataset[(0, sample_seed(self.seed, -1 - r, 0))]
            bad += sample.bad
            if sample.pixels is not None:
                return
        counts: dict[str, int] = {}
        for b in bad:
            counts[b.reason] = counts.get(b.reason, 0) + 1
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        raise DataError(f"data.train: none of {len(bad)} samples drawn from its {self.num_samples} rows could be used "
                        f"({reasons}); first: {bad[0].line()}")

    def _loader_at(self, epoch: int, start_batch: int) -> DataLoader:
        opts = loader_options(self.cfg)
        if hasattr(self.dataset, "set_position"):  # a stream: workers hold a copy, so a new loader each epoch
            self.dataset.set_position(epoch, start_batch)
            opts["persistent_workers"] = False
            return DataLoader(self.dataset, batch_size=None, **opts)
        if self._loader is None or not opts["persistent_workers"]:
            sampler = ResumableBatchSampler(len(self.dataset), self.batch_size, self.seed, epoch, start_batch,
                                            self.rank, self.world_size)
            self._loader = DataLoader(self.dataset, batch_sampler=sampler,
                                      collate_fn=Collate(self.tokenizer, self.cfg.trim_padding), **opts)
        self._loader.batch_sampler.set_position(epoch, start_batch)
        return self._loader

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
        self.num_captions += len(batch.get("captions", ()))

    def postfix(self) -> dict[str, str]:
        """Progress-bar fields: skipped samples, when there are any."""
        return {"bad": str(self.tracker.total)} if self.tracker.total else {}

    def summary(self) -> dict[str, Any]:
        return {**self.tracker.summary(), "truncated_captions": self.num_truncated, "captions_seen": self.num_captions}

    def state_dict(self) -> dict[str, Any]:
        return {"bad": self.tracker.state_dict(), "num_truncated": self.num_truncated, "num_captions": self.num_captions}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load_state_dict(state["bad"])
        self.num_truncated, self.num_captions = int(state["num_truncated"]), int(state["num_captions"])
