"""Training on a weighted mixture of sources: the allocation, the sampler's order and resume, shards read by
position, per-source columns and counts, and a two-source run that resumes bit-exactly mid-epoch."""

import csv
import gzip
import io
import json
import shutil
import tarfile
from collections import Counter

import pytest
import torch

import contrastive
from contrastive.config import load_config
from contrastive.data.bad import BadSample
from contrastive.errors import ConfigError, DataError
from contrastive.data.mixture import Allocation, MixtureBatchSampler, source_names
from contrastive.data.shard_rows import IndexedShards
from contrastive.data.shards import iter_groups
from contrastive.evaluation.plots import read_metrics
from contrastive.training.recipe import train
from tests.conftest import ROOT
from tests.data.test_data import write_shards
from tests.helpers.overrides import FAST

SIZES, WEIGHTS, BATCH = [100, 1000, 300], [5.0, 1.0, 2.0], 32


def chi_square(observed: list[int], expected_shares: list[float]) -> float:
    total = sum(observed)
    return sum((o - total * p) ** 2 / (total * p) for o, p in zip(observed, expected_shares))


def draws(sampler):
    return [k for batch in sampler for k, _, _ in batch]


def test_allocation_is_exact_monotone_and_close_to_the_shares():
    a = Allocation(WEIGHTS)
    last = [0, 0, 0]
    for n in range(0, 5000, 7):
        counts = a.counts(n)
        assert sum(counts) == n
        assert all(c >= p for c, p in zip(counts, last))  # monotone: a position's counts never shrink
        assert all(abs(c - n * s) <= k + 1 for k, (c, s) in enumerate(zip(counts, a.shares)))
        last = counts


def test_batches_hold_the_sources_by_weight_not_uniformly_nor_by_size():
    steps = sum(SIZES) // BATCH
    sampler = MixtureBatchSampler(SIZES, WEIGHTS, BATCH, seed=3, steps_per_epoch=steps)
    seen = Counter()
    for epoch in range(3):
        sampler.set_position(epoch, 0)
        for batch in sampler:
            counts = Counter(k for k, _, _ in batch)
            # every batch, not only the total, holds each source's share up to rounding
            assert all(abs(counts[k] - BATCH * w / sum(WEIGHTS)) < 3 for k, w in enumerate(WEIGHTS))
            seen.update(counts)
    observed = [seen[k] for k in range(3)]
    bound = 13.82  # chi-square, 2 degrees of freedom, p = 0.001
    assert chi_square(observed, [w / sum(WEIGHTS) for w in WEIGHTS]) < bound
    assert chi_square(observed, [1 / 3] * 3) > bound  # a uniform sampler would pass this
    assert chi_square(observed, [n / sum(SIZES) for n in SIZES]) > bound  # and so would one by size


def test_each_source_visits_every_row_once_per_pass_in_a_fresh_order():
    sampler = MixtureBatchSampler(SIZES, WEIGHTS, BATCH, seed=0, steps_per_epoch=sum(SIZES) // BATCH)
    rows = [row for batch in sampler for k, row, _ in batch if k == 0]  # source 0 is upsampled: ~8 passes
    passes = [rows[i: i + 100] for i in range(0, 300, 100)]
    assert all(sorted(p) == list(range(100)) for p in passes)
    assert passes[0] != passes[1]
    # the big source, downsampled, goes on where epoch 0 stopped
    big = [row for batch in sampler for k, row, _ in batch if k == 1]
    sampler.set_position(1, 0)
    big_next = [row for batch in sampler for k, row, _ in batch if k == 1]
    assert len(set(big + big_next)) == len(big) + len(big_next)


def test_the_position_is_the_state_and_ranks_split_the_global_batch():
    steps = sum(SIZES) // BATCH
    full = list(MixtureBatchSampler(SIZES, WEIGHTS, BATCH, seed=1, steps_per_epoch=steps, epoch=2))
    resumed = list(MixtureBatchSampler(SIZES, WEIGHTS, BATCH, seed=1, steps_per_epoch=steps, epoch=2, start_batch=17))
    assert resumed == full[17:]
    ranks = [list(MixtureBatchSampler(SIZES, WEIGHTS, BATCH, seed=1, steps_per_epoch=steps, epoch=2, rank=r,
                                      world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == full
    assert all(len(set(k for k, _, _ in b)) > 1 for b in ranks[1])  # each rank's slice is mixed too


def test_source_names_are_stems_made_unique():
    cfg = load_config(None, ["data.train=[a/train.csv, {path: b/train.csv}, {path: 's/{0..3}.tar', name: start}]"])
    assert source_names(cfg.data.train_sources()) == ["train0", "train1", "start"]


def test_indexed_shards_give_the_streamed_bytes_and_flag_incomplete_samples(tmp_path):
    pattern = write_shards(tmp_path / "shards", 2, 5)
    index = IndexedShards(pattern, "jpg", "txt")
    assert len(index) == 10
    streamed = [g for url in sorted(tmp_path.glob("shards/*.tar")) for _, g in iter_groups(str(url))]
    for i, group in enumerate(streamed):
        raw = index.get(i)
        assert raw.image == group["jpg"] and raw.captions == [group["txt"]]
    with tarfile.open(tmp_path / "odd.tar", "w") as tar:
        for name, data in (("a.jpg", streamed[0]["jpg"]), ("a.txt", b"x"), ("b.jpg", streamed[1]["jpg"])):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    odd = IndexedShards(str(tmp_path / "odd.tar"))
    assert odd.get(0).captions == [b"x"]
    with pytest.raises(BadSample, match="missing_columns"):
        odd.get(1)
    (tmp_path / "odd.tar.gz").write_bytes(gzip.compress((tmp_path / "odd.tar").read_bytes()))
    with pytest.raises(DataError, match="compressed shards must be unpacked"):
        IndexedShards(str(tmp_path / "odd.tar.gz"))


def test_config_takes_a_path_a_list_of_sources_or_one_mapping():
    cfg = load_config(None, ["data.train=[{path: a.csv, weight: 3, caption_key: name}, b.tsv]", "data.image_key=img",
                             "data.val={path: v.csv, image_key: file}"])
    a, b = cfg.data.train_sources()
    assert (a.path, a.weight, a.image_key, a.caption_key) == ("a.csv", 3.0, "img", "name")
    assert (b.path, b.weight, b.image_key, b.caption_key) == ("b.tsv", 1.0, "img", "caption")
    assert (cfg.data.val_source().image_key, cfg.data.val_source().caption_key) == ("file", "caption")
    assert load_config(None, ["data.train=x.csv"]).data.train == "x.csv"
    assert load_config(None, ["data.train={path: x.csv}"]).data.train_sources()[0].path == "x.csv"
    assert load_config(None, ["data.val="]).data.val_source() is None
    for bad, message in (("data.train=[{path: a.csv, weight: 0}]", r"data.train\[0\]: weight must be > 0"),
                         ("data.train=[]", "empty list"), ("data.train=[{weight: 2}]", r"data.train\[0\]: path is empty"),
                         ("data.train=[{path: a.csv, colour: red}]", r"unknown config key 'data.train\[0\].colour'")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad])


# ----------------------------------------------------------------------------------------------------------------------
# end to end: shards with jpg/txt and a table with its own columns, validated on a table with image/caption


def mixture_run(tmp_path, *overrides):
    """A run on shards (jpg/txt, the data section's keys) at weight 1 and a table (columns img/text, one row's image
    missing) at weight 3."""
    data = tmp_path / "data"
    pattern = write_shards(data / "shards", 2, 24)
    shapes = list(csv.DictReader((ROOT / "data/shapes/train.csv").open()))
    with (data / "table.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("img", "text")] + [(ROOT / "data/shapes" / r["image"], r["caption"])
                                                     for r in shapes[1000:1064]] + [("missing.jpg", "a lost picture")])
    val = list(csv.DictReader((ROOT / "data/shapes/val.csv").open()))[:32]
    with (data / "val.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("image", "caption")] + [(ROOT / "data/shapes" / r["image"], r["caption"]) for r in val])
    sources = (f"[{{path: '{pattern}', name: shards}}, "
               f"{{path: {data / 'table.csv'}, weight: 3, image_key: img, caption_key: text, name: table}}]")
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [
        *FAST, f"train.output_dir={tmp_path}", "train.run_name=run", f"data.train={sources}",
        "data.image_key=jpg", "data.caption_key=txt", f"data.val={{path: {data / 'val.csv'}, image_key: image, "
        "caption_key: caption}", "train.batch_size=16", "eval.batch_size=64", "optim.warmup_steps=2", *overrides])
    return train(cfg)


def test_two_sources_train_log_their_counts_and_resume_bit_exactly_mid_epoch(tmp_path):
    common = ["train.max_steps=6", "train.save_every_n_steps=3", "train.keep_checkpoints=5"]
    full = mixture_run(tmp_path / "a", *common)  # 48 + 65 rows: an epoch is 7 steps of 16
    rows = [m for m in read_metrics(full) if "loss" in m]
    last = rows[-1]
    assert last["samples/shards"] + last["samples/table"] == 6 * 16
    assert last["samples/table"] == 72 and last["samples/shards"] == 24  # 3 : 1, exactly
    summary = json.loads((full / "summary.json").read_text())
    assert "val/text_retrieval_recall@1" in summary
    table = {s["name"]: s for s in summary["data"]["sources"]}
    assert table["table"]["share"] == 0.75 and table["table"]["share_seen"] == 0.75 and table["shards"]["rows"] == 48
    # 72 draws of the table's 65 rows met the missing image, replaced from the table; the shards had none
    assert table["table"]["bad_samples"] == {"missing_file": 1} and table["shards"]["bad_samples"] == {}
    assert last["bad/table"] == 1 and last["bad/shards"] == 0 and summary["data"]["bad_samples"] == {"missing_file": 1}

    crashed = tmp_path / "b" / "run"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_00000006")
    (crashed / "checkpoints" / "latest").write_text("step_00000003\n")
    (crashed / "metrics.jsonl").write_text("")
    resumed = mixture_run(tmp_path / "b", *common, "train.resume=true")
    again = {m["step"]: m for m in read_metrics(resumed) if "loss" in m}
    assert sorted(again) == [4, 5, 6]
    for m in rows[3:]:
        assert again[m["step"]]["loss"] == m["loss"]
        assert again[m["step"]]["samples/table"] == m["samples/table"]  # the counts are checkpointed too
    wa, wb = contrastive.load(full)[0].state_dict(), contrastive.load(resumed)[0].state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_a_source_that_cannot_be_read_is_named(tmp_path):
    with pytest.raises(DataError, match=r"data.train\[1\] \(.*missing.csv\)|data.train: file not found"):
        train(load_config(ROOT / "configs/shapes_tiny.yaml", [
            *FAST, f"train.output_dir={tmp_path}", "data.val=",
            f"data.train=[data/shapes/train.csv, {tmp_path / 'missing.csv'}]"]))
