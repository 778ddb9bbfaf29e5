"""A damaged embedding folder (a manifest missing keys, a cut or garbage index, a missing or cut shard file) is one
line naming the file and what is wrong, from `contrastive index`, `search` and `serve` (exit 2) and `Index.load`."""

import json
import shutil

import pytest

from contrastive.errors import DataError
from contrastive.search import Index, build_collection_index, embed_collection, torch_encoder
from tests.search.helpers import run_cli


@pytest.fixture(scope="module")
def sound_emb(tiny_run, tmp_path_factory):
    """24 images with captions in three shards, indexed."""
    from tests.search.helpers import shapes_table

    tmp = tmp_path_factory.mktemp("store")
    table = shapes_table(tmp / "collection", 24, copy=True)
    emb = tmp / "emb"
    embed_collection(str(table), emb, torch_encoder(tiny_run), batch_size=8, shard_size=8, workers=0, progress=False)
    build_collection_index(emb, "flat")
    return emb


def edit_manifest(change):
    def damage(emb):
        manifest = json.loads((emb / "manifest.json").read_text())
        change(manifest)
        (emb / "manifest.json").write_text(json.dumps(manifest))
    return damage


def cut(name, keep=0.5):
    def damage(emb):
        data = (emb / name).read_bytes()
        (emb / name).write_bytes(data[: int(len(data) * keep)])
    return damage


def garbage(name):
    return lambda emb: (emb / name).write_bytes(b"\x00\xffnot this file\x01" * 40)


# case -> (damage, the file named, what the line says, whether `contrastive index` (which rewrites the index) fails)
CASES = {
    "manifest lacks shards": (edit_manifest(lambda m: m.pop("shards")), "manifest.json", "shards: field required",
                              True),
    "manifest shard lacks rows": (edit_manifest(lambda m: m["shards"][1].pop("rows")), "manifest.json",
                                  "shards.1.rows: field required", True),
    "manifest width is text": (edit_manifest(lambda m: m["model"].update(embed_dim="64")), "manifest.json",
                               "model.embed_dim", True),
    "manifest shards overlap": (edit_manifest(lambda m: m["shards"][2].update(rows=[4, 24])), "manifest.json",
                                "do not follow row 16", True),
    "manifest cut": (cut("manifest.json"), "manifest.json", "not a valid manifest", True),
    "index.json cut": (cut("index.json"), "index.json", "unreadable index report", False),
    "index.json garbage": (garbage("index.json"), "index.json", "unreadable index report", False),
    "index.json without index.faiss": (lambda emb: (emb / "index.faiss").unlink(), "index.faiss",
                                       "missing faiss index", False),
    "index.faiss garbage": (garbage("index.faiss"), "index.faiss", "not recognized", False),
    "index.faiss cut": (cut("index.faiss"), "index.faiss", "unreadable faiss index", False),
    "parquet shard missing": (lambda emb: (emb / "shards/00001.parquet").unlink(), "shards/00001.parquet",
                              "unreadable metadata (no such file)", True),
    "parquet shard garbage": (garbage("shards/00002.parquet"), "shards/00002.parquet",
                              "missing or unreadable metadata", True),
    "npy shard cut": (cut("shards/00001.images.npy", 0.9), "shards/00001.images.npy",
                      "missing or unreadable embeddings", True),
    "npy shard garbage": (garbage("shards/00000.images.npy"), "shards/00000.images.npy",
                          "not a .npy array file", True),
    "npy shard of other width": (lambda emb: __import__("numpy").save(emb / "shards/00002.images.npy",
                                                                      __import__("numpy").zeros((8, 3), "float16")),
                                 "shards/00002.images.npy", "of shape (8, 3)", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_folders_are_one_line_naming_the_file(case, sound_emb, tmp_path, capsys):
    damage, name, what, index_fails = CASES[case]
    emb = tmp_path / "emb"
    shutil.copytree(sound_emb, emb)
    damage(emb)
    with pytest.raises(DataError) as e:
        Index.load(emb)
    assert str(emb / name) in str(e.value) and what in str(e.value), str(e.value)
    for command in (["search", "--index", emb, "--text", "a red circle"],
                    ["serve", "--index", emb, "--host", "256.0.0.1"],  # never listens: a load that passed fails to bind
                    ["index", emb]):
        code, out, err = run_cli(capsys, *command)
        if command[0] == "index" and not index_fails:
            assert code == 0 and "flat index of 24" in out, err  # the index is rebuilt from the sound embeddings
            continue
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (command, err)
        assert lines[0].startswith(f"contrastive {command[0]}: error: {emb / name}"), (command, lines[0])
        assert what in lines[0], (command, lines[0])
