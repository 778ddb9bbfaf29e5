"""faiss indexes against brute force: exact search equals torch.topk, approximate indexes reach high recall on
clustered data, recall@k is the plain set overlap, and `contrastive index` chooses, scores and saves an index."""

import json

import numpy as np
import pytest
import torch

from contrastive.errors import DataError
from contrastive.search import build_index, recall_at_k
from contrastive.search.index import build_collection_index, choose_kind, exact_topk
from tests.search.helpers import run_cli


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around `clusters` random centres (embeddings of real collections are clustered like this)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    return unit(centres[rng.integers(clusters, size=n)] + 0.35 * rng.standard_normal((n, d)))


def naive_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return torch.topk(torch.from_numpy(queries) @ torch.from_numpy(vectors).T, k, dim=1).indices.numpy()


def test_flat_index_is_exact():
    x, q = unit(np.random.default_rng(0).standard_normal((3000, 48))), unit(np.random.default_rng(1).standard_normal((50, 48)))
    index, params = build_index(x, "flat")
    scores, ids = index.search(q, 10)
    np.testing.assert_array_equal(ids, naive_topk(x, q, 10))
    np.testing.assert_allclose(scores, np.sort(q @ x.T, axis=1)[:, ::-1][:, :10], atol=1e-5)
    assert params == {} and recall_at_k(index, x, q, 10) == 1.0


@pytest.mark.parametrize("kind, least", [("ivf", 0.9), ("hnsw", 0.8), ("ivfpq", 0.4)])
def test_approximate_recall_against_exact(kind, least):
    x = clustered(10_000, 64, 40)
    q = clustered(200, 64, 40, seed=1)
    index, params = build_index(x, kind)
    exact = naive_topk(x, q, 10)
    found = index.search(q, 10)[1]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.tolist(), exact.tolist())])
    assert recall_at_k(index, x, q, 10) == pytest.approx(overlap)
    assert recall_at_k(index, x, q, 10, exact=exact_topk(x, q, 10)) == pytest.approx(overlap)
    assert overlap >= least, (kind, params, overlap)
    assert overlap < 1.0 or kind == "hnsw"  # an approximate index misses some (hnsw may find all at this size)
    if kind != "hnsw":
        index.nprobe = params["nlist"]  # every cell searched: ivf becomes exact
        full = recall_at_k(index, x, q, 10, exact=exact)
        assert full == 1.0 if kind == "ivf" else full >= least  # ivfpq: what its codes lose remains


def test_ivfpq_refuses_too_few_vectors_to_train():
    with pytest.raises(DataError, match="ivfpq index needs at least 9984 vectors"):
        build_index(clustered(9983, 16, 4), "ivfpq")


def test_auto_kind_follows_the_threshold():
    assert choose_kind("auto", 100, threshold=100) == "flat"
    assert choose_kind("auto", 101, threshold=100) == "ivf"
    assert choose_kind("hnsw", 5) == "hnsw"


def fake_collection(emb, vectors: np.ndarray, texts: np.ndarray | None = None):
    """An EMB folder holding given vectors (the index needs nothing else from embed)."""
    from contrastive.search.store import write_json, write_shard

    n, d = vectors.shape
    rows = {"id": list(range(n)), "row": list(range(n)), "path": [f"{i}.jpg" for i in range(n)],
            "caption": [f"caption {i}" for i in range(n)] if texts is not None else [None] * n,
            "shard": [0] * n, "offset": list(range(n))}
    emb.mkdir()
    write_shard(emb, 0, vectors.astype(np.float16), None if texts is None else texts.astype(np.float16), rows)
    write_json(emb / "manifest.json", {
        "format": 1, "model": {"name": "m", "source": "", "checkpoint": "", "digest": "x", "embed_dim": d},
        "dtype": "float16", "collection": {"source": str(emb), "kind": "folder", "root": str(emb), "rows": n,
                                           "has_captions": texts is not None, "image_key": "image",
                                           "caption_key": "caption", "split": "train"},
        "shard_size": n, "shards": [{"shard": 0, "rows": [0, n], "embedded": n, "bad": []}], "next_row": n,
        "complete": True, "counts": {"rows": n, "embedded": n, "captions": 0, "bad": 0},
        "bad": {"loads": n, "skips": 0, "counts": {}, "first": []}})


def test_index_command_builds_scores_and_saves(tmp_path, capsys):
    x = clustered(3000, 32, 20)
    fake_collection(tmp_path / "emb", x, texts=clustered(3000, 32, 20, seed=2))
    code, exact, err = run_cli(capsys, "index", tmp_path / "emb")
    assert code == 0, err
    assert exact.startswith("flat index of 3000 x 32: built in") and "recall" not in exact
    code, approx, err = run_cli(capsys, "index", tmp_path / "emb", "--threshold", 1000, "--recall-queries", 300)
    assert code == 0, err
    report = json.loads((tmp_path / "emb/index.json").read_text())
    assert report["kind"] == "ivf" and report["recall_queries"] == 300 and report["vectors"] == 3000
    assert f"recall@10 {report['recall_at_10']:.4f} on 300 queries" in approx
    assert 0.5 < report["recall_at_10"] < 1.0 and report["bytes"] > 3000 * 32 * 4
    import faiss

    assert faiss.read_index(str(tmp_path / "emb/index.faiss")).ntotal == 3000


def test_index_reports_recall_on_caption_queries(tmp_path):
    x = clustered(2000, 32, 10)
    fake_collection(tmp_path / "emb", x, texts=x[::-1].copy())
    report = build_collection_index(tmp_path / "emb", "hnsw", recall_queries=100)
    assert report.kind == "hnsw" and report.recall_queries == 100 and report.recall_at_10 > 0.9


@pytest.mark.parametrize("args, message", [
    ([], "no embeddings here"),
    (["--kind", "lsh"], "invalid choice: 'lsh'"),
    (["--threshold", "0"], "must be >= 1"),
])
def test_index_errors_are_one_line(tmp_path, args, message, capsys):
    code, _, err = run_cli(capsys, "index", tmp_path / "missing", *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("contrastive index: error: ") and message in lines[0], err
