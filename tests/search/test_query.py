"""Index.load(EMB).search_text / search_image and `contrastive search`: a held-out caption finds its image far above
chance, scores equal brute force, image paths never leave the collection, user errors are one line."""

import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from contrastive.errors import DataError
from contrastive.search import Index, build_collection_index, embed_collection, torch_encoder
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.search.helpers import run_cli, shapes_table


@pytest.fixture(scope="module")
def val_emb(trained_run, tmp_path_factory):
    """The 400 held-out shapes images embedded with the session's trained model (which never saw them)."""
    emb = tmp_path_factory.mktemp("val_emb") / "emb"
    embed_collection(str(ROOT / "data/shapes/val.csv"), emb, torch_encoder(trained_run), batch_size=100, workers=1,
                     progress=False)
    return emb


@pytest.fixture
def tiny_emb(tiny_run, small_table, tmp_path):
    emb = tmp_path / "emb"
    embed_collection(str(small_table), emb, torch_encoder(tiny_run), batch_size=16, workers=0, progress=False)
    return emb


def search_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "contrastive", "search", *map(str, args)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def test_held_out_caption_finds_its_image(val_emb):
    index = Index.load(val_emb)
    captions = pd.read_csv(ROOT / "data/shapes/val.csv")["caption"].tolist()
    found = 0
    for row, caption in enumerate(captions):
        hits = index.search_text(caption, k=10)
        assert [h.rank for h in hits] == list(range(1, 11))
        found += row in [h.row for h in hits]
    rate, chance = found / len(captions), 10 / len(captions)
    # 100 steps of the 2+2-layer model reach about 0.4 (16x chance); colour alone would give about 3x
    assert rate > 6 * chance, (rate, chance)


def test_scores_equal_brute_force(val_emb):
    index = Index.load(val_emb)
    query = index.embed_text("a small blue star in the top right")  # (D,)
    hits = index.search_vector(query, k=25)
    vectors = torch.from_numpy(index.vectors)
    reference = torch.topk(vectors @ torch.from_numpy(query), 25)
    assert [h.id for h in hits] == reference.indices.tolist()
    np.testing.assert_allclose([h.score for h in hits], reference.values.numpy(), atol=1e-5)
    assert hits == index.search_text("a small blue star in the top right", k=25)


def test_image_queries(val_emb):
    index = Index.load(val_emb)
    path = ROOT / "data/shapes/images/val/00007.jpg"
    hits = index.search_image(path, k=5)
    assert hits[0].row == 7 and hits[0].score == pytest.approx(1.0, abs=2e-3)  # float16 storage
    assert hits[0].path == "images/val/00007.jpg" and hits[0].caption == pd.read_csv(ROOT / "data/shapes/val.csv")["caption"][7]
    assert [h.id for h in index.search_image(Image.open(path), k=5)] == [h.id for h in hits]
    captions = index.search_image(path, k=5, target="captions")
    texts = torch.from_numpy(np.concatenate([np.load(p) for p in sorted((val_emb / "shards").glob("*.texts.npy"))]))
    reference = torch.topk(texts.float() @ torch.from_numpy(index.embed_image(path)), 5).indices.tolist()
    assert [h.id for h in captions] == reference and all(h.caption for h in captions)


def test_saved_approximate_index_is_used(val_emb):
    report = build_collection_index(val_emb, "hnsw")
    index = Index.load(val_emb)
    assert index.kind == "hnsw" and report.recall_at_10 > 0.9
    exact = index.search_vector(index.embed_text("a red circle"), k=10)
    (val_emb / "index.json").unlink()  # no report: an exact index is built on the fly
    flat = Index.load(val_emb)
    assert flat.kind == "flat"
    assert len(set(h.id for h in exact) & set(h.id for h in flat.search_text("a red circle", k=10))) >= 9


def test_image_paths_stay_inside_the_collection(tiny_run, tmp_path):
    """The root is the table's folder however the rows lead out of it: a symlink leading out when embedding is
    skipped as bad; a file replaced by one after embedding is refused when read."""
    table = shapes_table(tmp_path / "c", 6, copy=True)
    outside = tmp_path / "secret.jpg"
    (table.parent / "images/00002.jpg").rename(outside)
    os.symlink(outside, table.parent / "images/00002.jpg")  # inside the root, leading out of it
    with table.open("a") as f:
        f.write(f"{outside},a red circle\n../secret.jpg,a red circle\n")  # rows naming the file outside
    emb = tmp_path / "emb"
    manifest = embed_collection(str(table), emb, torch_encoder(tiny_run), batch_size=4, workers=0, progress=False)
    assert manifest["bad"]["counts"] == {"outside_root": 3} and manifest["counts"]["embedded"] == 5
    bad = sorted((b["row"], b["where"]) for s in manifest["shards"] for b in s["bad"])
    assert [row for row, _ in bad] == [2, 6, 7] and bad[2][1] == f"{table} row 9 (../secret.jpg)"  # named
    index = Index.load(emb)
    assert index.root == table.parent and index.paths == [f"images/0000{i}.jpg" for i in (0, 1, 3, 4, 5)]
    assert index.image_path(0) == index.root.resolve() / "images/00000.jpg"
    assert index.open_image(1).size == (64, 64)
    (table.parent / "images/00003.jpg").unlink()
    os.symlink(outside, table.parent / "images/00003.jpg")  # after embedding
    for read in (index.image_path, index.read_image_file, index.open_image):
        with pytest.raises(DataError, match="outside the collection root"):
            read(2)
    (table.parent / "images/00004.jpg").unlink()
    with pytest.raises(DataError, match="No such file"):
        index.open_image(3)
    for bad in (-1, 5, "0", 1.0):
        with pytest.raises(DataError, match="no image"):
            index.image_path(bad)


def test_search_cli_json_and_grid(tiny_emb, tmp_path, capsys):
    result = search_cli("--index", tiny_emb, "--text", "a large red circle", "--k", 4, "--json",
                        "--grid", tmp_path / "grid.png")
    assert result.returncode == 0, result.stderr
    hits = json.loads(result.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3, 4] and {"id", "row", "path", "caption", "score"} <= set(hits[0])
    in_process = Index.load(tiny_emb).search_text("a large red circle", 4)
    assert [h["id"] for h in hits] == [h.id for h in in_process]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in in_process], atol=1e-5)
    with Image.open(tmp_path / "grid.png") as sheet:
        assert sheet.format == "PNG" and sheet.size == (5 * 160, 204)  # the query and 4 hits
    # an existing sheet is replaced only on --overwrite
    again = ["search", "--index", tiny_emb, "--text", "a blue star", "--k", 2, "--grid", tmp_path / "grid.png"]
    code, _, err = run_cli(capsys, *again)
    assert code == 2 and "grid.png exists; choose a new path, or pass --overwrite" in err
    with Image.open(tmp_path / "grid.png") as sheet:
        assert sheet.size == (5 * 160, 204)
    assert run_cli(capsys, *again, "--overwrite")[0] == 0
    with Image.open(tmp_path / "grid.png") as sheet:
        assert sheet.size == (3 * 160, 204)
    table = search_cli("--index", tiny_emb, "--image", ROOT / "data/shapes/images/val/00001.jpg", "--k", 2)
    assert table.returncode == 0, table.stderr
    rank, score, id_, path = table.stdout.splitlines()[1].split()[:4]  # the query image itself, first
    assert (rank, id_, path) == ("1", "1", "images/00001.jpg") and float(score) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("case", ["missing EMB", "other model", "k < 1", "empty text", "no captions", "bad image",
                                  "no query", "grid not png"])
def test_search_errors_are_one_line(case, tiny_emb, tiny_run, other_run, tmp_path, capsys):
    args = {"missing EMB": ["--index", tmp_path / "nothing", "--text", "a"],
            "other model": ["--index", tiny_emb, "--text", "a", "--checkpoint", other_run],
            "k < 1": ["--index", tiny_emb, "--text", "a", "--k", 0],
            "empty text": ["--index", tiny_emb, "--text", "  "],
            "no captions": ["--index", tmp_path / "folder_emb", "--text", "a", "--captions"],
            "bad image": ["--index", tiny_emb, "--image", tmp_path / "none.jpg"],
            "no query": ["--index", tiny_emb],
            "grid not png": ["--index", tiny_emb, "--text", "a", "--grid", tmp_path / "g.jpg"]}[case]
    if case == "no captions":
        embed_collection(str(tiny_emb.parent / "collection/images"), tmp_path / "folder_emb", torch_encoder(tiny_run),
                         workers=0, progress=False)
    code, out, err = run_cli(capsys, "search", *args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("contrastive search: error: "), err
    expected = {"missing EMB": "no embeddings here", "other model": "was embedded with another model",
                "k < 1": "must be >= 1", "empty text": "the text query is empty", "no captions": "has no captions",
                "bad image": "image file not found", "no query": "one of the arguments --text --image is required",
                "grid not png": "name it *.png"}[case]
    assert expected in lines[0]
