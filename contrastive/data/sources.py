"""Where samples come from: CSV/TSV/JSONL/Parquet tables and HF `datasets` (map-style, indexed by row).

A source answers `len(source)` and `source.get(i) -> RawSample` (encoded image or path, captions, where it came
from). Row-level problems (missing columns, empty or non-UTF-8 captions) raise `BadSample` from `get`, so they are
skipped and counted like unreadable images. WebDataset shards are streams; see `shards.py`.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from ..errors import DataError
from .bad import BadSample
from .tables import MappedRows, column_index, map_table, parse_json_row, row_values

FORMATS = ("csv", "tsv", "jsonl", "parquet", "hf", "webdataset")
TABLE_FORMATS = ("csv", "tsv", "jsonl", "parquet")
FIELD_LIMIT = 131072  # longest caption (characters) a row may hold: Python's csv field limit


@dataclass
class Record:
    image: str  # absolute path (or a source-specific key)
    captions: list[str]  # one or more captions
    fields: dict  # the row's other columns (e.g. a class label)


@dataclass
class RawSample:
    image: str | bytes  # a path, or the encoded file
    captions: list[Any]  # candidate captions (checked by `pick_caption`)
    where: str  # "<file> row <n>" for messages
    image_id: str  # identity of the image for duplicate-aware targets


class Source(Protocol):
    def __len__(self) -> int: ...

    def get(self, index: int) -> RawSample: ...

    def where(self, index: int) -> str: ...


def stable_id(text: str) -> int:
    """A 63-bit id equal for equal strings, on every process (used for duplicate-aware targets)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little") >> 1


def detect_format(path: str) -> str:
    p = Path(path)
    suffix = p.suffix.lower()
    if path.startswith("hf://"):
        return "hf"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".tar" or "{" in path or path.endswith(".tar}"):
        return "webdataset"
    if p.is_dir():
        return "hf"
    raise DataError(f"cannot tell the format of '{path}'; set data.format ({', '.join(FORMATS)})")


def pick_caption(captions: list[Any], generator: torch.Generator | None = None) -> str:
    """One usable caption, drawn with `generator` among the non-empty ones. Raises BadSample."""
    texts = []
    for c in captions:
        if c is None:
            continue
        if isinstance(c, bytes):
            try:
                c = c.decode("utf-8")
            except UnicodeDecodeError:
                raise BadSample("bad_text", "bytes are not UTF-8") from None
        c = str(c)
        try:
            c.encode("utf-8")  # lone surrogates stand for bytes that were not UTF-8 in the file
        except UnicodeEncodeError:
            raise BadSample("bad_text", repr(c[:40])) from None
        if c.strip():
            texts.append(c)
    if not texts:
        raise BadSample("empty_caption" if captions else "missing_columns")
    if len(texts) == 1:
        return texts[0]
    return texts[int(torch.randint(len(texts), (1,), generator=generator))]


# ----------------------------------------------------------------------------------------------------------------------
# tables


class TableSource:
    """CSV/TSV/JSONL/Parquet rows of `image path (relative to the file), caption` (a caption column may hold a list;
    `caption_key` may name several columns, comma-separated, whose captions are pooled).

    Rows are read from the table's memory-mapped row cache (see `tables`): no per-row Python object is kept, so
    DataLoader workers share the rows instead of copying them. Bytes that are not UTF-8 are kept (as surrogates)
    so that only the affected row is bad, not the file. Repeated rows of one image are separate samples: training
    sees one caption per visit. In Parquet (as img2dataset writes it) an image value without a suffix is a key:
    the file `<key>.jpg` (or .jpeg/.png/.webp) in the folder named like the table. `settings` name where the two
    column names came from (config keys, or a command's options), for messages.
    """

    def __init__(self, path: str, image_key: str, caption_key: str, fmt: str = "",
                 settings: tuple[str, str] = ("data.image_key", "data.caption_key")) -> None:
        p = Path(path)
        if p.is_dir():
            raise DataError(f"{path} is a directory, not a table file (CSV/TSV/JSONL/Parquet)")
        if not p.is_file():
            raise DataError(f"data file not found: {path}")
        if p.stat().st_size == 0:
            raise DataError(f"{path} is empty (0 bytes): a table needs a header or JSON lines with "
                            f"'{image_key}' and '{caption_key}'")
        self.path, self.root = str(path), p.parent
        self.fmt = fmt or detect_format(path)
        if self.fmt not in TABLE_FORMATS:
            raise DataError(f"format '{self.fmt}' is not a table format ({', '.join(TABLE_FORMATS)})")
        self.image_key, self.caption_key, self.settings = image_key, caption_key, settings
        self.table = map_table(path, self.fmt)
        columns = self.table.columns
        self.caption_keys = [caption_key] if caption_key in columns or "," not in caption_key else \
            [k.strip() for k in caption_key.split(",") if k.strip()]
        self.keys = [image_key, *self.caption_keys]
        self.positions = [column_index(columns, k) for k in self.keys]
        if self.fmt != "jsonl":  # JSON rows may lack a key: those rows are bad, not the table
            for key, position, setting in zip(self.keys, self.positions, (settings[0],) + (settings[1],) * len(self.keys)):
                if position is None:
                    raise DataError(f"{path}: no column '{key}' (columns: {', '.join(columns)}); set {setting}")
        if not len(self.table):
            raise DataError(f"{path}: no rows (expected columns '{image_key}' and '{caption_key}')")

    def __getstate__(self) -> dict:
        # a spawned worker maps the cache again rather than receiving the rows
        return {**self.__dict__, "table": self.table.cache}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.table = MappedRows(state["table"])

    def __len__(self) -> int:
        return len(self.table)

    def where(self, index: int) -> str:
        return f"{self.path} row {self.table.line(index)}"

    def _values(self, index: int) -> tuple[Any, Any]:
        """Row `index`'s image value and caption value (one column's as stored; several columns' pooled)."""
        image, *captions = row_values(self.table, index, self.keys, self.positions)
        return image, _pool(captions)

    def row(self, index: int) -> tuple[int, Any, Any, dict]:
        """(line, image value, caption value, the other columns) of row `index`; None marks a missing value."""
        image, caption = self._values(index)
        return self.table.line(index), image, caption, self._others(index)

    def _others(self, index: int) -> dict:
        if self.table.raw:
            row = parse_json_row(self.table.value(index, 0)) or {}
            return {k: v for k, v in row.items() if k not in self.keys}
        others = {}
        for position, name in enumerate(self.table.columns):
            if name not in self.keys:
                others[name] = self.table.value(index, position)
        # a key absent from a JSON line reads as null in Arrow
        return {k: v for k, v in others.items() if v is not None} if self.fmt == "jsonl" else others

    def get(self, index: int) -> RawSample:
        image, caption = self._values(index)
        where = self.where(index)
        if not isinstance(image, str) or not image or caption is None:
            raise BadSample("missing_columns", f"needs '{self.image_key}' and '{self.caption_key}'")
        captions = caption if isinstance(caption, list) else [caption]
        for c in captions:
            if isinstance(c, (str, bytes)) and len(c) > FIELD_LIMIT:
                raise BadSample("long_caption", f"{len(c)} characters")
        path = self.image_path(image)
        return RawSample(path, captions, f"{where} ({image})", path)

    def image_path(self, image: str) -> str:
        if self.fmt == "parquet" and not Path(image).suffix:  # an img2dataset key
            folder = self.root / Path(self.path).stem
            for ext in KEY_SUFFIXES:
                if (folder / (image + ext)).is_file():
                    return str(folder / (image + ext))
            return str(folder / (image + KEY_SUFFIXES[0]))
        return str(self.root / image)

    def images(self) -> Iterator[Any]:
        """The image value of every row, read column-wise (None where a row lacks it)."""
        if self.table.raw or self.positions[0] is None:
            for i in range(len(self)):
                yield self._values(i)[0]
            return
        for values in self.table.column_batches(self.positions[0]):
            yield from values

    def captions(self, indices: list[int] | None = None) -> Iterator[Any]:
        """The caption value of every row (or of rows `indices`), read column-wise."""
        if self.table.raw:
            for i in range(len(self)) if indices is None else indices:
                yield self._values(i)[1]
            return
        present = [p for p in self.positions[1:] if p is not None]
        if not present:
            yield from itertools.repeat(None, len(self) if indices is None else len(indices))
            return
        if indices is None:
            columns = zip(*(self.table.column_batches(p) for p in present))
        else:
            columns = iter([tuple(self.table.take(indices, p) for p in present)])
        for batch in columns:
            for values in zip(*batch):
                yield _pool(list(values))

    def records(self) -> list[Record]:
        """Usable rows grouped by image (every caption of an image together), for evaluation."""
        by_image: dict[str, Record] = {}
        for index in range(len(self)):
            _, image, caption, others = self.row(index)
            captions = caption if isinstance(caption, list) else [caption]
            # non-text values (class indices in JSONL) are kept as they are, as labels
            captions = [c for c in captions if c is not None and (not isinstance(c, str) or _usable_text(c))]
            if not isinstance(image, str) or not image or not captions:
                continue
            path = self.image_path(image)
            if path in by_image:
                by_image[path].captions += [c for c in captions if c not in by_image[path].captions]
            else:
                by_image[path] = Record(path, captions, others)
        return list(by_image.values())


KEY_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _pool(captions: list[Any]) -> Any:
    """One caption column's value as it is; several columns' captions in one list (None when every one is)."""
    if len(captions) == 1:
        return captions[0]
    pooled = [c for v in captions if v is not None for c in (v if isinstance(v, list) else [v])]
    return pooled if any(v is not None for v in captions) else None


def _usable_text(text: str) -> bool:
    """Non-blank, valid UTF-8 (no surrogates) and within the field limit."""
    if not text.strip() or len(text) > FIELD_LIMIT:
        return False
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_records(path: str, image_key: str, caption_key: str, fmt: str = "",
                 settings: tuple[str, str] = ("data.image_key", "data.caption_key")) -> list[Record]:
    """Read a CSV/TSV/JSONL/Parquet table for evaluation: one Record per image with all its captions (list
    columns and repeated rows), image paths made absolute. Unusable rows are left out. `settings`: see TableSource."""
    records = TableSource(path, image_key, caption_key, fmt, settings).records()
    if not records:
        raise DataError(f"{path}: no usable rows (columns '{image_key}', '{caption_key}')")
    return records


SAMPLE_RUN = 256  # rows read together by a caption sample


def sample_runs(rows: int, limit: int, seed: int) -> list[int]:
    """`limit` of `rows` row indices drawn with `seed` as whole runs of `SAMPLE_RUN` consecutive rows, ascending. Rows
    drawn one by one would touch nearly every page of a large table's mapped caption column (200,000 rows of 10^7:
    most of its 1 GiB); runs touch about the sample's own size."""
    runs = -(-rows // SAMPLE_RUN)
    chosen = sorted(random.Random(seed).sample(range(runs), min(runs, -(-limit // SAMPLE_RUN))))
    picked = [i for r in chosen for i in range(r * SAMPLE_RUN, min((r + 1) * SAMPLE_RUN, rows))]
    if len(picked) > limit:  # the last run of the table may be short: trim from a random place, seeded
        drop = set(random.Random(seed + 1).sample(range(len(picked)), len(picked) - limit))
        picked = [i for k, i in enumerate(picked) if k not in drop]
    return picked


def iter_captions(path: str, caption_key: str = "caption", fmt: str = "",
                  setting: str = "data.caption_key", limit: int | None = None, seed: int = 0) -> Iterator[str]:
    """Every usable caption of a table (list columns flattened), or every non-empty line of a text file.
    `limit`: a table of more rows gives the captions of `limit` rows drawn with `seed` in runs of consecutive rows
    (`sample_runs`), in table order.
    `setting` names where `caption_key` came from, for messages."""
    if Path(path).suffix.lower() == ".txt" and not fmt:
        if Path(path).is_dir():
            raise DataError(f"{path} is a directory, not a text file of captions")
        if not Path(path).is_file():
            raise DataError(f"data file not found: {path}")
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from (line.strip() for line in f if line.strip())
        return
    # the caption column stands in for the image one
    key = caption_key.split(",")[0].strip() if "," in caption_key else caption_key
    table = TableSource(path, key, caption_key, fmt, (setting, setting))
    indices = None
    if limit is not None and len(table) > limit:
        indices = sample_runs(len(table), limit, seed)
    for caption in table.captions(indices):
        for c in caption if isinstance(caption, list) else [caption]:
            if isinstance(c, str) and _usable_text(c):
                yield c


# ----------------------------------------------------------------------------------------------------------------------
# HF datasets


def open_hf_dataset(path: str, split: str, split_setting: str = "data.split"):
    """A `save_to_disk` directory, an `imagefolder` directory (metadata.jsonl/csv), or `hf://<name>` on the hub.
    `split_setting` names the split's setting in messages (a config key, or a command's option)."""
    import datasets  # only HF sources need it

    if path.startswith("hf://"):
        return _load_hub_dataset(path[len("hf://"):], split)
    p = Path(path)
    if not p.is_dir():
        raise DataError(f"HF dataset directory not found: {path}")
    if (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: no split '{split}' (splits: {', '.join(ds)}); set {split_setting}")
            ds = ds[split]
        return ds
    if any(p.glob("metadata.jsonl")) or any(p.glob("metadata.csv")) or any(p.glob("*/metadata.*")):
        dd = datasets.load_dataset("imagefolder", data_dir=str(p))
        if split not in dd:
            raise DataError(f"{path}: no split '{split}' (splits: {', '.join(dd)}); set {split_setting}")
        return dd[split]
    raise DataError(f"{path}: neither a save_to_disk directory (dataset_dict.json/state.json) nor an imagefolder (metadata.jsonl/csv)")


def _load_hub_dataset(name: str, split: str):
    """A hub dataset by name; only from the local cache when the hub cannot be used (see `contrastive.encoders.hub`)."""
    import datasets

    from ..encoders.hub import HubUnavailable, load_from_hub

    try:  # not cached: datasets raises ConnectionError, FileNotFoundError or ValueError
        return load_from_hub(lambda: datasets.load_dataset(name, split=split), f"hf://{name}",
                             "save it with save_to_disk on a machine with network and give that folder",
                             misses=(OSError, ValueError))
    except HubUnavailable as e:
        raise DataError(str(e)) from None


class HFSource:
    """Rows of an HF dataset. Images are read undecoded (bytes or path) so a bad file is a skipped sample, not an
    exception inside `datasets`; a string column is taken as a path relative to the dataset directory."""

    def __init__(self, path: str, split: str, image_key: str, caption_key: str) -> None:
        import datasets

        ds = open_hf_dataset(path, split)
        for key in (image_key, caption_key):
            if key not in ds.column_names:
                raise DataError(f"{path}: no column '{key}' (columns: {', '.join(ds.column_names)}); set data.image_key/data.caption_key")
        if isinstance(ds.features[image_key], datasets.Image):
            ds = ds.cast_column(image_key, datasets.Image(decode=False))
        self.ds, self.path, self.split = ds, path, split
        self.root = Path(path) if not path.startswith("hf://") else Path(".")
        self.image_key, self.caption_key = image_key, caption_key

    def __len__(self) -> int:
        return len(self.ds)

    def where(self, index: int) -> str:
        return f"{self.path} [{self.split}] row {index}"

    def get(self, index: int) -> RawSample:
        row = self.ds[index]
        image, caption = row.get(self.image_key), row.get(self.caption_key)
        where = self.where(index)
        if isinstance(image, dict):
            data, file = image.get("bytes"), image.get("path")
            if data is not None:
                return RawSample(data, _as_list(caption), where, file or where)
            image = file
        if not isinstance(image, str) or not image or caption is None:
            raise BadSample("missing_columns", f"needs '{self.image_key}' and '{self.caption_key}'")
        path = image if Path(image).is_absolute() else str(self.root / image)
        return RawSample(path, _as_list(caption), f"{where} ({image})", path)


def _as_list(caption: Any) -> list[Any]:
    return list(caption) if isinstance(caption, (list, tuple)) else [caption]


def open_source(path: str, fmt: str, image_key: str, caption_key: str, split: str = "train") -> Source:
    """A map-style source for a table or HF dataset (`fmt` empty: detected from the path)."""
    fmt = fmt or detect_format(path)
    if fmt in TABLE_FORMATS:
        return TableSource(path, image_key, caption_key, fmt)
    if fmt == "hf":
        return HFSource(path, split, image_key, caption_key)
    raise DataError(f"format '{fmt}' is streamed, not indexed (use the shard loader)")
