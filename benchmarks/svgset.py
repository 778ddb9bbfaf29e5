"""What the SVG sources' `prepare.py` scripts share: fetch an npm package (`npm pack`, or a local `.tgz`), render its
SVGs on white, and write aligned `train.csv` / `test.csv` tables (`image` path relative to the table, `caption`).

A source pairs two renderings of the same things (another style, another crop): `train` and `test` map a key to
(the SVG's path in the package, its caption). test.csv holds every key of `test` that `train` also has; train.csv
holds those keys and a seeded sample of its other keys, up to `--train` rows in all, so every test caption is a
training caption drawn in another way. Column `in_test` marks the training rows whose key is tested.

Needs npm (unless --package is given) and `pip install cairosvg` (with the system's libcairo2).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import subprocess
import tarfile
from typing import Callable

Pairs = dict[str, tuple[str, str]]  # key -> (member path in the package, caption)


def parse_args(doc: str, default_train: int = 2000) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder for train.csv, test.csv and the images")
    ap.add_argument("--size", type=int, default=64, help="images are size x size pixels")
    ap.add_argument("--train", type=int, default=default_train, help="training rows; 0 = every key")
    ap.add_argument("--package", default="", help="a local npm .tgz of the package (default: npm pack it into OUT/npm)")
    return ap.parse_args()


def fetch(spec: str, out: str, package: str = "") -> tarfile.TarFile:
    """The package's tarball: `package` when given, else `npm pack spec` cached in OUT/npm."""
    if package:
        return tarfile.open(package)
    cache = os.path.join(out, "npm")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, spec.lstrip("@").replace("/", "-").rsplit("@", 1)[0] + "-" + spec.rsplit("@", 1)[1] + ".tgz")
    if not os.path.exists(path):
        subprocess.run(["npm", "pack", spec], cwd=cache, check=True, capture_output=True)
    return tarfile.open(path)


def members(tar: tarfile.TarFile, folder: str, suffix: str = ".svg") -> dict[str, str]:
    """{file name without `suffix`: member path} of the files directly in `folder`."""
    prefix = folder.rstrip("/") + "/"
    return {m.name[len(prefix):-len(suffix)]: m.name for m in tar.getmembers()
            if m.isfile() and m.name.startswith(prefix) and m.name.endswith(suffix) and "/" not in m.name[len(prefix):]}


def words(name: str) -> str:
    """`arrow-big-down` -> `arrow big down`."""
    return " ".join(name.replace("_", "-").split("-"))


def render(svg: bytes, size: int):
    """The SVG drawn to fit a size x size white square (its aspect kept, centred)."""
    import cairosvg
    from PIL import Image

    png = cairosvg.svg2png(bytestring=svg, output_width=size)
    im = Image.open(io.BytesIO(png))
    if im.height > size:
        im = Image.open(io.BytesIO(cairosvg.svg2png(bytestring=svg, output_height=size)))
    im = im.convert("RGBA")
    square = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    square.alpha_composite(im, ((size - im.width) // 2, (size - im.height) // 2))
    return square.convert("RGB")


def build(out: str, tar: tarfile.TarFile, train: Pairs, test: Pairs, size: int, limit: int,
          folders: tuple[str, str] = ("train", "test"), log: Callable[[str], None] = print) -> tuple[int, int]:
    """Render and write train.csv / test.csv (see the module docstring); (training rows, test rows)."""
    shared = sorted(set(train) & set(test))
    rest = sorted(set(train) - set(test))
    random.Random(0).shuffle(rest)
    keys = sorted(shared + (rest if limit == 0 else rest[: max(0, limit - len(shared))]))
    for split, split_keys, pairs, folder in (("train", keys, train, folders[0]), ("test", shared, test, folders[1])):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
        with open(os.path.join(out, f"{split}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "caption", "in_test"])
            for key in split_keys:
                member, caption = pairs[key]
                rel = os.path.join(folder, key.replace("/", "_") + ".png")
                if not os.path.exists(os.path.join(out, rel)):
                    render(tar.extractfile(member).read(), size).save(os.path.join(out, rel))
                w.writerow([rel, caption, int(key in test)])
    log(f"{len(keys)} training rows ({folders[0]}), {len(shared)} test rows ({folders[1]}); {out}")
    return len(keys), len(shared)


def run(doc: str, package: str, pairs, folders: tuple[str, str], default_train: int = 2000) -> None:
    """A source's whole command: parse OUT and the options, fetch the package, write the two tables and images.
    `pairs(tar)` gives (train, test) as {key: (member, caption)}; `folders` name the two splits' image folders."""
    a = parse_args(doc, default_train)
    tar = fetch(package, a.out, a.package)
    build(a.out, tar, *pairs(tar), a.size, a.train, folders=folders)
