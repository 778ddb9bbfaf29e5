"""The on-disk format of an embedded collection (an `EMB` folder):

    manifest.json              model (name, source, checkpoint, weights digest, embedding width), dtype, the
                               collection (source, kind, root, keys), counts, bad samples, the shards written so far
    shards/NNNNN.images.npy    (n, D) normalised image embeddings of the shard, float16 or float32
    shards/NNNNN.texts.npy     (n, D) caption embeddings aligned with the images (zeros where a row has no caption);
                               only when the collection has captions
    shards/NNNNN.parquet       the shard's metadata rows
    metadata.parquet           every shard's rows in one table: id (the embedding's row = the index id), row (the
                               collection row), path, caption, shard, offset (the row within the shard)
    index.faiss, index.json    the nearest-neighbour index and its report (`contrastive index`)

A shard covers a contiguous range of collection rows; bad rows inside it are counted, not stored. Each file is
written to a temporary name, fsynced and renamed, and the manifest, which alone says which shards exist, is
replaced after them: a kill at any point leaves the shards the manifest lists intact, and a relaunch continues
after the last of them. Reading checks what it reads (the manifest's keys and types, each shard's rows and
arrays) and reports a damaged folder in one line naming the file (DataError).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from typing_extensions import NotRequired, TypedDict  # what pydantic reads on Python < 3.12

from ..errors import DataError, error_line
from ..interop.checkpoint import atomic_write

FORMAT_VERSION = 1
MANIFEST, METADATA, SHARDS = "manifest.json", "metadata.parquet", "shards"
DTYPES = {"float16": np.float16, "float32": np.float32}
METADATA_COLUMNS = ("id", "row", "path", "caption", "shard", "offset")


class ModelInfo(TypedDict):
    name: str
    source: str
    checkpoint: str
    digest: str
    embed_dim: int


class CollectionInfo(TypedDict):
    source: str
    kind: Literal["table", "folder", "hf", "shards"]
    root: str
    rows: int
    has_captions: bool
    image_key: str
    caption_key: str
    split: str


class ShardInfo(TypedDict):
    shard: int
    rows: list[int]  # [first row, end row)
    embedded: int
    bad: list[dict[str, Any]]
    fingerprint: NotRequired[str]  # collection.fingerprint of the rows (absent in folders from before it)


class Counts(TypedDict):
    rows: int
    embedded: int
    captions: int
    bad: int


class BadInfo(TypedDict):
    loads: int
    skips: int
    counts: dict[str, int]
    first: list[str]


class Manifest(TypedDict):
    format: int
    model: ModelInfo
    dtype: Literal["float16", "float32"]
    collection: CollectionInfo
    shard_size: int
    shards: list[ShardInfo]
    next_row: int
    complete: bool
    counts: Counts
    bad: BadInfo


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def read_manifest(emb: str | Path) -> dict[str, Any]:
    path = Path(emb) / MANIFEST
    if not path.is_file():
        raise DataError(f"{emb}: no embeddings here (no {MANIFEST}); make them with contrastive embed --output {emb}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not a valid manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: not a manifest of this version (format {FORMAT_VERSION})")
    check_manifest(path, manifest)
    return manifest


def check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """DataError naming the first missing key or wrong value of a manifest (its types, and its shards in order)."""
    import pydantic

    try:
        pydantic.TypeAdapter(Manifest).validate_python(manifest, strict=True)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(k) for k in first["loc"]) or "manifest"
        raise DataError(f"{path}: damaged manifest ({where}: {first['msg'].lower()}); embed again into a new "
                        "--output") from None
    end = 0
    for n, s in enumerate(manifest["shards"]):
        if s["shard"] != n or len(s["rows"]) != 2 or s["rows"][0] != end or not end <= s["rows"][1]:
            raise DataError(f"{path}: damaged manifest (shards.{n}: shard {s['shard']} rows {s['rows']} do not follow "
                            f"row {end}); embed again into a new --output")
        end = s["rows"][1]
    if end != manifest["next_row"] or sum(s["embedded"] for s in manifest["shards"]) != manifest["counts"]["embedded"]:
        raise DataError(f"{path}: damaged manifest (next_row or counts.embedded disagree with the shards); "
                        "embed again into a new --output")


def shard_stem(emb: Path, shard: int) -> Path:
    return emb / SHARDS / f"{shard:05d}"


def write_shard(emb: Path, shard: int, images: np.ndarray, texts: np.ndarray | None, rows: dict[str, list]) -> None:
    """Write one shard's arrays and metadata rows (atomically, file by file; the manifest commits them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    stem = shard_stem(emb, shard)
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(stem.with_suffix(".images.npy"), lambda f: np.save(f, images))
    if texts is not None:
        atomic_write(stem.with_suffix(".texts.npy"), lambda f: np.save(f, texts))
    table = pa.table({k: rows[k] for k in METADATA_COLUMNS}, schema=metadata_schema())
    atomic_write(stem.with_suffix(".parquet"), lambda f: pq.write_table(table, f))


def metadata_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.int64()), ("row", pa.int64()), ("path", pa.string()), ("caption", pa.string()),
                      ("shard", pa.int32()), ("offset", pa.int32())])


def read_metadata(emb: str | Path, manifest: dict[str, Any]):
    """The metadata rows of the shards the manifest lists, as one pyarrow Table (ordered by id)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    emb = Path(emb)
    parts = []
    for s in manifest["shards"]:
        path = shard_stem(emb, s["shard"]).with_suffix(".parquet")
        try:
            part = pq.read_table(path, schema=metadata_schema())
        except (OSError, pa.ArrowException) as e:  # missing, cut, garbage, other columns
            raise DataError(f"{path}: missing or unreadable metadata ({problem(e)}); rerun contrastive embed into "
                            "a new --output") from None
        if part.num_rows != s["embedded"]:
            raise DataError(f"{path}: {part.num_rows} rows, the manifest says {s['embedded']}")
        parts.append(part)
    return pa.concat_tables(parts) if parts else metadata_schema().empty_table()


def write_metadata(emb: Path, manifest: dict[str, Any]) -> None:
    """metadata.parquet: every listed shard's rows in one file, for pandas / datasets."""
    import pyarrow.parquet as pq

    table = read_metadata(emb, manifest)
    atomic_write(emb / METADATA, lambda f: pq.write_table(table, f))


def problem(e: BaseException) -> str:
    """What went wrong reading a file, in a few words."""
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return error_line(e, 200)


def load_vectors(emb: str | Path, manifest: dict[str, Any], which: str = "images") -> np.ndarray:
    """(N, D) float32: the image (or caption, `which="texts"`) embeddings of every listed shard, in id order."""
    emb = Path(emb)
    if which == "texts" and not manifest["collection"]["has_captions"]:
        raise DataError(f"{emb}: the collection has no captions to search")
    dim = manifest["model"]["embed_dim"]
    parts = []
    for s in manifest["shards"]:
        path = shard_stem(emb, s["shard"]).with_suffix(f".{which}.npy")
        try:
            part = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:  # missing, cut, not an array file (numpy calls that "pickled data")
            reason = "not a .npy array file" if "pickled" in str(e) else problem(e)
            raise DataError(f"{path}: missing or unreadable embeddings ({reason}); rerun contrastive embed into a "
                            "new --output") from None
        if part.dtype not in (np.float16, np.float32) or part.shape != (s["embedded"], dim):
            raise DataError(f"{path}: {part.dtype} array of shape {part.shape}, the manifest says "
                            f"({s['embedded']}, {dim}) {manifest['dtype']}")
        parts.append(part)
    if not parts:
        return np.zeros((0, dim), np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
