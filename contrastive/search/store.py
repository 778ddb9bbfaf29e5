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
after the last of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..interop.checkpoint import atomic_write
from ..errors import DataError

FORMAT_VERSION = 1
MANIFEST, METADATA, SHARDS = "manifest.json", "metadata.parquet", "shards"
DTYPES = {"float16": np.float16, "float32": np.float32}
METADATA_COLUMNS = ("id", "row", "path", "caption", "shard", "offset")


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
    return manifest


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
    parts = [pq.read_table(shard_stem(emb, s["shard"]).with_suffix(".parquet")) for s in manifest["shards"]]
    return pa.concat_tables(parts) if parts else metadata_schema().empty_table()


def write_metadata(emb: Path, manifest: dict[str, Any]) -> None:
    """metadata.parquet: every listed shard's rows in one file, for pandas / datasets."""
    import pyarrow.parquet as pq

    table = read_metadata(emb, manifest)
    atomic_write(emb / METADATA, lambda f: pq.write_table(table, f))


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
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: missing or unreadable embeddings ({e}); rerun contrastive embed") from None
        if part.ndim != 2 or part.shape != (s["embedded"], dim):
            raise DataError(f"{path}: shape {part.shape}, the manifest says ({s['embedded']}, {dim})")
        parts.append(part)
    if not parts:
        return np.zeros((0, dim), np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)
