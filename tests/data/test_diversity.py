"""Training data a contrastive loss cannot learn from is named in one warning line at start-up."""

import csv

from contrastive.data.diversity import diversity_warnings
from contrastive.data.sources import HFSource, TableSource
from tests.conftest import ROOT
from tests.helpers.overrides import small_run

SHAPES = ROOT / "data/shapes"


def table(tmp_path, caption=None, image=None, name="train.csv"):
    """The shapes training table with absolute image paths; every caption (image) replaced by `caption` (`image`)
    when given, or by `caption(i)` when it is a function."""
    rows = list(csv.DictReader((SHAPES / "train.csv").open()))
    for i, row in enumerate(rows):
        row["image"] = str(SHAPES / row["image"]) if image is None else image
        if caption is not None:
            row["caption"] = caption(i) if callable(caption) else caption
    path = tmp_path / name
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_varied_data_gives_no_warning(tmp_path):
    assert diversity_warnings(TableSource(str(table(tmp_path)), "image", "caption"), 64) == []


def test_identical_or_too_few_captions_or_images_are_named(tmp_path):
    same = diversity_warnings(TableSource(str(table(tmp_path, caption="a photo")), "image", "caption"), 16)
    assert len(same) == 1 and "every one of the" in same[0] and "captions in data.train is the same ('a photo')" in same[0]
    few = diversity_warnings(TableSource(str(table(tmp_path, caption=lambda i: f"shape {i % 5}")), "image", "caption"), 16)
    assert len(few) == 1 and "only 5 distinct captions" in few[0] and "a batch of 16" in few[0]
    assert diversity_warnings(TableSource(str(table(tmp_path, caption=lambda i: f"shape {i % 5}")), "image", "caption"), 4) == []
    one_image = diversity_warnings(TableSource(str(table(tmp_path, image=str(SHAPES / "images/train/00000.jpg"))),
                                               "image", "caption"), 16)
    assert len(one_image) == 1 and "images in data.train is the same" in one_image[0]
    assert all("\n" not in line for line in same + few + one_image)


def test_an_hf_dataset_is_checked_through_its_column(tmp_path):
    import datasets

    rows = list(csv.DictReader((SHAPES / "train.csv").open()))[:40]
    datasets.Dataset.from_dict({"image": [str(SHAPES / r["image"]) for r in rows],
                                "caption": ["a shape"] * len(rows)}).save_to_disk(str(tmp_path / "hf"))
    lines = diversity_warnings(HFSource(str(tmp_path / "hf"), "train", "image", "caption"), 8)
    assert len(lines) == 1 and "every one of the 40 captions" in lines[0]


def test_training_warns_once_at_start_up(tmp_path, capsys):
    train = table(tmp_path, caption="a photo")
    small_run(tmp_path, f"data.train={train}")
    err = capsys.readouterr().err
    assert err.count("warning: every one of the") == 1 and "captions in data.train is the same" in err
