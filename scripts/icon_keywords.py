"""Give the icons benchmark's training icons their designer's keywords: a `keywords` column in train.csv.

    python -m scripts.icon_keywords ../bench-data/icons
    python -m scripts.bench_recipes ../bench-data/icons --variant base: --variant "kw:data.caption_key=caption,keywords"

Tabler ships a list of search tags with every icon (`icons.json` in its npm pack, which the benchmark's build leaves
in DIR/npm): "abacus" has "counting, calculation, math, beads, ...". This adds them to each training row as one
second caption (tags in words, comma-separated; the icon's name when it has none), so a recipe can pool the two
(`data.caption_key=caption,keywords`: each time a row is drawn, one of its captions). Test captions stay the names;
no scoring reads the column. The file is replaced whole (written beside it, then renamed), and running again
rewrites the same column.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tarfile
from pathlib import Path

MEMBER = "package/icons.json"


def tabler_tags(pack: Path) -> dict[str, list[str]]:
    """{icon name: its tags} from a tabler-icons npm pack (.tgz)."""
    with tarfile.open(pack) as tar:
        try:
            f = tar.extractfile(MEMBER)
        except KeyError:
            raise SystemExit(f"{pack} has no {MEMBER}: not a tabler-icons npm pack") from None
        icons = json.load(f)
    return {name: [str(t) for t in entry.get("tags") or []] for name, entry in icons.items()}


def keywords(name: str, tags: list[str]) -> str:
    """One caption of an icon's tags, in words ("no-signal" -> "no signal"); its name in words when it has none."""
    words = list(dict.fromkeys(t.replace("-", " ").strip() for t in tags if t.strip()))
    return ", ".join(words) or name.replace("-", " ")


def add_keywords(data: Path, pack: Path) -> tuple[int, int]:
    """Rewrite DIR/train.csv with a `keywords` column: (rows, rows whose icon has tags)."""
    tags = tabler_tags(pack)
    table = data / "train.csv"
    with open(table, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [k for k in reader.fieldnames or [] if k != "keywords"] + ["keywords"]
        rows = list(reader)
    if not rows or "image" not in rows[0]:
        raise SystemExit(f"{table} has no rows with an image column")
    tagged = 0
    for r in rows:
        name = Path(r["image"]).stem
        tagged += bool(tags.get(name))
        r["keywords"] = keywords(name, tags.get(name, []))
    tmp = table.with_name(table.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, table)
    return len(rows), tagged


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="the icons benchmark folder (train.csv, npm/tabler-icons-*.tgz)")
    p.add_argument("--pack", default="", help="the tabler-icons npm pack (default: the one DIR/npm/tabler-icons-*.tgz)")
    a = p.parse_args(argv)
    data = Path(a.data)
    packs = [Path(a.pack)] if a.pack else sorted((data / "npm").glob("tabler-icons-*.tgz"))
    if len(packs) != 1 or not packs[0].is_file():
        raise SystemExit(f"found {len(packs)} tabler-icons packs, give one with --pack" if len(packs) > 1 else
                         f"no tabler-icons pack found (looked for {a.pack or data / 'npm/tabler-icons-*.tgz'})")
    rows, tagged = add_keywords(data, packs[0])
    print(f"{data / 'train.csv'}: keywords for {rows} rows ({tagged} from {packs[0].name}'s tags, the rest their names)")


if __name__ == "__main__":
    main()
