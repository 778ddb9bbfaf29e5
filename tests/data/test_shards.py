"""WebDataset shards at scale: the per-shard count index, resampled shard draws, and a resume that reads no sample
already seen."""

import json
import os
import tarfile
from pathlib import Path

import pytest
import torch

from contrastive.config import load_config
from contrastive.data import TrainData
from contrastive.data.shard_index import INDEX_NAME, SIZES_NAME
from contrastive.data.shards import ShardStream, count_samples, expand_shards, read_groups
from contrastive.data.sources import stable_id
from contrastive.errors import DataError
from contrastive.text.tokenizer import build_tokenizer
from tests.helpers.shards import write_shard, write_shards


def config(pattern, *overrides):
    return load_config(None, [f"data.train={pattern}", "data.num_workers=0", "data.shuffle_buffer=5",
                              "model.image_size=16", *overrides])


def stream(pattern, *overrides, seed=0, batch_size=8):
    cfg = config(pattern, *overrides)
    from contrastive.data.images import ImageTransform

    return ShardStream(cfg.data, ImageTransform(16, [0.5] * 3, [0.5] * 3, train=True), build_tokenizer("byte", 16),
                       batch_size, seed=seed)


def scramble(path: Path) -> None:
    """Overwrite a shard with bytes that are no tar, keeping its size and modification time (what `stat` sees)."""
    st = path.stat()
    path.write_bytes(b"\xff" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_count_index_agrees_with_a_full_count_and_is_used(tmp_path):
    pattern = write_shards(tmp_path / "shards", 4, [7, 9, 5, 8])
    urls = expand_shards(pattern)
    first = stream(pattern)
    index = json.loads((tmp_path / "shards" / INDEX_NAME).read_text())["shards"]
    assert {name: entry[2] for name, entry in index.items()} == {Path(u).name: count_samples(u) for u in urls}
    assert first.num_samples == 29
    # the second start opens no shard: they are no tars any more, yet their counts stand
    for u in urls:
        scramble(Path(u))
    with pytest.raises(DataError, match="not a readable tar"):
        count_samples(urls[0])
    again = stream(pattern)
    assert (again.num_samples, again.steps_per_epoch, again.counts) == (first.num_samples, first.steps_per_epoch, first.counts)


def test_many_shards_are_counted_in_parallel_processes_as_one_would(tmp_path, monkeypatch):
    from contrastive.data import shard_index

    monkeypatch.setattr(shard_index, "PARALLEL_FROM", 2)  # 8 shards: counted by 2 processes (2 cores here)
    sizes = [3, 1, 4, 1, 5, 9, 2, 6]
    urls = expand_shards(write_shards(tmp_path / "shards", 8, sizes))
    assert shard_index.count_all(count_samples, urls) == sizes == [count_samples(u) for u in urls]
    scramble(Path(urls[5]))
    with pytest.raises(DataError, match=r"shard-05\.tar: not a readable tar"):  # a child's error, as one line
        shard_index.count_all(count_samples, urls)


def test_a_changed_shard_set_is_counted_again(tmp_path):
    folder = tmp_path / "shards"
    pattern = write_shards(folder, 3, 6)
    assert stream(pattern).counts == [6, 6, 6]
    write_shards(tmp_path / "other", 1, 2)  # shard 1 replaced by a tar of 2 samples (another size and time)
    os.replace(tmp_path / "other" / "shard-00.tar", folder / "shard-01.tar")
    write_shards(tmp_path / "more", 1, 4)  # and a fourth shard added
    os.replace(tmp_path / "more" / "shard-00.tar", folder / "shard-03.tar")
    assert stream(str(folder / "shard-{00..03}.tar")).counts == [6, 2, 6, 4]
    assert json.loads((folder / INDEX_NAME).read_text())["shards"]["shard-03.tar"][2] == 4


def test_the_index_goes_to_the_cache_when_the_shard_folder_takes_none(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    pattern = write_shards(tmp_path / "shards", 2, 5)
    (tmp_path / "shards" / INDEX_NAME).mkdir()  # the index's place is taken: it cannot be written there
    assert stream(pattern).counts == [5, 5]
    cached = list((tmp_path / "cache" / "contrastive" / "shard-counts").glob("*.json"))
    assert len(cached) == 1
    for u in expand_shards(pattern):
        scramble(Path(u))
    assert stream(pattern).counts == [5, 5]  # read back from the cache


def test_an_openclip_sizes_file_gives_the_counts(tmp_path):
    pattern = write_shards(tmp_path / "shards", 2, 5)
    (tmp_path / "shards" / SIZES_NAME).write_text(json.dumps({"shard-00.tar": 5, "shard-01.tar": 5}))
    for u in expand_shards(pattern):
        scramble(Path(u))
    assert stream(pattern).counts == [5, 5]


def test_read_groups_passes_over_members_unread(tmp_path):
    write_shard(tmp_path / "a.tar", [{"jpg": bytes([i]) * 3, "txt": b"x"} for i in range(5)], "p")
    got = list(read_groups(str(tmp_path / "a.tar"), keep=lambda k: k >= 3))
    assert [(k, key) for k, key, _ in got] == [(k, f"p/{k:04d}") for k in range(5)]
    assert [g for _, _, g in got] == [{}, {}, {}, {"jpg": b"\x03" * 3, "txt": b"x"}, {"jpg": b"\x04" * 3, "txt": b"x"}]


def epoch_ids(s, epoch=0):
    s.set_position(epoch, 0)
    return [b["image_ids"].tolist() for b in s]


def test_resampled_shards_are_drawn_with_replacement_from_the_seed(tmp_path):
    pattern = write_shards(tmp_path / "shards", 3, 4)
    opts = ("data.resampled=true", "data.samples_per_epoch=48")
    with pytest.raises(DataError, match="3 shards cannot feed"):
        stream(pattern, "data.num_workers=4")  # without resampling, each stream needs shards of its own
    runs = [epoch_ids(stream(pattern, *opts, seed=seed)) for seed in (0, 0, 1)]
    assert len(runs[0]) == 48 // 8 and runs[0] == runs[1] != runs[2]
    assert epoch_ids(stream(pattern, *opts), epoch=1) != runs[0]  # each epoch draws again
    ids = [i for b in runs[0] for i in b]
    assert len(set(ids)) < len(ids) and len(set(ids)) <= 12  # 48 draws from 12 samples: repeats


def train_data(pattern, *overrides):
    cfg = config(pattern, "data.num_workers=2", "data.bad_check_after=0", "data.max_bad_fraction=0.5", *overrides)
    return TrainData(cfg.data, cfg.model, build_tokenizer("byte", 16), 4, seed=5)


def corrupt_images(urls: list[str], image_ids: set[int]) -> int:
    """Garble (same size) the images whose ids are in `image_ids`; the tar headers stay readable."""
    n = 0
    for url in urls:
        members = []
        for key, group in ((key, g) for _, key, g in read_groups(url)):
            if stable_id(f"{url}/{key}") in image_ids:
                group = {**group, "jpg": b"\x00" * len(group["jpg"])}
                n += 1
            members.append(group)
        write_shard(Path(url), members, key.split("/")[0])
    return n


@pytest.mark.parametrize("resampled", [False, True])
def test_resume_mid_shard_reads_no_image_already_seen(tmp_path, resampled):
    # 5 shards of 9: batches of 4 cut the shards mid-way; a bad sample shifts the stream it is in
    pattern = write_shards(tmp_path / "shards", 5, 9, bad_in_first=True)
    opts = ("data.resampled=true", "data.samples_per_epoch=60") if resampled else ()
    whole = [(b["image_ids"], b["pixels"]) for b in train_data(pattern, *opts).batches(0, 0)]
    cut = 7
    first = train_data(pattern, *opts)
    seen = set()
    for b, batch in enumerate(first.batches(0, 0)):
        seen |= set(batch["image_ids"].tolist())
        if b + 1 == cut:
            break
    state = first.state_dict()
    assert len(state["stream_cursors"]) == 2  # both workers' streams
    if not resampled:  # (resampled, a shard drawn again later shows the same images again)
        # the images already trained on are now undecodable: a resume that decoded them would count them as bad
        # and take the samples after them in their place
        assert corrupt_images(expand_shards(pattern), seen) == len(seen)
    resumed = train_data(pattern, *opts)
    resumed.load_state_dict(state)
    again = [(b["image_ids"], b["pixels"]) for b in resumed.batches(0, cut)]
    assert len(again) == len(whole) - cut > 0
    for (ids, pixels), (ids2, pixels2) in zip(whole[cut:], again):
        assert torch.equal(ids, ids2)
        torch.testing.assert_close(pixels, pixels2, rtol=0, atol=0)
    assert resumed.tracker.total == first.tracker.total  # nothing seen again, so no bad sample counted twice


def test_a_resumed_shard_run_matches_the_uninterrupted_one(tmp_path):
    import shutil

    from contrastive.interop.checkpoint import load_state
    from contrastive.training.recipe import train
    from tests.conftest import ROOT
    from tests.helpers.overrides import FAST

    pattern = write_shards(tmp_path / "shards", 4, 13, bad_in_first=True)
    common = [*FAST, f"data.train={pattern}", "data.num_workers=2", "data.shuffle_buffer=6", "data.val=",
              "data.bad_check_after=0", "train.batch_size=8", "train.max_steps=6", "train.save_every_n_steps=3",
              "train.keep_checkpoints=5", "train.run_name=run"]
    full = train(load_config(ROOT / "configs/shapes_tiny.yaml", [*common, f"train.output_dir={tmp_path / 'a'}"]))
    assert len(load_state(full / "checkpoints" / "step_00000003")["data"]["stream_cursors"]) == 2
    crashed = tmp_path / "b" / "run"  # as if killed right after the step-3 checkpoint
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_00000006")
    (crashed / "checkpoints" / "latest").write_text("step_00000003\n")
    (crashed / "metrics.jsonl").write_text("")
    train(load_config(ROOT / "configs/shapes_tiny.yaml",
                      [*common, f"train.output_dir={tmp_path / 'b'}", "train.resume=true"]))
    losses = [{m["step"]: m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
               if "loss" in m} for run in (full, crashed)]
    assert sorted(losses[1]) == [4, 5, 6] and all(losses[1][s] == losses[0][s] for s in (4, 5, 6))
