"""Data: odd-but-valid images, every kind of bad sample, deterministic replacement, the tensor-side transform,
sources (tables, HF datasets, WebDataset shards) training end to end, and exit codes of a run with bad data."""

import csv
import io
import json
import subprocess

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from contrastive.config import load_config
from contrastive.data import (
    BadRecord,
    BadSample,
    BadSampleTracker,
    ImageTransform,
    ImageTextDataset,
    ResumableBatchSampler,
    TableSource,
    decode_image,
    pick_caption,
    read_records,
    stable_id,
)
from contrastive.errors import DataError
from contrastive.data.shards import ShardStream, expand_shards
from contrastive.text.tokenizer import build_tokenizer
from contrastive.training.recipe import train
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.helpers.overrides import FAST
from contrastive.evaluation.plots import read_metrics
from tests.helpers.shards import write_shards

SHAPES = ROOT / "data/shapes"
GOOD = [row[:2] for row in csv.reader((SHAPES / "train.csv").read_text().splitlines()[1:])]


def tiny(tmp_path, *overrides):
    return load_config(ROOT / "configs/shapes_tiny.yaml",
                       [*FAST, f"train.output_dir={tmp_path}", "train.run_name=run", "data.val=", *overrides])


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------------
# odd but valid images


def _exif_rotated() -> bytes:
    a = np.zeros((2, 4, 3), np.uint8)
    a[0, 0] = 255  # top-left marker of the stored (landscape) pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display = rotate 90 degrees clockwise
    return png_bytes(Image.fromarray(a), format="JPEG", quality=100, exif=exif.tobytes())


ODD = {
    "cmyk": (lambda: png_bytes(Image.new("CMYK", (8, 6), (0, 0, 0, 0)), format="JPEG", quality=100), (8, 6), (255, 255, 255)),
    "palette_transparent": (lambda: png_bytes(Image.new("P", (5, 5), 0), transparency=0), (5, 5), (255, 255, 255)),
    "grey_alpha": (lambda: png_bytes(Image.new("LA", (4, 4), (0, 0))), (4, 4), (255, 255, 255)),
    "grey16": (lambda: png_bytes(Image.fromarray(np.full((3, 3), 65535, np.uint16))), (3, 3), (255, 255, 255)),
    "grey16_mid": (lambda: png_bytes(Image.fromarray(np.full((3, 3), 257 * 100, np.uint16))), (3, 3), (100, 100, 100)),
    "one_pixel": (lambda: png_bytes(Image.new("RGB", (1, 1), (10, 20, 30))), (1, 1), (10, 20, 30)),
    "bilevel": (lambda: png_bytes(Image.new("1", (7, 3), 1)), (7, 3), (255, 255, 255)),
}


@pytest.mark.parametrize("kind", list(ODD))
def test_odd_images_become_rgb(kind):
    make, size, pixel = ODD[kind]
    img = decode_image(make())
    assert img.mode == "RGB" and img.size == size
    got = np.asarray(img)[0, 0]
    assert np.abs(got.astype(int) - np.array(pixel)).max() <= 2, got
    pixels = ImageTransform(16, [0.5] * 3, [0.5] * 3, train=True)(img)
    assert pixels.shape == (3, 16, 16) and torch.isfinite(pixels).all()


def test_exif_orientation_is_applied():
    img = decode_image(_exif_rotated())
    assert img.size == (2, 4)  # portrait after rotating the 4x2 stored pixels
    a = np.asarray(img).sum(-1)
    assert a[0, 1] > 300 and a[0, 0] < 100  # the stored top-left pixel is now at the top right


def test_jpeg_draft_decodes_smaller_but_keeps_min_side(tmp_path):
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)).save(path, quality=90)
    assert decode_image(str(path)).size == (640, 480)
    small = decode_image(str(path), min_side=100)
    assert small.size == (160, 120)  # 1/4 scale: the smallest power-of-two reduction with a side >= 100


# ----------------------------------------------------------------------------------------------------------------------
# bad samples, one kind at a time


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = (SHAPES / GOOD[0][0]).read_bytes()
    (d / "empty.jpg").write_bytes(b"")
    (d / "garbage.jpg").write_bytes(b"this is not an image at all" * 10)
    big = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    full = png_bytes(Image.fromarray(big), format="JPEG", quality=95)
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    Image.new("1", (9500, 9500)).save(d / "bomb.png")  # 90.25 M pixels > Pillow's 89.48 M limit, a few kB on disk
    (d / "good.jpg").write_bytes(good)
    return d


@pytest.mark.parametrize("name,reason", [("missing.jpg", "missing_file"), ("empty.jpg", "empty_file"),
                                         ("garbage.jpg", "corrupt_image"), ("truncated.jpg", "corrupt_image"),
                                         ("bomb.png", "decompression_bomb")])
def test_bad_image_files_raise_their_reason(bad_files, name, reason):
    with pytest.raises(BadSample) as e:
        decode_image(str(bad_files / name))
    assert e.value.reason == reason
    if name != "missing.jpg":
        with pytest.raises(BadSample) as e:
            decode_image((bad_files / name).read_bytes())  # the same from bytes (HF datasets, shards)
        assert e.value.reason == reason


def test_pixel_limit_is_configurable(bad_files):
    assert decode_image(str(bad_files / "good.jpg")).size == (64, 64)
    with pytest.raises(BadSample, match="decompression_bomb"):
        decode_image(str(bad_files / "good.jpg"), max_pixels=64 * 64 - 1)


@pytest.mark.parametrize("captions,reason", [([""], "empty_caption"), (["  \t "], "empty_caption"),
                                             (["caf\udce9"], "bad_text"), ([b"caf\xe9"], "bad_text"), ([], "missing_columns")])
def test_bad_captions_raise_their_reason(captions, reason):
    with pytest.raises(BadSample) as e:
        pick_caption(captions)
    assert e.value.reason == reason


def test_pick_caption_skips_empty_and_draws_from_the_rest():
    g = torch.Generator().manual_seed(0)
    assert {pick_caption(["", "a", " ", "b"], g) for _ in range(30)} == {"a", "b"}


def write_bad_csv(path, bad_files, n_good):
    """A CSV with `n_good` good rows then one row of every bad kind (two of the empty caption and corrupt kinds)."""
    lines = [b"image,caption"] + [f'{SHAPES / img},"{cap}"'.encode() for img, cap in GOOD[:n_good]]
    good = str(bad_files / "good.jpg").encode()
    lines += [
        str(bad_files / "missing.jpg").encode() + b",a red circle",
        str(bad_files / "empty.jpg").encode() + b",a red circle",
        str(bad_files / "garbage.jpg").encode() + b",a red circle",
        str(bad_files / "truncated.jpg").encode() + b",a red circle",
        str(bad_files / "bomb.png").encode() + b",a red circle",
        good + b",",
        good + b",   ",
        good + b",caf\xe9 au lait",
        good,  # no caption column at all
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {"missing_file": 1, "empty_file": 1, "corrupt_image": 2, "decompression_bomb": 1, "empty_caption": 2,
            "bad_text": 1, "missing_columns": 1}


def test_table_rows_name_file_and_row(tmp_path, bad_files):
    csv_path = tmp_path / "t.csv"
    write_bad_csv(csv_path, bad_files, 3)
    source = TableSource(str(csv_path), "image", "caption")
    assert len(source) == 12
    with pytest.raises(BadSample, match="missing_columns"):
        source.get(11)
    assert source.where(11) == f"{csv_path} row 13"
    assert len(read_records(str(csv_path), "image", "caption")) == 8  # bad captions are dropped; bad files only show on decode


def test_repeated_rows_and_list_columns_give_all_captions_for_evaluation(tmp_path):
    (tmp_path / "t.csv").write_text("image,caption\na.jpg,one\nb.jpg,two\na.jpg,three\na.jpg,one\n")
    records = read_records(str(tmp_path / "t.csv"), "image", "caption")
    assert [(r.image, r.captions) for r in records] == [(str(tmp_path / "a.jpg"), ["one", "three"]), (str(tmp_path / "b.jpg"), ["two"])]
    assert len(TableSource(str(tmp_path / "t.csv"), "image", "caption")) == 4  # training visits every row
    (tmp_path / "t.jsonl").write_text(json.dumps({"image": "a.jpg", "caption": ["x", "y"]}) + "\n")
    assert read_records(str(tmp_path / "t.jsonl"), "image", "caption")[0].captions == ["x", "y"]


def test_bad_rows_are_replaced_deterministically(tmp_path, bad_files):
    csv_path = tmp_path / "t.csv"
    expected = write_bad_csv(csv_path, bad_files, 6)
    ds = ImageTextDataset(TableSource(str(csv_path), "image", "caption"), ImageTransform(32, [0.5] * 3, [0.5] * 3, train=True))
    seen: dict[str, int] = {}
    for index in range(6, 15):
        a, b = ds[(index, 1234 + index)], ds[(index, 1234 + index)]
        assert a.pixels is not None and a.pixels.shape == (3, 32, 32)
        torch.testing.assert_close(a.pixels, b.pixels, rtol=0, atol=0)
        assert a.caption == b.caption and a.bad == b.bad
        assert a.bad and a.bad[0].where.startswith(f"{csv_path} row {index + 2}")
        seen[a.bad[0].reason] = seen.get(a.bad[0].reason, 0) + 1
    assert seen == expected


def test_tracker_counts_distinct_and_stops_on_fraction():
    t = BadSampleTracker("skip", max_bad_fraction=0.25, min_loads=8)
    rec = BadRecord("missing_file", "x.csv row 2", stable_id("x.csv row 2"))
    t.update(4, [rec, rec])  # the same bad sample twice: one bad sample, two skips
    assert t.counts == {"missing_file": 1} and t.skips == 2 and t.total == 1
    t.update(4, [])  # 2 of 8 loads bad = 0.25, not above the limit
    with pytest.raises(DataError, match=r"3 of 9 samples loaded were bad .*max_bad_fraction=0.25"):
        t.update(1, [BadRecord("empty_caption", "x.csv row 3", 7)])
    again = BadSampleTracker()
    again.load_state_dict(t.state_dict())
    assert again.counts == t.counts and again.skips == t.skips and again._seen == t._seen


def test_error_mode_names_file_and_row():
    t = BadSampleTracker("error")
    with pytest.raises(DataError, match=r"^bad sample at x.csv row 5 \(a.jpg\): image file not found"):
        t.update(1, [BadRecord("missing_file", "x.csv row 5 (a.jpg)", 1)])


# ----------------------------------------------------------------------------------------------------------------------
# transform and order


def test_eval_transform_matches_resize_and_centre_crop():
    a = torch.randint(0, 256, (3, 48, 80), dtype=torch.uint8)
    img = Image.fromarray(a.permute(1, 2, 0).numpy())
    t = ImageTransform(24, [0.5] * 3, [0.25] * 3, train=False)
    ref = TF.center_crop(TF.resize(a, [24], interpolation=TF.InterpolationMode.BICUBIC, antialias=True), [24, 24])
    ref = (ref.float() / 255 - 0.5) / 0.25
    # cropping first differs only where the resize kernel would reach past the crop: the outer columns
    torch.testing.assert_close(t(img)[:, :, 2:-2], ref[:, :, 2:-2], rtol=0, atol=2 / 255 / 0.25)


def test_train_crops_stay_inside_and_cover_the_scale_range():
    t = ImageTransform(16, [0.5] * 3, [0.5] * 3, train=True, crop_scale=(0.5, 1.0))
    g = torch.Generator().manual_seed(0)
    areas = []
    for _ in range(200):
        top, left, h, w = t.crop_box(60, 90, g)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90
        areas.append(h * w / (60 * 90))
    assert 0.49 < min(areas) < 0.6 and max(areas) > 0.85  # a 4:3 crop covers at most 0.89 of a 3:2 image


def test_ranks_split_global_batches_and_resume_continues():
    full = list(ResumableBatchSampler(40, 8, seed=3, epoch=1))
    ranks = [list(ResumableBatchSampler(40, 8, seed=3, epoch=1, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == full
    assert list(ResumableBatchSampler(40, 8, seed=3, epoch=1, start_batch=3)) == full[3:]


# ----------------------------------------------------------------------------------------------------------------------
# end to end: bad data, exit codes


def test_csv_with_every_bad_kind_trains_to_the_end(tmp_path, bad_files, capsys):
    csv_path = tmp_path / "bad.csv"
    expected = write_bad_csv(csv_path, bad_files, 55)  # 55 good + 9 bad = 64 rows = two batches of 32: one epoch
    run = train(tiny(tmp_path, f"data.train={csv_path}", "train.batch_size=32", "train.max_steps=2",
                     "data.max_bad_fraction=0.5", "data.bad_check_after=0"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["data"]["bad_samples"] == expected  # every bad row is met once as itself in the epoch
    assert summary["data"]["bad_skips"] >= 9 and summary["data"]["samples_loaded"] == 64 + summary["data"]["bad_skips"]
    err = capsys.readouterr().err
    assert err.count("skipped bad sample:") == 5 and f"{csv_path} row" in err
    meta_losses = read_metrics(run)
    assert meta_losses[-1]["bad_samples"] == 9


def _cli_train(tmp_path, *overrides):
    cmd = [PYTHON, "-m", "contrastive", "train", "--config", str(ROOT / "configs/shapes_tiny.yaml"), *FAST,
           f"train.output_dir={tmp_path}", "train.run_name=run", "data.val=", "train.batch_size=32", "train.max_steps=2",
           *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=ROOT, timeout=300)


@pytest.mark.slow
def test_cli_error_mode_and_bad_fraction_exit_2_with_one_line(tmp_path, bad_files):
    csv_path = tmp_path / "bad.csv"
    write_bad_csv(csv_path, bad_files, 55)
    r = _cli_train(tmp_path / "a", f"data.train={csv_path}", "data.on_bad_sample=error")
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"contrastive train: error: bad sample at {csv_path} row ") and "Traceback" not in r.stderr
    r = _cli_train(tmp_path / "b", f"data.train={csv_path}", "data.max_bad_fraction=0.05", "data.bad_check_after=32")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "data.max_bad_fraction=0.05" in r.stderr.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------------------------------------
# sources end to end


def _rows(n):
    return [(SHAPES / img, cap) for img, cap in GOOD[:n]]


def test_hf_save_to_disk_trains_and_counts_truncation(tmp_path):
    rows = _rows(64)
    ds = datasets.Dataset.from_dict({"img": [str(p) for p, _ in rows], "text": [c for _, c in rows]})
    ds = ds.cast_column("img", datasets.Image())
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))
    run = train(tiny(tmp_path, f"data.train={tmp_path / 'hf'}", "data.image_key=img", "data.caption_key=text",
                     "train.batch_size=32", "train.max_steps=2", "model.context_length=24", "model.tokenizer=byte"))
    summary = json.loads((run / "summary.json").read_text())["data"]
    tok = build_tokenizer("byte", 24)
    tok([c for _, c in rows])
    assert summary["truncated_captions"] == tok.num_truncated > 0 and summary["captions_seen"] == 64
    assert summary["bad_samples"] == {}


@pytest.mark.slow
def test_hf_imagefolder_trains(tmp_path, bad_files):
    folder = tmp_path / "folder" / "train"
    folder.mkdir(parents=True)
    meta = []
    for i, (p, cap) in enumerate(_rows(63)):
        (folder / f"{i:03d}.jpg").write_bytes(p.read_bytes())
        meta.append({"file_name": f"{i:03d}.jpg", "caption": cap})
    (folder / "bad.jpg").write_bytes(b"not a jpeg")
    meta.append({"file_name": "bad.jpg", "caption": "a red circle"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    run = train(tiny(tmp_path, f"data.train={tmp_path / 'folder'}", "train.batch_size=32", "train.max_steps=2",
                     "data.bad_check_after=0", "data.max_bad_fraction=0.5"))
    assert json.loads((run / "summary.json").read_text())["data"]["bad_samples"] == {"corrupt_image": 1}


def _stream_ids(pattern, world_size, workers, start_batch=0, batch_size=8):
    cfg = load_config(None, [f"data.train={pattern}", f"data.num_workers={workers}", "data.shuffle_buffer=4"])
    batches = []
    for rank in range(world_size):
        stream = ShardStream(cfg.data, ImageTransform(16, [0.5] * 3, [0.5] * 3, train=True), build_tokenizer("byte", 16),
                             batch_size, seed=0, rank=rank, world_size=world_size)
        stream.set_position(0, start_batch)
        batches.append([b for b in DataLoader(stream, batch_size=None, num_workers=workers)])
    return stream.steps_per_epoch, batches


def test_shards_split_across_ranks_and_workers_without_duplicates(tmp_path):
    pattern = write_shards(tmp_path / "shards", 8, 10)
    assert len(expand_shards(pattern)) == 8
    steps, per_rank = _stream_ids(pattern, world_size=2, workers=2)
    assert steps == 10 and all(len(b) == steps for b in per_rank)  # 80 samples / global batch 8
    ids = [int(i) for batches in per_rank for b in batches for i in b["image_ids"]]
    assert len(ids) == 80 and len(set(ids)) == 80
    # resuming at batch 3 gives exactly the batches that followed
    _, resumed = _stream_ids(pattern, world_size=2, workers=2, start_batch=3)
    for full, again in zip(per_rank, resumed):
        assert len(again) == steps - 3
        for a, b in zip(full[3:], again):
            assert torch.equal(a["image_ids"], b["image_ids"])
            torch.testing.assert_close(a["pixels"], b["pixels"], rtol=0, atol=0)


def test_webdataset_shards_train_with_a_bad_member(tmp_path):
    pattern = write_shards(tmp_path / "shards", 4, 17, bad_in_first=True)
    run = train(tiny(tmp_path, f"data.train={pattern}", "data.num_workers=2", "train.batch_size=32", "train.max_steps=3",
                     "data.bad_check_after=0", "data.shuffle_buffer=8"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["data"]["bad_samples"] == {"corrupt_image": 1}


def test_trim_padding_keeps_every_caption_and_the_features():
    from contrastive.data.samples import trim_padding
    from contrastive.encoders.text import TextTransformer
    from contrastive.text.tokenizer import build_tokenizer

    tok = build_tokenizer("byte", 64)
    captions = ["a red circle", "a small blue square at the top left", "x"]
    tokens = tok(captions)  # (3, 64)
    trimmed = trim_padding(tokens, tok.pad_token_id)
    longest = len(captions[1]) + 2  # bytes + start + end
    assert trimmed.shape == (3, 40) and trimmed.shape[1] >= longest  # rounded up to a multiple of 8
    torch.testing.assert_close(trimmed, tokens[:, :40])
    assert (tokens[:, 40:] == tok.pad_token_id).all()  # only shared padding went
    assert trim_padding(tokens, tok.pad_token_id, multiple=1).shape[1] == longest
    full = tok(["y" * 100])  # truncated to the context: nothing to trim
    assert trim_padding(full, tok.pad_token_id) is full
    torch.manual_seed(0)
    tower = TextTransformer(vocab_size=259, context_length=64, width=32, layers=2, heads=2).eval()
    with torch.no_grad():
        torch.testing.assert_close(tower(trimmed), tower(tokens), rtol=1e-5, atol=1e-6)
    # left padding is not trimmed (the kept columns would not be the real tokens)
    left = {"input_ids": torch.tensor([[0, 5, 6], [4, 5, 6]]), "attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    assert trim_padding(left, 0, multiple=1) is left


def test_loader_batches_are_trimmed(tmp_path):
    from contrastive.config import DataConfig, ModelConfig
    from contrastive.data import TrainData
    from contrastive.text.tokenizer import build_tokenizer

    from PIL import Image

    rows = ["image,caption"]
    for i in range(8):
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{'a red square' if i % 2 else 'red'}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    model_cfg = ModelConfig(image_size=16, context_length=64)
    shapes = {}
    for trim in (True, False):
        data_cfg = DataConfig(train=str(tmp_path / "train.csv"), num_workers=0, trim_padding=trim)
        data = TrainData(data_cfg, model_cfg, build_tokenizer("byte", 64), 4, seed=0)
        shapes[trim] = [tuple(b["tokens"].shape) for b in data.batches(0, 0)]
    assert shapes == {True: [(4, 16), (4, 16)], False: [(4, 64), (4, 64)]}


def collate_captions(captions, tokenizer, trim=True):
    from contrastive.data.samples import Collate, Sample

    samples = [Sample(torch.zeros(3, 4, 4), c, f"img{i}.png") for i, c in enumerate(captions)]
    return Collate(tokenizer, trim)(samples)


def test_duplicate_text_ids_follow_the_tokens_the_model_sees():
    # the tokenizer lowercases and collapses whitespace, so these reach the text tower as the same tokens: the
    # duplicate-aware loss must not push them apart as negatives
    tok = build_tokenizer("byte", 16)
    captions = ["a red circle", "A Red  Circle", " a red\tcircle ", "a red square",
                "a red circle seen from far away", "a red circle seen from close by"]  # differ after the cut at 16
    batch = collate_captions(captions, tok)
    ids = batch["text_ids"].tolist()
    assert ids[0] == ids[1] == ids[2]
    assert ids[3] != ids[0]
    assert ids[4] == ids[5] != ids[0]  # truncated to the same 16 tokens
    assert torch.equal(batch["tokens"][4], batch["tokens"][5])
    assert len(set(batch["image_ids"].tolist())) == 6  # images keep their own ids
    # a caption's id does not depend on how far its batch was trimmed (ranks trim their own batches)
    wide = build_tokenizer("byte", 64)
    batches = [collate_captions(["a red circle", "x"], wide), collate_captions(["a red circle", "y" * 30], wide),
               collate_captions(["a red circle"], wide, trim=False)]
    assert [b["tokens"].shape[1] for b in batches] == [16, 32, 64]
    assert len({b["text_ids"][0].item() for b in batches}) == 1


def test_duplicate_text_ids_of_token_dicts_ignore_masked_padding():
    from contrastive.data.samples import text_content_ids

    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 9, 0], [0, 5, 6, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 1, 1, 1, 0]])  # the last one padded on both sides
    got = text_content_ids({"input_ids": ids, "attention_mask": mask}, None).tolist()
    assert got[0] == got[2] != got[1]
    assert text_content_ids(ids[:, :4], 0).tolist()[0] == text_content_ids(ids, 0).tolist()[0]


def unopenable_images(folder):
    """Image paths that exist in the table but cannot be opened: a symlink loop, a name too long, a folder."""
    (folder / "loop_a.jpg").symlink_to(folder / "loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to(folder / "loop_a.jpg")
    (folder / "a_folder.jpg").mkdir()
    return [folder / "loop_a.jpg", folder / ("x" * 300 + ".jpg"), folder / "a_folder.jpg"]


def test_images_that_cannot_be_opened_are_bad_samples_of_their_own(tmp_path, monkeypatch):
    import contrastive.data.images as images

    for path in unopenable_images(tmp_path):
        with pytest.raises(BadSample) as e:
            decode_image(str(path))
        assert e.value.reason == "unreadable_file" and e.value.detail and str(tmp_path) not in e.value.detail
    (tmp_path / "locked.jpg").write_bytes((SHAPES / GOOD[0][0]).read_bytes())

    def denied(path, mode="r"):  # the tests run as root, which chmod cannot lock out
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(images, "open", denied, raising=False)
    with pytest.raises(BadSample, match="unreadable_file: Permission denied"):
        decode_image(str(tmp_path / "locked.jpg"))


def test_a_run_skips_and_counts_images_that_cannot_be_opened(tmp_path, capsys):
    from contrastive.cli import main

    bad = unopenable_images(tmp_path)
    table = tmp_path / "t.csv"
    rows = [f'{SHAPES / img},"{cap}"' for img, cap in GOOD[:13]] + [f"{p},a red circle" for p in bad]
    table.write_text("image,caption\n" + "\n".join(rows) + "\n")
    assert main(["train", "--config", str(ROOT / "configs/shapes_tiny.yaml"), *FAST, "model.tokenizer=byte",
                 "model.context_length=64", f"data.train={table}", "data.val=", "train.batch_size=16",
                 "train.max_steps=1", f"train.output_dir={tmp_path}", "train.run_name=run"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["bad_samples"] == {"unreadable_file": 3}
    for row in (15, 16, 17):  # each named by its table row
        assert f"skipped bad sample: {table} row {row} " in err and "image file cannot be opened" in err
