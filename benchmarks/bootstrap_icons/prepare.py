"""Build the Bootstrap Icons source: icons captioned by their names, trained in one style, tested in another.

train.csv: Bootstrap's outline icons ("arrow-left-circle.svg"), caption = the name in words ("arrow left circle");
test.csv: the filled icons ("arrow-left-circle-fill.svg") of the names that have one, captioned like their outline
twin. Licence: MIT (Bootstrap Icons, copyright the Bootstrap Authors).

Usage: python benchmarks/bootstrap_icons/prepare.py OUT_DIR [--size 64] [--train 2000] [--package TGZ]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from svgset import build, fetch, members, parse_args, words  # noqa: E402

PACKAGE = "bootstrap-icons@1.13.2"


def pairs(tar):
    icons = members(tar, "package/icons")
    train = {n: (m, words(n)) for n, m in icons.items() if not n.endswith("-fill")}
    test = {n[: -len("-fill")]: (m, words(n[: -len("-fill")])) for n, m in icons.items() if n.endswith("-fill")}
    return train, test


def main():
    a = parse_args(__doc__)
    tar = fetch(PACKAGE, a.out, a.package)
    build(a.out, tar, *pairs(tar), a.size, a.train, folders=("outline", "fill"))


if __name__ == "__main__":
    main()
