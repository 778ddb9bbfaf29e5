"""Where samples come from: CSV/TSV/JSONL tables and HF `datasets` (map-style, indexed by row).

A source answers `len(source)` and `source.get(i) -> RawSample` (encoded image or path, captions, where it came
from). Row-level problems (missing columns, empty or non-UTF-8 captions) raise `BadSample` from `get`, so they are
skipped and counted like unreadable images. WebDataset shards are streams; see `shards.py`.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from .bad import BadSample
from ..errors import DataError

FORMATS = ("csv", "tsv", "jsonl", "hf", "webdataset")


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
    """CSV/TSV/JSONL rows of `image path (relative to the file), caption` (a caption column may hold a list).

    Bytes that are not UTF-8 are kept (as surrogates) so that only the affected row is bad, not the file.
    Repeated rows of one image are separate samples: training sees one caption per visit.
    `settings` name where the two column names came from (config keys, or a command's options), for messages.
    """

    def __init__(self, path: str, image_key: str, caption_key: str, fmt: str = "",
                 settings: tuple[str, str] = ("data.image_key", "data.caption_key")) -> None:
        p = Path(path)
        if p.is_dir():
            raise DataError(f"{path} is a directory, not a table file (CSV/TSV/JSONL)")
        if not p.is_file():
            raise DataError(f"data file not found: {path}")
        if p.stat().st_size == 0:
            raise DataError(f"{path} is empty (0 bytes): a table needs a header or JSON lines with "
                            f"'{image_key}' and '{caption_key}'")
        self.path, self.root = str(path), p.parent
        self.fmt = fmt or detect_format(path)
        if self.fmt not in ("csv", "tsv", "jsonl"):
            raise DataError(f"format '{self.fmt}' is not a table format (csv, tsv, jsonl)")
        self.image_key, self.caption_key, self.settings = image_key, caption_key, settings
        # (line number, image, caption(s), other fields) per row; None marks a missing or unparseable value
        self.rows: list[tuple[int, Any, Any, dict]] = []
        try:
            with p.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
                if self.fmt == "jsonl":
                    self._read_jsonl(f)
                else:
                    self._read_csv(f)
        except csv.Error as e:  # NUL bytes, oversized fields: the file is not a table we can read
            raise DataError(f"{path}: malformed table ({e})") from None
        if not self.rows:
            raise DataError(f"{path}: no rows")

    def _read_jsonl(self, f) -> None:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                self.rows.append((n, None, None, {}))
                continue
            others = {k: v for k, v in row.items() if k not in (self.image_key, self.caption_key)}
            self.rows.append((n, row.get(self.image_key), row.get(self.caption_key), others))

    def _read_csv(self, f) -> None:
        reader = csv.DictReader(f, delimiter="," if self.fmt == "csv" else "\t")
        header = reader.fieldnames or []
        if not any(h.strip() for h in header):
            raise DataError(f"{self.path}: the first line is blank; it must be the header naming the columns")
        for key, setting in zip((self.image_key, self.caption_key), self.settings):
            if key not in header:
                raise DataError(f"{self.path}: no column '{key}' (columns: {', '.join(header)}); set {setting}")
        start = end = reader.line_num  # the first and last line of the latest row
        row: dict = {}
        for row in reader:
            start, end = end + 1, reader.line_num
            others = {k: v for k, v in row.items() if k not in (self.image_key, self.caption_key) and k is not None}
            self.rows.append((end, row.get(self.image_key), row.get(self.caption_key), others))
        # a quote never closed swallows the rest of the file into one value of the last row
        if end > start or any(v is None or (isinstance(v, str) and v.endswith(("\n", "\r"))) for v in row.values()):
            self._check_quote_closed(f, start)

    def _check_quote_closed(self, f, start: int) -> None:
        """Raise DataError when the row beginning at line `start` (the file's last) opens a quote it never closes."""
        f.seek(0)
        tail = itertools.islice(f, start - 1, None)
        try:
            for _ in csv.reader(tail, delimiter="," if self.fmt == "csv" else "\t", strict=True):
                pass
        except csv.Error as e:
            if "end of data" in str(e):
                raise DataError(f"{self.path} line {start}: a quoted field opens here and is never closed "
                                "(unterminated \"); the rest of the file was read as one value") from None

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, index: int) -> str:
        return f"{self.path} row {self.rows[index][0]}"

    def get(self, index: int) -> RawSample:
        line, image, caption, _ = self.rows[index]
        where = self.where(index)
        if not isinstance(image, str) or not image or caption is None:
            raise BadSample("missing_columns", f"needs '{self.image_key}' and '{self.caption_key}'")
        path = str(self.root / image)
        return RawSample(path, caption if isinstance(caption, list) else [caption], f"{where} ({image})", path)

    def records(self) -> list[Record]:
        """Usable rows grouped by image (every caption of an image together), for evaluation."""
        by_image: dict[str, Record] = {}
        for line, image, caption, others in self.rows:
            captions = caption if isinstance(caption, list) else [caption]
            # non-text values (class indices in JSONL) are kept as they are, as labels
            captions = [c for c in captions if c is not None and (not isinstance(c, str) or (c.strip() and _is_utf8(c)))]
            if not isinstance(image, str) or not image or not captions:
                continue
            path = str(self.root / image)
            if path in by_image:
                by_image[path].captions += [c for c in captions if c not in by_image[path].captions]
            else:
                by_image[path] = Record(path, captions, others)
        return list(by_image.values())


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_records(path: str, image_key: str, caption_key: str, fmt: str = "",
                 settings: tuple[str, str] = ("data.image_key", "data.caption_key")) -> list[Record]:
    """Read a CSV/TSV/JSONL table for evaluation: one Record per image with all its captions (list columns and
    repeated rows), image paths made absolute. Unusable rows are left out. `settings`: see TableSource."""
    records = TableSource(path, image_key, caption_key, fmt, settings).records()
    if not records:
        raise DataError(f"{path}: no usable rows (columns '{image_key}', '{caption_key}')")
    return records


def iter_captions(path: str, caption_key: str = "caption", fmt: str = "",
                  setting: str = "data.caption_key") -> Iterator[str]:
    """Every usable caption of a table (list columns flattened), or every non-empty line of a text file.
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
    table = TableSource(path, caption_key, caption_key, fmt, (setting, setting))
    for _, _, caption, _ in table.rows:
        for c in caption if isinstance(caption, list) else [caption]:
            if isinstance(c, str) and c.strip() and _is_utf8(c):
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
    if fmt in ("csv", "tsv", "jsonl"):
        return TableSource(path, image_key, caption_key, fmt)
    if fmt == "hf":
        return HFSource(path, split, image_key, caption_key)
    raise DataError(f"format '{fmt}' is streamed, not indexed (use the shard loader)")
