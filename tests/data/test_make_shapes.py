"""Tests for the synthetic shapes generator and for the copy of its output that the repository ships."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT

SHIPPED = ROOT / "data" / "shapes"

_spec = importlib.util.spec_from_file_location("make_shapes", ROOT / "scripts" / "make_shapes.py")
make_shapes = importlib.util.module_from_spec(_spec)
sys.modules["make_shapes"] = make_shapes  # dataclasses resolve their module through sys.modules
_spec.loader.exec_module(make_shapes)


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == make_shapes.CSV_HEADER
        return list(reader)


def _mentions(caption: str, obj: dict[str, str]) -> bool:
    return all(obj[k] in caption for k in ("shape", "color", "size", "position"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    make_shapes.main(["--output", str(out), "--train", "24", "--val", "12", "--size", "48", "--seed", "3"])
    return out


def test_same_seed_gives_identical_files(tiny: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_shapes.main(["--output", str(again), "--train", "24", "--val", "12", "--size", "48", "--seed", "3"])
    first, second = _tree_hashes(tiny), _tree_hashes(again)
    assert len(first) == 24 + 12 + 7  # images, 2 CSVs, val_multi.jsonl, 4 class lists
    assert first == second


def test_other_seed_gives_other_images(tiny: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    make_shapes.generate(other, 24, 12, size=48, seed=4)
    a, b = _tree_hashes(tiny), _tree_hashes(other)
    differing = [k for k in a if k.startswith("images/") and a[k] != b[k]]
    assert len(differing) == 36


def test_val_does_not_depend_on_train_count(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "more_train"
    make_shapes.generate(out, 30, 12, size=48, seed=3)
    assert (out / "val_multi.jsonl").read_bytes() == (tiny / "val_multi.jsonl").read_bytes()
    assert _tree_hashes(out / "images" / "val") == _tree_hashes(tiny / "images" / "val")


def test_regenerating_fewer_images_removes_stale_files(tmp_path: Path) -> None:
    make_shapes.generate(tmp_path, 10, 4, size=48, seed=0)
    make_shapes.generate(tmp_path, 5, 2, size=48, seed=0)
    assert len(list((tmp_path / "images" / "train").iterdir())) == 5
    assert len(list((tmp_path / "images" / "val").iterdir())) == 2


@pytest.mark.parametrize("split,n", [("train", 24), ("val", 12)])
def test_csv_rows_resolve_and_describe_their_image(tiny: Path, split: str, n: int) -> None:
    rows = _read_csv(tiny / f"{split}.csv")
    assert len(rows) == n
    for row in rows:
        path = tiny / row["image"]  # relative to the CSV's folder
        assert not Path(row["image"]).is_absolute() and path.is_file()
        with Image.open(path) as im:
            assert im.mode == "RGB" and im.size == (48, 48)
        assert row["shape"] in make_shapes.SHAPES
        assert row["color"] in make_shapes.COLORS
        assert row["size"] in make_shapes.SIZES
        assert row["position"] in make_shapes.POSITIONS
        assert _mentions(row["caption"], row), row


def test_val_multi_has_three_distinct_captions_naming_every_object(tiny: Path) -> None:
    rows = _read_csv(tiny / "val.csv")
    records = [json.loads(line) for line in (tiny / "val_multi.jsonl").read_text().splitlines()]
    assert [r["image"] for r in records] == [r["image"] for r in rows]
    for rec, row in zip(records, rows):
        assert len(rec["captions"]) == 3 and len(set(rec["captions"])) == 3
        assert rec["captions"][0] == row["caption"]
        assert rec["objects"][0] == {k: row[k] for k in ("shape", "color", "size", "position")}
        for caption in rec["captions"]:
            assert all(_mentions(caption, obj) for obj in rec["objects"]), caption


def test_class_files_list_every_value(tiny: Path) -> None:
    shapes = (tiny / "classes_shape.txt").read_text().splitlines()
    colors = (tiny / "classes_color.txt").read_text().splitlines()
    assert shapes == list(make_shapes.SHAPES) and colors == list(make_shapes.COLORS)
    assert 6 <= len(shapes) <= 8 and 6 <= len(colors) <= 8
    rows = _read_csv(tiny / "train.csv") + _read_csv(tiny / "val.csv")
    assert {r["shape"] for r in rows} <= set(shapes)
    assert {r["color"] for r in rows} <= set(colors)


def test_every_template_names_every_attribute() -> None:
    rng = np.random.default_rng(0)
    seen_pairs = 0
    for _ in range(300):
        scene = make_shapes.sample_scene(rng, 64)
        seen_pairs += len(scene.objects) == 2
        captions = make_shapes.caption_templates(scene)
        assert len(set(captions)) == len(captions) >= 3
        for caption in captions:
            for obj in scene.objects:
                assert _mentions(caption, {"shape": obj.shape, "color": obj.color, "size": obj.size,
                                           "position": obj.position}), caption
            assert re.search(r"\ba orange\b", caption) is None, caption
    assert 30 < seen_pairs < 120  # about a quarter of 300 scenes hold a second object


def test_rendered_objects_sit_in_their_cell_with_their_colour() -> None:
    rng = np.random.default_rng(1)
    size = 64
    names = list(make_shapes.COLORS)
    palette = np.array([make_shapes.COLORS[c] for c in names], dtype=np.float64)  # (8, 3)
    for _ in range(60):
        scene = make_shapes.sample_scene(rng, size)
        decoded = Image.open(io.BytesIO(
            make_shapes.encode_image(make_shapes.render_scene(scene, size, rng), "jpg")))
        pixels = np.asarray(decoded.convert("RGB"), dtype=np.float64)  # (H, W, 3)
        for obj in scene.objects:
            mask = make_shapes._object_mask(obj, size)  # (H, W)
            ys, xs = np.nonzero(mask > 0.5)
            row, col = divmod(make_shapes.POSITIONS.index(obj.position), 3)
            cy, cx = ys.mean() + 0.5, xs.mean() + 0.5
            assert row * size / 3 <= cy < (row + 1) * size / 3, (obj, cy)
            assert col * size / 3 <= cx < (col + 1) * size / 3, (obj, cx)
            inside = pixels[mask > 0.95].mean(axis=0)  # (3,)
            nearest = names[int(np.argmin(((palette - inside) ** 2).sum(axis=1)))]
            assert nearest == obj.color, (obj, inside)
        if len(scene.objects) == 2:
            first, second = (make_shapes._object_mask(o, size) for o in scene.objects)
            assert (first * second).max() == 0.0


def test_shipped_set_matches_the_documented_command(tmp_path: Path) -> None:
    """data/shapes is what ``make_shapes.py`` with default arguments writes; its text files are byte-identical and
    its images decode to the same pixels (up to JPEG decoder rounding across library versions)."""
    assert SHIPPED.is_dir(), "data/shapes is missing; run: python -m scripts.make_shapes"
    make_shapes.main(["--output", str(tmp_path)])
    for name in ("train.csv", "val.csv", "val_multi.jsonl", "classes_shape.txt", "classes_color.txt",
                 "classes_size.txt", "classes_position.txt"):
        assert (SHIPPED / name).read_bytes() == (tmp_path / name).read_bytes(), name
    rows = _read_csv(SHIPPED / "train.csv") + _read_csv(SHIPPED / "val.csv")
    assert len(rows) == 2400
    for row in rows[::7]:
        shipped = np.asarray(Image.open(SHIPPED / row["image"]).convert("RGB"), dtype=np.int16)
        fresh = np.asarray(Image.open(tmp_path / row["image"]).convert("RGB"), dtype=np.int16)
        assert shipped.shape == (64, 64, 3)
        assert np.abs(shipped - fresh).mean() < 1.0, row["image"]
    total = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert total < 4_000_000
