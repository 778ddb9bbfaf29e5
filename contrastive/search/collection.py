"""What a collection of images to embed is: a table, a folder of images, an HF dataset, or WebDataset shards.

A collection answers `len(c)` and `c.item(row) -> Item` for rows 0..len-1 in a fixed order, so an embedding job
can be cut into row ranges and resumed. `Item.path` names the image relative to `c.root` (the folder every file of
the collection lies in) or, for shard members and HF rows without a file, a key; `Item.image` is what
`data.decode_image` reads (a path or the encoded bytes). A row that cannot give an image raises `BadSample`, so it
is skipped and counted as training does.
"""

from __future__ import annotations

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
    where: str  # "<file> row <n>" for messages


class Collection(Protocol):
    root: Path  # every image file of the collection lies in it
    kind: str  # table | folder | hf | shards
    has_captions: bool

    def __len__(self) -> int: ...

    def item(self, row: int) -> Item: ...


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


def _relative(path: str, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


class TableCollection:
    """Rows of a CSV/TSV/JSONL table; image paths relative to the table. The caption column is optional."""

    kind = "table"

    def __init__(self, path: str, image_key: str, caption_key: str) -> None:
        try:
            self.table = TableSource(path, image_key, caption_key)
            self.has_captions = True
        except DataError as e:
            if f"column '{caption_key}'" not in str(e):
                raise
            self.table = TableSource(path, image_key, image_key)  # no caption column: images only
            self.has_captions = False
        rows = self.table.rows
        if self.has_captions and not any(first_caption(r[2]) for r in rows):
            self.has_captions = False  # JSONL rows without the key
        files = [os.path.abspath(self.table.root / r[1]) for r in rows if isinstance(r[1], str) and r[1]]
        if not files:
            raise DataError(f"{path}: no row names an image in column '{image_key}'")
        self.root = Path(os.path.commonpath([os.path.dirname(f) for f in files]))

    def __len__(self) -> int:
        return len(self.table)

    def item(self, row: int) -> Item:
        _, image, caption, _ = self.table.rows[row]
        where = self.table.where(row)
        if not isinstance(image, str) or not image:
            raise BadSample("missing_columns", f"needs '{self.table.image_key}'")
        full = os.path.abspath(self.table.root / image)
        return Item(full, _relative(full, self.root), first_caption(caption) if self.has_captions else None,
                    f"{where} ({image})")


class FolderCollection:
    """Every image file under a folder (by suffix, recursively, sorted by path); no captions."""

    kind = "folder"
    has_captions = False

    def __init__(self, path: str) -> None:
        self.root = Path(os.path.abspath(path))
        self.files = sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                            if p.suffix.lower() in IMAGE_SUFFIXES and not any(part.startswith(".") for part in p.parts))

    def __len__(self) -> int:
        return len(self.files)

    def item(self, row: int) -> Item:
        rel = self.files[row]
        return Item(str(self.root / rel), rel, None, f"{self.root} file {rel}")


class HFCollection:
    """Rows of an HF dataset folder (`save_to_disk` or `imagefolder`); images read undecoded."""

    kind = "hf"

    def __init__(self, path: str, split: str, image_key: str, caption_key: str) -> None:
        import datasets

        ds = open_hf_dataset(path, split)
        if image_key not in ds.column_names:
            raise DataError(f"{path}: no column '{image_key}' (columns: {', '.join(ds.column_names)}); set --image-key")
        if isinstance(ds.features[image_key], datasets.Image):
            ds = ds.cast_column(image_key, datasets.Image(decode=False))
        self.has_captions = caption_key in ds.column_names
        self.ds, self.path, self.split = ds, path, split
        self.root = Path(os.path.abspath(path))
        self.image_key, self.caption_key = image_key, caption_key

    def __len__(self) -> int:
        return len(self.ds)

    def item(self, row: int) -> Item:
        record = self.ds[row]
        image = record.get(self.image_key)
        caption = first_caption(record.get(self.caption_key)) if self.has_captions else None
        where = f"{self.path} [{self.split}] row {row}"
        if isinstance(image, dict):
            if image.get("bytes") is not None:
                return Item(image["bytes"], f"{self.split}/{row}", caption, where)
            image = image.get("path")
        if not isinstance(image, str) or not image:
            raise BadSample("missing_columns", f"needs '{self.image_key}'")
        full = image if os.path.isabs(image) else os.path.abspath(self.root / image)
        return Item(full, _relative(full, self.root), caption, f"{where} ({image})")


class ShardCollection:
    """Members of local WebDataset shards, read by their byte offsets (an index of the tar headers, made once)."""

    kind = "shards"

    def __init__(self, pattern: str) -> None:
        urls = expand_shards(pattern)
        if any("://" in u or u.startswith("pipe:") for u in urls):
            raise DataError("embedding reads local shards only; download remote shards first")
        self.root = Path(os.path.commonpath([os.path.dirname(os.path.abspath(u)) for u in urls]))
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
            self.members.append((_relative(url, self.root), image.name, image.offset_data, image.size))
            self.captions.append(texts[key])

    def __len__(self) -> int:
        return len(self.members)

    def item(self, row: int) -> Item:
        shard, name, offset, size = self.members[row]
        with open(self.root / shard, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return Item(data, f"{shard}/{name}", self.captions[row], f"{shard} member {name}")


def open_collection(data: str, *, image_key: str = "image", caption_key: str = "caption",
                    split: str = "train") -> Collection:
    """A table (.csv/.tsv/.jsonl), an HF dataset folder, a folder of images, or shards (`a.tar`, `{000..009}.tar`)."""
    p = Path(data)
    if p.is_dir():
        is_hf = any((p / f).is_file() for f in ("dataset_dict.json", "state.json", "metadata.jsonl", "metadata.csv"))
        collection = HFCollection(data, split, image_key, caption_key) if is_hf else FolderCollection(data)
    elif data.endswith(".tar") or "{" in data or "::" in data:
        collection = ShardCollection(data)
    elif not p.exists():
        raise DataError(f"--data {data}: no such file or folder")
    else:
        fmt = detect_format(data)
        if fmt not in ("csv", "tsv", "jsonl"):
            raise DataError(f"--data {data}: expected a table (.csv, .tsv, .jsonl), a folder or .tar shards")
        collection = TableCollection(data, image_key, caption_key)
    if len(collection) == 0:
        raise DataError(f"--data {data}: the collection is empty (no images found)")
    return collection


def describe(collection: Collection, data: str) -> dict[str, Any]:
    """What the manifest records about a collection (enough to open it again)."""
    return {"source": os.path.abspath(data) if "{" not in data else data, "kind": collection.kind,
            "root": str(collection.root), "rows": len(collection), "has_captions": collection.has_captions}
