"""Query an embedded collection: `Index.load(EMB).search_text("a red circle", k=10)` / `.search_image(path, k)`.

Scores are cosine similarities (inner products of normalised embeddings). Images are found through the faiss index
`contrastive index` saved (an exact one is built on the fly when there is none, or when it is stale); captions, when
the collection has them, through an exact index over the caption embeddings.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.bad import REASONS, BadSample
from ..data.images import decode_image, to_rgb
from ..errors import CheckpointError, DataError
from . import store
from .collection import open_collection
from .embed import Encoder, torch_encoder
from .index import build_index, load_collection_index

TARGETS = ("images", "captions")


@dataclass
class Hit:
    rank: int  # 1 = best
    id: int  # embedding id (the metadata row)
    row: int  # row of the collection (table row, file number, shard member)
    path: str  # image path relative to the collection root, or a key for images that are no file
    caption: str | None
    score: float  # cosine similarity to the query

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Index:
    """An embedded collection ready to query: metadata, the image index, and the model that embedded it."""

    def __init__(self, emb: Path, manifest: dict[str, Any], encoder: Encoder) -> None:
        self.emb, self.manifest, self.encoder = emb, manifest, encoder
        table = store.read_metadata(emb, manifest)  # DataError naming a missing or damaged shard file
        self.rows: list[int] = table.column("row").to_pylist()
        self.paths: list[str] = table.column("path").to_pylist()
        self.captions: list[str | None] = table.column("caption").to_pylist()
        self.vectors = store.load_vectors(emb, manifest)  # (N, D) float32
        self.image_index, self.kind = load_collection_index(emb, manifest, self.vectors)
        self._caption_index = None  # (faiss index, ids of the rows with a caption), built on first use
        self._collection = None

    @classmethod
    def load(cls, emb: str | Path, *, checkpoint: str | Path | None = None, encoder: Encoder | None = None,
             device: str = "cpu", precision: str = "auto") -> Index:
        """Open `emb` with the model recorded in its manifest (no network), or with `checkpoint` / `encoder`,
        which must be that model (the same weights digest; an encoder without a digest: the same width)."""
        emb = Path(emb)
        manifest = store.read_manifest(emb)
        recorded = manifest["model"]
        if encoder is None:
            source = checkpoint if checkpoint is not None else recorded["checkpoint"]
            if checkpoint is None and not Path(source).exists():
                raise CheckpointError(f"{emb} was embedded with {recorded['name']} from {source}, which is gone; "
                                      "pass the same model with --checkpoint")
            encoder = torch_encoder(source, device=device, precision=precision)
        if encoder.digest and encoder.digest != recorded["digest"]:
            raise CheckpointError(f"{emb} was embedded with another model ({recorded['name']} from "
                                  f"{recorded['source']}); {encoder.source or 'this model'} has other weights")
        if encoder.embed_dim != recorded["embed_dim"]:
            raise CheckpointError(f"{emb} holds embeddings of width {recorded['embed_dim']}, the model gives "
                                  f"{encoder.embed_dim}")
        if manifest["counts"]["embedded"] == 0:
            raise DataError(f"{emb}: no embeddings yet; run contrastive embed to completion first")
        return cls(emb, manifest, encoder)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def root(self) -> Path:
        """The folder every image file of the collection lies in."""
        return Path(self.manifest["collection"]["root"])

    @property
    def has_captions(self) -> bool:
        return bool(self.manifest["collection"]["has_captions"])

    # ------------------------------------------------------------------------------------------------------------------
    # queries

    def embed_text(self, text: str) -> np.ndarray:
        """(D,) float32 normalised embedding of a text query."""
        if not isinstance(text, str) or not text.strip():
            raise DataError("the text query is empty")
        return self.encoder.encode_texts([text])[0].numpy()

    def embed_image(self, image: str | Path | Image.Image) -> np.ndarray:
        """(D,) float32 normalised embedding of an image query (a path, or a PIL image)."""
        if isinstance(image, Image.Image):
            img = to_rgb(image)
        else:
            try:
                img = decode_image(str(image))
            except BadSample as e:
                raise DataError(f"query image {image}: {REASONS[e.reason]}") from None
        pixels = self.encoder.preprocess(img)[None]  # (1, 3, S, S)
        return self.encoder.encode_images(pixels)[0].numpy()

    def search_text(self, text: str, k: int = 10, target: str = "images") -> list[Hit]:
        return self.search_vector(self.embed_text(text), k, target)

    def search_image(self, image: str | Path | Image.Image, k: int = 10, target: str = "images") -> list[Hit]:
        return self.search_vector(self.embed_image(image), k, target)

    def search_vector(self, vector: np.ndarray | torch.Tensor, k: int = 10, target: str = "images") -> list[Hit]:
        """The k best images (or captions) for a (D,) query embedding, best first."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DataError(f"k must be an integer >= 1, got {k!r}")
        if target not in TARGETS:
            raise DataError(f"target {target!r}: use one of {', '.join(TARGETS)}")
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)  # (1, D)
        if query.shape[1] != self.vectors.shape[1]:
            raise DataError(f"query of width {query.shape[1]}, the collection's embeddings have {self.vectors.shape[1]}")
        if target == "images":
            index, ids = self.image_index, None
        else:
            index, ids = self.caption_index()
        scores, found = index.search(query, min(k, index.ntotal))
        hits = []
        for score, i in zip(scores[0].tolist(), found[0].tolist()):
            if i < 0:  # an approximate index may find fewer than k
                continue
            j = int(ids[i]) if ids is not None else int(i)
            hits.append(Hit(len(hits) + 1, j, self.rows[j], self.paths[j], self.captions[j], float(score)))
        return hits

    def caption_index(self):
        """(exact faiss index over the caption embeddings, (M,) ids of the rows they belong to)."""
        if not self.has_captions:
            raise DataError(f"{self.emb}: the collection has no captions to search")
        if self._caption_index is None:
            texts = store.load_vectors(self.emb, self.manifest, "texts")
            ids = np.array([i for i, c in enumerate(self.captions) if c is not None], dtype=np.int64)
            self._caption_index = (build_index(texts[ids], "flat")[0], ids)
        return self._caption_index

    # ------------------------------------------------------------------------------------------------------------------
    # images of hits

    def image_path(self, id: int) -> Path | None:
        """The file of image `id`, resolved now (symlinks followed, `strict`) and checked to lie inside the root
        fixed when the collection was embedded; None for images that are no file of their own (shard members,
        bytes inside an HF dataset). DataError for an unknown id, a missing file or one that leads outside."""
        if isinstance(id, bool) or not isinstance(id, (int, np.integer)) or not 0 <= id < len(self):
            raise DataError(f"no image {id!r} in the collection (ids 0..{len(self) - 1})")
        kind = self.manifest["collection"]["kind"]
        if kind == "shards":
            return None
        if not isinstance(self.paths[id], str):
            raise DataError(f"image {id}: no path in the metadata")
        try:
            root = self.root.resolve(strict=True)
            path = (root / self.paths[id]).resolve(strict=True)
        except (OSError, RuntimeError) as e:  # missing, a symlink loop, a name too long
            if kind == "hf":
                return None  # a row holding its image's bytes: read through the dataset
            raise DataError(f"image {id} ({self.paths[id]}): {getattr(e, 'strerror', None) or e}") from None
        if not path.is_relative_to(root):
            raise DataError(f"image {id} ({self.paths[id]}) lies outside the collection root {root}")
        if not path.is_file():
            raise DataError(f"image {id} ({self.paths[id]}) is not a file")
        return path

    def read_image_file(self, id: int) -> tuple[Path, bytes] | None:
        """(path, contents) of image `id`'s file, read through the checked path without following a link put in
        its place since the check; None for images that are no file. DataError as `image_path`."""
        path = self.image_path(id)
        if path is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as e:
            raise DataError(f"image {id} ({self.paths[id]}): {e.strerror or e}") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise DataError(f"image {id} ({self.paths[id]}) is not a file")
            return path, f.read()

    def open_image(self, id: int) -> Image.Image:
        """Image `id` as an RGB PIL image (from its file, its shard or its dataset row)."""
        found = self.read_image_file(id)
        try:
            if found is not None:
                return decode_image(found[1])
            if self._collection is None:
                c = self.manifest["collection"]
                self._collection = open_collection(c["source"], image_key=c["image_key"], root=c["root"],
                                                   caption_key=c["caption_key"], split=c["split"])
            return decode_image(self._collection.item(self.rows[id]).image)
        except BadSample as e:
            raise DataError(f"image {id} ({self.paths[id]}): {REASONS[e.reason]}") from None
