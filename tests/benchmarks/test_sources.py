"""The SVG sources' prepare scripts (`benchmarks/<name>/prepare.py`) on a fixture package of tiny SVGs (no
network): aligned train/test tables whose test captions are training captions drawn another way."""

import csv
import io
import json
import subprocess
import tarfile

import pytest
from PIL import Image

from tests.conftest import PYTHON, ROOT, subprocess_env

CIRCLE = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="{r}"/></svg>'
WIDE = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 40 30"><rect width="40" height="{h}" fill="red"/></svg>'

# script -> (files of its package: path -> svg, expected training captions, expected test captions)
LAYOUTS = {
    "bootstrap_icons": ({"icons/arrow-left.svg": CIRCLE.format(r=3), "icons/arrow-left-fill.svg": CIRCLE.format(r=7),
                         "icons/bell.svg": CIRCLE.format(r=5)}, ["arrow left", "bell"], ["arrow left"]),
    "mdi": ({"svg/account-box.svg": CIRCLE.format(r=3), "svg/account-box-outline.svg": CIRCLE.format(r=7),
             "svg/bell.svg": CIRCLE.format(r=5)}, ["account box", "bell"], ["account box"]),
    "phosphor": ({"assets/regular/address-book.svg": CIRCLE.format(r=3), "assets/regular/bell.svg": CIRCLE.format(r=5),
                  "assets/fill/address-book-fill.svg": CIRCLE.format(r=7)}, ["address book", "bell"], ["address book"]),
    "fontawesome": ({"svgs/solid/alarm-clock.svg": CIRCLE.format(r=3), "svgs/solid/bell.svg": CIRCLE.format(r=5),
                     "svgs/regular/alarm-clock.svg": CIRCLE.format(r=7)}, ["alarm clock", "bell"], ["alarm clock"]),
    "flags": ({"flags/4x3/xa.svg": WIDE.format(h=10), "flags/4x3/xb.svg": WIDE.format(h=20),
               "flags/1x1/xa.svg": CIRCLE.format(r=7),
               "country.json": json.dumps([{"code": "xa", "name": "Aland"}, {"code": "xb", "name": "Bee Island"}])},
              ["Aland", "Bee Island"], ["Aland"]),
}


def write_package(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def read(table):
    with open(table, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_prepare_writes_aligned_train_and_test_tables(tmp_path, name):
    files, train_captions, test_captions = LAYOUTS[name]
    write_package(tmp_path / "package.tgz", files)
    out = tmp_path / "out"
    subprocess.run([PYTHON, "-m", f"benchmarks.{name}.prepare", str(out), "--size", "16",
                    "--package", str(tmp_path / "package.tgz")], check=True, env=subprocess_env(), capture_output=True, cwd=ROOT)
    train, test = read(out / "train.csv"), read(out / "test.csv")
    assert [r["caption"] for r in train] == train_captions and [r["caption"] for r in test] == test_captions
    assert [r["in_test"] for r in train] == ["1", "0"]
    for row in train + test:
        assert Image.open(out / row["image"]).size == (16, 16)
    pictures = [Image.open(out / r["image"]).tobytes() for r in (train[0], test[0])]
    assert pictures[0] != pictures[1]  # the test row is the same caption drawn another way
