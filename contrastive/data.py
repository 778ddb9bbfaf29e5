"""Image-caption datasets, transforms and a resumable, deterministic batch order.

Determinism: the order of an epoch is a permutation drawn from (seed, epoch); every sample also gets its own seed
from (seed, epoch, position), which drives its augmentation and caption choice. A batch therefore depends only on
the seed and its position, never on worker scheduling, so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2 as T

from .config import DataConfig, ModelConfig


class DataError(ValueError):
    """A user-caused data problem (missing file, bad columns) reported in one line."""


# ----------------------------------------------------------------------------------------------------------------------
# transforms


def build_transform(model_cfg: ModelConfig, data_cfg: DataConfig | None, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (3, S, S) float tensor. Train: random resized crop; eval: resize + centre crop. No flips:
    captions may speak of left and right."""
    size = model_cfg.image_size
    normalize = [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(model_cfg.image_mean, model_cfg.image_std)]
    if train and (data_cfg is None or data_cfg.augment):
        scale = tuple(data_cfg.crop_scale) if data_cfg is not None else (0.9, 1.0)
        geometry = [T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC, antialias=True)]
    else:
        geometry = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC, antialias=True), T.CenterCrop(size)]
    return T.Compose([_ToRGB(), *geometry, *normalize])


class _ToRGB:
    def __call__(self, img: Image.Image) -> Image.Image:
        return img if img.mode == "RGB" else img.convert("RGB")


# ----------------------------------------------------------------------------------------------------------------------
# datasets


@dataclass
class Record:
    image: str  # absolute path (or a source-specific key)
    captions: list[str]  # one or more captions
    fields: dict  # the row's other columns (e.g. a class label)


def stable_id(text: str) -> int:
    """A 63-bit id equal for equal strings, on every process (used for duplicate-aware targets)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") >> 1


def detect_format(path: str) -> str:
    p = Path(path)
    if p.suffix.lower() in (".csv",):
        return "csv"
    if p.suffix.lower() in (".tsv", ".tab"):
        return "tsv"
    if p.suffix.lower() in (".jsonl", ".json"):
        return "jsonl"
    if p.suffix.lower() == ".tar" or "{" in path:
        return "webdataset"
    if p.is_dir():
        return "hf"
    raise DataError(f"cannot tell the format of '{path}'; set data.format (csv, tsv, jsonl, hf, webdataset)")


def read_records(path: str, image_key: str, caption_key: str, fmt: str = "") -> list[Record]:
    """Read a CSV/TSV/JSONL table of `image path (relative to the file), caption(s)`. Any unreadable table raises
    DataError."""
    try:
        return _read_table(path, image_key, caption_key, fmt)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save the table as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"{path}: malformed table ({e})") from None


def _read_table(path: str, image_key: str, caption_key: str, fmt: str) -> list[Record]:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file not found: {path}")
    fmt = fmt or detect_format(path)
    if fmt not in ("csv", "tsv", "jsonl"):
        raise DataError(f"format '{fmt}' is not a table format")
    rows: list[dict] = []
    if fmt == "jsonl":
        with p.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{n}: not a JSON object")
                    rows.append(row)
    else:
        with p.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
            header = reader.fieldnames or []
            for key in (image_key, caption_key):
                if key not in header:
                    raise DataError(f"{path}: no column '{key}' (columns: {', '.join(header)}); set data.image_key/data.caption_key")
            rows = list(reader)
    records = []
    for row in rows:
        image, caption = row.get(image_key), row.get(caption_key)
        captions = caption if isinstance(caption, list) else [caption]
        others = {k: v for k, v in row.items() if k not in (image_key, caption_key)}
        records.append(Record(str(p.parent / image) if image is not None else "", [c for c in captions if c is not None], others))
    if not records:
        raise DataError(f"{path}: no rows")
    return records


class ImageTextDataset(Dataset):
    """Indexed by (row index, sample seed): returns (pixels (3, S, S), caption, image key)."""

    def __init__(self, records: list[Record], transform: Callable) -> None:
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, str, str]:
        index, seed = item
        record = self.records[index]
        g = torch.Generator().manual_seed(seed)
        caption = record.captions[int(torch.randint(len(record.captions), (1,), generator=g))]
        with Image.open(record.image) as img:
            img.load()
            # augmentations draw from the global RNG: fork it so the sample's own seed decides them
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                pixels = self.transform(img)
        return pixels, caption, record.image


# ----------------------------------------------------------------------------------------------------------------------
# order


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's share of each global batch as (index, sample seed) pairs, from `start_batch` on.

    The global batch b of epoch e is permutation(seed, e)[b*B:(b+1)*B]; rank r takes its contiguous slice, so N ranks
    see the same global batches as one process with the whole batch. The incomplete last batch is dropped.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, epoch: int = 0, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by world size {world_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.epoch, self.start_batch, self.rank, self.world_size, self.shuffle = epoch, start_batch, rank, world_size, shuffle

    def __len__(self) -> int:
        return max(self.num_samples // self.batch_size - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        local = self.batch_size // self.world_size
        for b in range(self.start_batch, self.num_samples // self.batch_size):
            lo = b * self.batch_size + self.rank * local
            positions = range(lo, lo + local)
            yield [(int(order[p]), _sample_seed(self.seed, self.epoch, p)) for p in positions]


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + position * 0xC2B2AE3D) % (2**63 - 1)


class Collate:
    """Stacks pixels, tokenizes captions (in the worker), and derives content ids for duplicate-aware targets."""

    def __init__(self, tokenizer: Callable) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[tuple[torch.Tensor, str, str]]) -> dict:
        pixels, captions, keys = zip(*samples)
        return {
            "pixels": torch.stack(pixels),  # (B, 3, S, S)
            "tokens": self.tokenizer(list(captions)),  # (B, T) or dict of (B, T)
            "image_ids": torch.tensor([stable_id(k) for k in keys], dtype=torch.long),  # (B,)
            "text_ids": torch.tensor([stable_id(c) for c in captions], dtype=torch.long),  # (B,)
            "captions": list(captions),
        }


def build_train_loader(dataset: ImageTextDataset, tokenizer: Callable, data_cfg: DataConfig, batch_size: int,
                       seed: int, epoch: int, start_batch: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, epoch, start_batch, rank, world_size)
    workers = data_cfg.num_workers
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=Collate(tokenizer),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
