"""Nearest-neighbour indexes of normalised embeddings with faiss (inner product = cosine similarity).

Kinds: `flat` (exact, IndexFlatIP), `ivf` (inverted lists over about sqrt(N) k-means cells, 1/8 of them searched, IndexIVFFlat), `hnsw` (a graph,
IndexHNSWFlat), `ivfpq` (inverted lists of product-quantised codes, IndexIVFPQ: 16x smaller at width 512). `auto` is
flat up to a threshold of vectors and ivf above it. IVF centroids are trained on a sample (at most 64 vectors per
cell), so a million vectors train in seconds. An approximate index is scored by its recall@k against exact search on
a sample of queries.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, error_line
from . import store

KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq")
AUTO_THRESHOLD = 100_000  # vectors: exact search of 100k x 512 takes ~10 ms per query on 2 cores
INDEX_FILE, REPORT_FILE = "index.faiss", "index.json"
PQ_MIN_VECTORS = 39 * 256  # faiss's least training set for 256 codes per sub-vector


@dataclass
class IndexReport:
    kind: str
    vectors: int
    dim: int
    build_s: float  # training + adding
    bytes: int  # the serialised index (what it holds in memory)
    params: dict[str, Any] = field(default_factory=dict)  # nlist, nprobe, M, efSearch, ...
    recall_at_10: float | None = None  # against exact search; None for flat (exact by definition)
    recall_queries: int = 0

    def line(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        recall = f"; recall@10 {self.recall_at_10:.4f} on {self.recall_queries} queries" if self.recall_at_10 is not None else ""
        return (f"{self.kind} index of {self.vectors} x {self.dim}" + (f" ({params})" if params else "")
                + f": built in {self.build_s:.2f} s, {self.bytes / 2**20:.1f} MiB{recall}")


def choose_kind(kind: str, n: int, threshold: int = AUTO_THRESHOLD) -> str:
    if kind not in KINDS:
        raise DataError(f"--kind {kind}: use one of {', '.join(KINDS)}")
    if kind == "auto":
        return "flat" if n <= threshold else "ivf"
    return kind


def default_nlist(n: int) -> int:
    """Inverted-list cells: about sqrt(n) (k-means over a million vectors stays seconds on a few cores), at least
    1, at most n / 39 (faiss wants 39+ training points per cell)."""
    return max(1, min(int(round(math.sqrt(n))), n // 39))


def build_index(vectors: np.ndarray, kind: str = "flat", *, nlist: int | None = None, nprobe: int | None = None,
                hnsw_m: int = 32, ef_search: int = 128, pq_m: int | None = None, seed: int = 0):
    """A faiss index over `vectors` (N, D) float32, rows normalised; returns (index, params)."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    ip = faiss.METRIC_INNER_PRODUCT
    params: dict[str, Any] = {}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, ip)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = ef_search
        params = {"M": hnsw_m, "efConstruction": 80, "efSearch": ef_search}
    elif kind in ("ivf", "ivfpq"):
        nlist = nlist or default_nlist(n)
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, ip)
        else:
            if n < PQ_MIN_VECTORS:
                raise DataError(f"an ivfpq index needs at least {PQ_MIN_VECTORS} vectors to train its codebooks "
                                f"(this collection has {n}); use --kind flat, ivf or hnsw")
            pq_m = pq_m or _pq_subquantizers(d)
            index = faiss.IndexIVFPQ(quantizer, d, nlist, pq_m, 8, ip)
            params["pq_m"] = pq_m
        # k-means on a sample: 64 points per cell are plenty (faiss samples 256 per cell otherwise); the codebooks
        # of PQ (256 codes per sub-vector) train on 40 points per code, 10 iterations, as seconds allow
        size = 64 * nlist if kind == "ivf" else max(64 * nlist, 40 * 256)
        sample = x[np.random.default_rng(seed).choice(n, min(n, size), replace=False)]
        index.cp.seed = seed
        index.cp.niter = 10  # the cells need to be balanced, not optimal
        if kind == "ivfpq":
            index.pq.cp.niter, index.pq.cp.max_points_per_centroid, index.pq.cp.seed = 10, 40, seed
        index.train(sample)
        index.nprobe = nprobe or max(1, min(nlist, int(round(nlist / 8))))
        params = {"nlist": nlist, "nprobe": index.nprobe, **params}
    else:
        raise DataError(f"unknown index kind {kind!r} (use one of {', '.join(KINDS[1:])})")
    index.add(x)
    return index, params


def _pq_subquantizers(d: int) -> int:
    """Sub-vectors of PQ codes: d/8 bytes per vector when d allows (64 bytes at d=512), else the largest divisor."""
    for m in (d // 8, 64, 32, 16, 8, 4, 2, 1):
        if m >= 1 and d % m == 0:
            return m
    return 1


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(Q, k) ids of the largest inner products, by brute force (the reference for recall)."""
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]


def recall_at_k(index, vectors: np.ndarray, queries: np.ndarray, k: int = 10, exact: np.ndarray | None = None) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k."""
    k = min(k, vectors.shape[0])
    exact = exact if exact is not None else exact_topk(vectors, queries, k)
    found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, exact)]))


def sample_queries(emb: Path, manifest: dict[str, Any], vectors: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Queries to score an index with: caption embeddings when the collection has them (what text search sends),
    else the stored image embeddings; `n` of them drawn at random."""
    pool = vectors
    if manifest["collection"]["has_captions"]:
        texts = store.load_vectors(emb, manifest, "texts")
        pool = texts[np.linalg.norm(texts, axis=1) > 0]  # rows without a caption are zero
    if len(pool) == 0:
        pool = vectors
    pick = np.random.default_rng(seed).choice(len(pool), min(n, len(pool)), replace=False)
    return pool[np.sort(pick)]


def build_collection_index(emb: str | Path, kind: str = "auto", threshold: int = AUTO_THRESHOLD,
                           recall_queries: int = 1000, **options) -> IndexReport:
    """Build, score and save (`EMB/index.faiss`, `EMB/index.json`) the index of an embedded collection."""
    import faiss

    emb = Path(emb)
    manifest = store.read_manifest(emb)
    store.read_metadata(emb, manifest)  # the rows the index's ids name: sound, or a DataError naming the file
    vectors = store.load_vectors(emb, manifest)
    if len(vectors) == 0:
        raise DataError(f"{emb}: no embeddings to index (the collection is empty)")
    kind = choose_kind(kind, len(vectors), threshold)
    start = time.perf_counter()
    index, params = build_index(vectors, kind, **options)
    report = IndexReport(kind, len(vectors), vectors.shape[1], time.perf_counter() - start, index_bytes(index), params)
    if kind != "flat":
        queries = sample_queries(emb, manifest, vectors, recall_queries)
        report.recall_at_10, report.recall_queries = recall_at_k(index, vectors, queries, 10), len(queries)
    store.atomic_write(emb / INDEX_FILE, lambda f: f.write(faiss.serialize_index(index).tobytes()))
    record = {**asdict(report), "shards": len(manifest["shards"]), "complete": manifest["complete"]}
    store.write_json(emb / REPORT_FILE, record)
    return report


def load_collection_index(emb: Path, manifest: dict[str, Any], vectors: np.ndarray):
    """The saved index when it matches the embeddings, else an exact one built now (fast for what fits flat).
    DataError naming the file for a damaged `index.json` or `index.faiss` (rebuild with `contrastive index`)."""
    import faiss

    report_path, index_path = emb / REPORT_FILE, emb / INDEX_FILE
    if not report_path.is_file():  # never indexed (or the report removed): nothing says what index.faiss holds
        return build_index(vectors, "flat")[0], "flat"
    fix = f"rebuild it with contrastive index {emb}"
    try:
        report = json.loads(report_path.read_text())
        if not isinstance(report, dict) or report.get("kind") not in KINDS[1:]:
            raise ValueError("not an index report")
    except (OSError, ValueError) as e:  # cut, garbage (JSONDecodeError and UnicodeDecodeError are ValueErrors)
        raise DataError(f"{report_path}: missing or unreadable index report ({error_line(e, 120)}); {fix}") from None
    if report.get("vectors") != len(vectors) or report.get("shards") != len(manifest["shards"]):
        return build_index(vectors, "flat")[0], "flat"  # stale: indexed before the embedding went on
    if not index_path.is_file():
        raise DataError(f"{index_path}: missing faiss index ({report_path} describes one); {fix}")
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as e:  # faiss's own exception: cut or garbage
        reason = re.sub(r"^Error in .*? at \S+:\d+: ", "", error_line(e))  # faiss prefixes its C++ function
        raise DataError(f"{index_path}: missing or unreadable faiss index ({reason[:160]}); {fix}") from None
    if index.ntotal != len(vectors) or index.d != vectors.shape[1]:
        raise DataError(f"{index_path}: {index.ntotal} vectors of width {index.d}, the embeddings are "
                        f"{len(vectors)} x {vectors.shape[1]}; {fix}")
    return index, report["kind"]
