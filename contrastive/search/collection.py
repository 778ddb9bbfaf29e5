"""What a collection of images to embed is: a table, a folder of images, an HF dataset, or WebDataset shards.

A collection answers `len(c)` and `c.item(row) -> Item` for rows 0..len-1 in a fixed order, so an embedding job
can be cut into row ranges and resumed. Its `root` is fixed when it is opened (the table's folder, the image or
dataset folder, the shards' common folder, or an explicit `root`), never derived from the rows: a row whose file
resolves (symlinks followed) outside the root raises `BadSample("outside_root")`, so it is skipped and counted as
training skips bad samples. `Item.path` names the image relative to the root or, for shard members and HF rows
without a file, a key; `Item.image` is what `data.decode_image` reads (a path or the encoded bytes).
`fingerprint(c, start, end)` hashes what rows start..end-1 are (paths and captions, not pixels), so a resumed job
can tell that the collection changed under it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..data.bad import BadSample
from ..data.shards import DEFAULT_CAPTION_EXTS, DEFAULT_IMAGE_EXTS, expand_shards
from ..data.sources import TableSource, detect_format, open_hf_dataset
from ..errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class Item:
    image: str | bytes  # a path, or the encoded file
    path: str  # relative to the collection root (POSIX), or a key for images that are no file
    caption: str | None  # the first usable caption, when the collection has captions


class Collection(Protocol):
    root: Path  # every image file of the collection lies in it (absolute)
    kind: str  # table | folder | hf | shards
    has_captions: bool

    def __len__(self) -> int: ...

    def item(self, row: int) -> Item: ...

    def where(self, row: int) -> str:
        """The row for messages: "<file> row <n> (<image>)", "<shard> member <name>", ..."""

    def identities(self, start: int, end: int) -> list[Any]:
        """What rows start..end-1 are, cheaply (paths, keys, captions; no pixels), JSON-serialisable."""


def first_caption(value: Any) -> str | None:
    """The first non-empty UTF-8 caption of a cell (a string or a list), else None."""
    for c in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(c, bytes):
            try:
                c = c.decode("utf-8")
            except UnicodeDecodeError:
                continue
        if isinstance(c, str) and c.strip():
            try:
                c.encode("utf-8")
            except UnicodeEncodeError:  # surrogates: bytes of the file that were not UTF-8
                continue
            return c
    return None


def fixed_root(root: str | Path | None, default: str | Path) -> Path:
    """The collection root: `root` when given (it must be a folder), else `default`; absolute."""
    if root is None:
        return Path(os.path.abspath(default))
    if not Path(root).is_dir():
        raise DataError(f"collection root {root}: no such folder (--root)")
    return Path(os.path.abspath(root))


def inside(path: str, root: Path, real_root: Path) -> str:
    """`path` (absolute) relative to `root` as POSIX, when it lies inside it once symlinks are followed; else
    BadSample("outside_root"). `real_root` is `root.resolve()`."""
    real = Path(path).resolve()
    if not real.is_relative_to(real_root):
        raise BadSample("outside_root", f"resolves to {real}, outside the root {root}")
    return Path(os.path.relpath(path, root)).as_posix()


def fingerprint(collection: Collection, start: int, end: int) -> str:
    """sha256 of what rows start..end-1 of `collection` are (see `Collection.identities`)."""
    rows = collection.identities(start, end)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":"), default=str).encode()).hexdigest()


class TableCollection:
    """Rows of a CSV/TSV/JSONL table; image paths relative to the table. The caption column is optional. The
    root is the table's folder unless given."""

    kind = "table"

    def __init__(self, path: str, image_key: str, caption_key: str, root: str | Path | None = None) -> None:
        settings = ("--image-key", "--caption-key")
        try:
            self.table = TableSource(path, image_key, caption_key, settings=settings)
            self.has_captions = True
        except DataError as e:
            if f"column '{caption_key}'" not in str(e):
                raise
            self.table = TableSource(path, image_key, image_key, settings=settings)  # no caption column: images only
            self.has_captions = False
        if self.has_captions and not any(first_caption(c) for c in self.table.captions()):
            self.has_captions = False  # JSONL rows without the key
        if not any(isinstance(im, str) and im for im in self.table.images()):
            raise DataError(f"{path}: no row names an image in column '{image_key}'")
        self.root = fixed_root(root, os.path.abspath(self.table.root))
        self.real_root = self.root.resolve()

    def __len__(self) -> int:
        return len(self.table)

    def item(self, row: int) -> Item:
        _, image, caption, _ = self.table.row(row)
        if not isinstance(image, str) or not image:
            raise BadSample("missing_columns", f"needs '{self.table.image_key}'")
        full = os.path.abspath(self.table.image_path(image))
        caption = first_caption(caption) if self.has_captions else None
        return Item(full, inside(full, self.root, self.real_root), caption)

    def where(self, row: int) -> str:
        image = self.table.row(row)[1]
        return self.table.where(row) + (f" ({image})" if isinstance(image, str) and image else "")

    def identities(self, start: int, end: int) -> list[Any]:
        rows = (self.table.row(i) for i in range(start, min(end, len(self.table))))
        return [[r[1], r[2] if self.has_captions else None] for r in rows]


class FolderCollection:
    """Every image file under a folder (by suffix, recursively, sorted by path); no captions."""

    kind = "folder"
    has_captions = False

    def __init__(self, path: str, root: str | Path | None = None) -> None:
        self.folder = Path(os.path.abspath(path))
        self.root = fixed_root(root, self.folder)
        self.real_root = self.root.resolve()
        self.files = sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*")
                            if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.parts))

    def __len__(self) -> int:
        return len(self.files)

    def item(self, row: int) -> Item:
        full = str(self.folder / self.files[row])
        return Item(full, inside(full, self.root, self.real_root), None)

    def where(self, row: int) -> str:
        return f"{self.folder} file {self.files[row]}"

    def identities(self, start: int, end: int) -> list[Any]:
        return self.files[start:end]


class HFCollection:
    """Rows of an HF dataset folder (`save_to_disk` or `imagefolder`); images read undecoded."""

    kind = "hf"

    def __init__(self, path: str, split: str, image_key: str, caption_key: str,
                 root: str | Path | None = None) -> None:
        import datasets

        ds = open_hf_dataset(path, split, "--split")
        if image_key not in ds.column_names:
            raise DataError(f"{path}: no column '{image_key}' (columns: {', '.join(ds.column_names)}); set --image-key")
        if isinstance(ds.features[image_key], datasets.Image):
            ds = ds.cast_column(image_key, datasets.Image(decode=False))
        self.has_captions = caption_key in ds.column_names
        self.ds, self.path, self.split = ds, path, split
        self.root = fixed_root(root, path)
        self.real_root = self.root.resolve()
        self.image_key, self.caption_key = image_key, caption_key

    def __len__(self) -> int:
        return len(self.ds)

    def item(self, row: int) -> Item:
        record = self.ds[row]
        image = record.get(self.image_key)
        caption = first_caption(record.get(self.caption_key)) if self.has_captions else None
        if isinstance(image, dict):
            if image.get("bytes") is not None:
                return Item(image["bytes"], f"{self.split}/{row}", caption)
            image = image.get("path")
        if not isinstance(image, str) or not image:
            raise BadSample("missing_columns", f"needs '{self.image_key}'")
        full = os.path.abspath(image if os.path.isabs(image) else Path(self.path) / image)
        return Item(full, inside(full, self.root, self.real_root), caption)

    def where(self, row: int) -> str:
        return f"{self.path} [{self.split}] row {row}"

    def identities(self, start: int, end: int) -> list[Any]:
        columns = [self.image_key] + ([self.caption_key] if self.has_captions else [])
        batch = self.ds.select_columns(columns)[start:end]  # Arrow slices: no image decoded
        out = []
        for n, image in enumerate(batch[self.image_key]):
            if isinstance(image, dict):  # files by path, bytes by their hash
                data = image.get("bytes")
                image = image.get("path") or (hashlib.sha256(data).hexdigest() if data is not None else None)
            out.append([image, batch[self.caption_key][n] if self.has_captions else None])
        return out


class ShardCollection:
    """Members of local WebDataset shards, read by their byte offsets (an index of the tar headers, made once)."""

    kind = "shards"

    def __init__(self, pattern: str, root: str | Path | None = None) -> None:
        urls = expand_shards(pattern)
        if any("://" in u or u.startswith("pipe:") for u in urls):
            raise DataError("embedding reads local shards only; download remote shards first")
        self.root = fixed_root(root, os.path.commonpath([os.path.dirname(os.path.abspath(u)) for u in urls]))
        self.real_root = self.root.resolve()
        for url in urls:
            try:
                inside(os.path.abspath(url), self.root, self.real_root)
            except BadSample as e:
                raise DataError(f"shard {url} {e.detail}; choose a --root holding every shard") from None
        image_exts, caption_exts = DEFAULT_IMAGE_EXTS.split(";"), DEFAULT_CAPTION_EXTS.split(";")
        # (shard, member name, data offset, size) of each sample's image, and its caption
        self.members: list[tuple[str, str, int, int]] = []
        self.captions: list[str | None] = []
        for url in urls:
            self._index(os.path.abspath(url), image_exts, caption_exts)
        self.has_captions = any(c is not None for c in self.captions)

    def _index(self, url: str, image_exts: list[str], caption_exts: list[str]) -> None:
        groups: dict[str, dict[str, tarfile.TarInfo]] = {}
        try:
            with tarfile.open(url, "r:") as tar:
                for m in tar.getmembers():
                    if m.isfile():
                        folder, _, base = m.name.rpartition("/")
                        stem, _, ext = base.partition(".")
                        groups.setdefault(f"{folder}/{stem}" if folder else stem, {})[ext.lower()] = m
                texts = {}
                for key, group in groups.items():
                    cap = next((group[e] for e in caption_exts if e in group), None)
                    texts[key] = first_caption(tar.extractfile(cap).read()) if cap is not None else None
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"{url}: not a readable tar shard ({e})") from None
        for key, group in groups.items():
            image = next((group[e] for e in image_exts if e in group), None)
            if image is None:
                continue
            self.members.append((Path(os.path.relpath(url, self.root)).as_posix(), image.name, image.offset_data,
                                 image.size))
            self.captions.append(texts[key])

    def __len__(self) -> int:
        return len(self.members)

    def item(self, row: int) -> Item:
        shard, name, offset, size = self.members[row]
        inside(str(self.root / shard), self.root, self.real_root)  # replaced by a link leading out since?
        with open(self.root / shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return Item(data, f"{shard}/{name}", self.captions[row])

    def where(self, row: int) -> str:
        return f"{self.members[row][0]} member {self.members[row][1]}"

    def identities(self, start: int, end: int) -> list[Any]:
        return [[*m, c] for m, c in zip(self.members[start:end], self.captions[start:end])]


def open_collection(data: str, *, image_key: str = "image", caption_key: str = "caption", split: str = "train",
                    root: str | Path | None = None) -> Collection:
    """A table (.csv/.tsv/.jsonl), an HF dataset folder, a folder of images, or shards (`a.tar`, `{000..009}.tar`);
    `root` (default: see the module) is the folder no image may lead out of."""
    p = Path(data)
    if p.is_dir():
        is_hf = any((p / f).is_file() for f in ("dataset_dict.json", "state.json", "metadata.jsonl", "metadata.csv"))
        collection = HFCollection(data, split, image_key, caption_key, root) if is_hf else FolderCollection(data, root)
    elif data.endswith(".tar") or "{" in data or "::" in data:
        collection = ShardCollection(data, root)
    elif not p.exists():
        raise DataError(f"--data {data}: no such file or folder")
    else:
        fmt = detect_format(data)
        if fmt not in ("csv", "tsv", "jsonl", "parquet"):
            raise DataError(f"--data {data}: expected a table (.csv, .tsv, .jsonl, .parquet), a folder or .tar shards")
        collection = TableCollection(data, image_key, caption_key, root)
    if len(collection) == 0:
        raise DataError(f"--data {data}: the collection is empty (no images found)")
    return collection


def describe(collection: Collection, data: str) -> dict[str, Any]:
    """What the manifest records about a collection (enough to open it again)."""
    return {"source": os.path.abspath(data) if "{" not in data else data, "kind": collection.kind,
            "root": str(collection.root), "rows": len(collection), "has_captions": collection.has_captions}
