"""contrastive embed: stored embeddings equal the model's, a stopped job resumed equals one uninterrupted, bad images
are skipped and counted, every collection kind gives the same embeddings, the metadata reads in pandas/datasets."""

import io
import json
import subprocess
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch

import contrastive
from contrastive.evaluation.embedding import embed_images, embed_texts
from contrastive.search import embed_collection, torch_encoder
from contrastive.search.embed import summary_line
from contrastive.search.store import load_vectors, read_manifest
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.search.helpers import run_cli


def embed_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "contrastive", "embed", "--no-progress", *map(str, args)], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)


def arrays(emb):
    manifest = read_manifest(emb)
    return load_vectors(emb, manifest), load_vectors(emb, manifest, "texts"), pd.read_parquet(emb / "metadata.parquet")


def test_embeddings_equal_the_models(tiny_run, small_table, tmp_path):
    encoder = torch_encoder(tiny_run)
    manifest = embed_collection(str(small_table), tmp_path / "emb", encoder, batch_size=20, workers=0,
                                dtype="float32", shard_size=16, progress=False)
    assert manifest["complete"] and manifest["counts"] == {"rows": 48, "embedded": 48, "captions": 48, "bad": 0}
    assert [s["rows"] for s in manifest["shards"]] == [[0, 20], [20, 40], [40, 48]]  # 16 rounded up to a batch
    speed = manifest["throughput"]  # this call's speed, not part of the stored manifest
    assert speed["images"] == 48 and speed["images_per_s"] > 0 and speed["forward_s"] + speed["waiting_s"] <= speed["wall_s"]
    assert "throughput" not in read_manifest(tmp_path / "emb")
    assert "48 rows in" in summary_line(manifest, tmp_path / "emb") and "images/s" in summary_line(manifest, "x")
    images, texts, meta = arrays(tmp_path / "emb")
    model, preprocess, tokenizer = contrastive.load(tiny_run)
    table = pd.read_csv(small_table)
    paths = [str(small_table.parent / p) for p in table["image"]]
    torch.testing.assert_close(torch.from_numpy(images), embed_images(model, paths, preprocess), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.from_numpy(texts), embed_texts(model, list(table["caption"]), tokenizer),
                               atol=1e-6, rtol=0)
    assert meta["id"].tolist() == list(range(48)) and meta["row"].tolist() == list(range(48))
    assert meta["path"].tolist() == table["image"].tolist()  # relative to the root: the table's folder
    assert meta["caption"].tolist() == table["caption"].tolist()
    assert meta["offset"].tolist() == list(range(20)) * 2 + list(range(8))
    assert meta["shard"].tolist() == [0] * 20 + [1] * 20 + [2] * 8
    assert manifest["model"]["embed_dim"] == model.embed_dim and manifest["model"]["name"] == "vit_tiny+text_tiny"

    half = embed_collection(str(small_table), tmp_path / "emb16", encoder, batch_size=20, workers=0,
                            dtype="float16", progress=False)
    stored = np.load(tmp_path / "emb16/shards/00000.images.npy")
    assert stored.dtype == np.float16 and half["dtype"] == "float16"
    np.testing.assert_allclose(stored.astype(np.float32), images, atol=2e-3)


def test_stopped_embed_resumed_equals_uninterrupted(tiny_run, small_table, tmp_path):
    """Real processes: the first stops after 3 batches (as a kill after the shard write would leave it), the relaunch
    continues; the arrays equal one uninterrupted run's, each row embedded once."""
    common = ["--checkpoint", tiny_run, "--data", small_table, "--batch-size", 8, "--shard-size", 16,
              "--dtype", "float32", "--workers", 2, "--device", "cpu"]
    whole = embed_cli(*common, "--output", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    first = embed_cli(*common, "--output", tmp_path / "resumed", "--max-batches", 3)
    assert first.returncode == 0, first.stderr
    assert "stopped at row 24 of 48; rerun the same command to continue" in first.stdout
    stopped = read_manifest(tmp_path / "resumed")
    assert not stopped["complete"] and [s["rows"] for s in stopped["shards"]] == [[0, 16], [16, 24]]
    second = embed_cli(*common, "--output", tmp_path / "resumed")
    assert second.returncode == 0, second.stderr
    assert "complete" in second.stdout
    resumed = read_manifest(tmp_path / "resumed")
    assert [s["rows"] for s in resumed["shards"]] == [[0, 16], [16, 24], [24, 32], [32, 48]]
    (a_img, a_txt, a_meta), (b_img, b_txt, b_meta) = arrays(tmp_path / "whole"), arrays(tmp_path / "resumed")
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_txt, b_txt)
    pd.testing.assert_frame_equal(a_meta[["id", "row", "path", "caption"]], b_meta[["id", "row", "path", "caption"]])
    assert b_meta["row"].is_unique and len(b_meta) == 48
    again = embed_cli(*common, "--output", tmp_path / "resumed")  # nothing left to do: nothing embedded twice
    assert again.returncode == 0 and read_manifest(tmp_path / "resumed")["shards"] == resumed["shards"]


def test_bad_images_skipped_and_counted(tiny_run, small_table, tmp_path):
    images = small_table.parent / "images"
    (images / "00003.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "00010.jpg").write_bytes(b"")
    (images / "00020.jpg").unlink()
    out = tmp_path / "emb"
    result = embed_cli("--checkpoint", tiny_run, "--data", small_table, "--output", out, "--batch-size", 16,
                       "--workers", 1, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "skipped 3 bad (corrupt_image=1, empty_file=1, missing_file=1)" in result.stdout
    assert result.stderr.count("skipped bad sample:") == 3 and "00003.jpg" in result.stderr
    manifest = read_manifest(out)
    assert manifest["counts"]["embedded"] == 45 and manifest["bad"]["counts"] == {
        "corrupt_image": 1, "empty_file": 1, "missing_file": 1}
    bad_rows = sorted(b["row"] for s in manifest["shards"] for b in s["bad"])
    assert bad_rows == [3, 10, 20]
    meta = pd.read_parquet(out / "metadata.parquet")
    assert meta["row"].tolist() == [r for r in range(48) if r not in (3, 10, 20)]
    assert meta["id"].tolist() == list(range(45))
    assert load_vectors(out, manifest).shape == (45, manifest["model"]["embed_dim"])


def test_folder_shards_and_table_give_the_same_embeddings(tiny_run, small_table, tmp_path):
    encoder = torch_encoder(tiny_run)
    kwargs = dict(batch_size=16, workers=0, dtype="float32", progress=False)
    embed_collection(str(small_table), tmp_path / "table", encoder, **kwargs)
    folder = embed_collection(str(small_table.parent / "images"), tmp_path / "folder", encoder, **kwargs)
    assert folder["collection"]["kind"] == "folder" and not folder["collection"]["has_captions"]
    table = pd.read_csv(small_table)
    shard = tmp_path / "shards/000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for n, (image, caption) in enumerate(zip(table["image"], table["caption"])):
            for name, data in ((f"{n:05d}.jpg", (small_table.parent / image).read_bytes()),
                               (f"{n:05d}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    shards = embed_collection(str(shard), tmp_path / "shards_emb", encoder, **kwargs)
    assert shards["collection"]["kind"] == "shards" and shards["counts"]["captions"] == 48
    reference, ref_texts, _ = arrays(tmp_path / "table")
    np.testing.assert_array_equal(load_vectors(tmp_path / "folder", folder), reference)
    np.testing.assert_array_equal(load_vectors(tmp_path / "shards_emb", shards), reference)
    np.testing.assert_array_equal(load_vectors(tmp_path / "shards_emb", shards, "texts"), ref_texts)
    assert pd.read_parquet(tmp_path / "shards_emb/metadata.parquet")["path"][0] == "000000.tar/00000.jpg"


def test_metadata_reads_in_datasets(tiny_run, small_table, tmp_path):
    import datasets

    embed_collection(str(small_table), tmp_path / "emb", torch_encoder(tiny_run), batch_size=16, workers=0,
                     shard_size=16, progress=False)
    ds = datasets.Dataset.from_parquet(str(tmp_path / "emb/metadata.parquet"))
    assert ds.column_names == ["id", "row", "path", "caption", "shard", "offset"]
    assert ds["shard"] == [0] * 16 + [1] * 16 + [2] * 16
    assert ds["caption"] == pd.read_csv(small_table)["caption"].tolist()
    manifest = json.loads((tmp_path / "emb/manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["complete"]


@pytest.mark.parametrize("case", ["empty folder", "other model", "not an embedding folder", "bad data"])
def test_embed_user_errors_are_one_line(case, tiny_run, other_run, small_table, tmp_path, capsys):
    out = tmp_path / "emb"
    data = small_table
    checkpoint = tiny_run
    if case == "empty folder":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "other model":
        embed_collection(str(small_table), out, torch_encoder(tiny_run), workers=0, progress=False, max_batches=1)
        checkpoint = other_run
    elif case == "not an embedding folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        data = tmp_path / "nothing.csv"
    code, _, err = run_cli(capsys, "embed", "--checkpoint", checkpoint, "--data", data, "--output", out,
                           "--device", "cpu", "--no-progress")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("contrastive embed: error: "), err
    expected = {"empty folder": "the collection is empty", "other model": "was embedded with another model",
                "not an embedding folder": "holds no embeddings", "bad data": "no such file"}[case]
    assert expected in lines[0]


def test_resuming_on_a_changed_collection_is_refused(tiny_run, small_table, tmp_path, capsys):
    """Stop after two shards, then reorder or edit the rows already embedded: the relaunch stops in one line
    (exit 2) naming the rows that changed and how to start over, and writes nothing; rows not embedded yet may
    change, and the original table continues to the end."""
    out = tmp_path / "emb"
    common = ["embed", "--checkpoint", tiny_run, "--data", small_table, "--output", out, "--batch-size", 8,
              "--shard-size", 8, "--workers", 0, "--device", "cpu", "--no-progress"]
    code, _, err = run_cli(capsys, *common, "--max-batches", 2)
    assert code == 0, err
    original = small_table.read_text()
    lines = original.splitlines()
    header, rows = lines[0], lines[1:]
    image, rest = rows[3].split(",", 1)
    changes = {"reordered": [rows[1], rows[0], *rows[2:]],
               "caption edited": [*rows[:3], f"{image},edited {rest}", *rows[4:]],
               "image renamed": [*rows[:9], rows[9].replace(".jpg", ".JPG", 1), *rows[10:]]}
    before = read_manifest(out)
    for what, new_rows in changes.items():
        small_table.write_text("\n".join([header, *new_rows]) + "\n")
        code, _, err = run_cli(capsys, *common)
        # the table's row cache says once that it reads the changed table again
        lines = [line for line in err.strip().splitlines() if "changed since its row cache" not in line]
        assert code == 2 and len(lines) == 1, (what, err)
        shard_rows = "0..7" if what != "image renamed" else "8..15"
        assert f"changed since {out} was embedded: rows {shard_rows}" in lines[0] and "new --output" in lines[0], what
        assert read_manifest(out) == before, what
    code, _, err = run_cli(capsys, *common, "--root", small_table.parent / "images")
    assert code == 2 and "root" in err  # another root is another collection
    small_table.write_text("\n".join([header, *rows[:40], rows[40].replace(",", ",edited ", 1), *rows[41:]]) + "\n")
    code, out_text, err = run_cli(capsys, *common)  # row 40 was not embedded yet: a change there is no conflict
    assert code == 0 and "complete" in out_text, err
    manifest = read_manifest(out)
    assert [s["rows"] for s in manifest["shards"]] == [[r, r + 8] for r in range(0, 48, 8)]
    assert all(len(s["fingerprint"]) == 64 for s in manifest["shards"])


def test_embed_names_only_its_own_options(tiny_run, small_table, tmp_path, capsys):
    """Every hint `contrastive embed` gives names an option it has (not a training config key)."""
    import datasets

    outputs = iter(range(100))

    def error(*args) -> str:
        code, _, err = run_cli(capsys, "embed", "--checkpoint", tiny_run, "--output", tmp_path / f"emb{next(outputs)}",
                               "--device", "cpu", "--workers", 0, "--no-progress", *args)
        *skipped, line = err.strip().splitlines()
        assert code == 2 and line.startswith("contrastive embed: error: "), err
        assert all(s.startswith("skipped bad sample: ") for s in skipped), err
        assert "data." not in err, err
        return line

    line = error("--data", small_table, "--image-key", "picture")
    assert "no column 'picture'" in line and "set --image-key" in line
    assert "did you mean --image-key?" in error("--data", small_table, "--image_key", "image")
    assert "did you mean --max-bad-fraction?" in error("--data", small_table, "--max-bad-fractoin", "0.5")
    assert "did you mean" not in error("--data", small_table, "--resume-from", "x")
    assert "--max-image-pixels=4,000" in error("--data", small_table, "--max-image-pixels", 4000)  # 64x64 images
    missing = tmp_path / "missing.csv"
    missing.write_text("image,caption\n" + "".join(f"nowhere/{i}.jpg,a red circle\n" for i in range(1100)))
    assert "--max-bad-fraction=0.5" in error("--data", missing, "--max-bad-fraction", "0.5", "--batch-size", 100)
    hf = tmp_path / "hf"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"image": ["x.jpg"]})}).save_to_disk(str(hf))
    assert "set --split" in error("--data", hf, "--split", "validation")
    assert "must be between 0 and 1" in error("--data", small_table, "--max-bad-fraction", "2")


def test_sigterm_to_the_group_stops_after_a_whole_shard_and_leaves_no_worker(tiny_run, small_table, tmp_path):
    """A scheduler's SIGTERM to the whole process group: the workers ignore it, the main process writes the shard it
    was filling, shuts its workers down and exits 143; before, it died at once and its workers hung for ever."""
    import os
    import signal
    import time

    lines = small_table.read_text().splitlines()
    big = small_table.parent / "big.csv"  # the 48 images over and over: long enough to be stopped midway
    big.write_text("\n".join([lines[0], *(lines[1:] * 400)]) + "\n")
    emb = tmp_path / "emb"
    proc = subprocess.Popen([PYTHON, "-m", "contrastive", "embed", "--no-progress", "--checkpoint", str(tiny_run),
                             "--data", str(big), "--output", str(emb), "--batch-size", "8", "--shard-size", "64",
                             "--workers", "2", "--device", "cpu"], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not ((emb / "manifest.json").is_file() and read_manifest(emb)["shards"]):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "contrastive embed: SIGTERM: stopped after the last whole batch; rerun" in err and "Traceback" not in err
    for _ in range(100):  # the group is empty once every worker has gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a DataLoader worker outlived the stopped embed")
    stopped = read_manifest(emb)
    assert 0 < stopped["next_row"] < 48 * 400 and not stopped["complete"]
    assert stopped["counts"]["embedded"] == stopped["next_row"]  # every row up to the stop, none twice
