"""Build the Phosphor source: icons captioned by their names, trained in the regular weight, tested filled.

train.csv: Phosphor's regular icons (`@phosphor-icons/core`, "assets/regular/address-book.svg"), caption = the
name in words ("address book"); test.csv: the fill weight of the same names ("assets/fill/address-book-fill.svg").
Licence: MIT (Phosphor Icons).

Usage: python benchmarks/phosphor/prepare.py OUT_DIR [--size 64] [--train 2000] [--package TGZ]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from svgset import build, fetch, members, parse_args, words  # noqa: E402

PACKAGE = "@phosphor-icons/core@2.1.1"


def pairs(tar):
    regular, fill = members(tar, "package/assets/regular"), members(tar, "package/assets/fill")
    train = {n: (m, words(n)) for n, m in regular.items()}
    test = {n[: -len("-fill")]: (m, words(n[: -len("-fill")])) for n, m in fill.items() if n.endswith("-fill")}
    return train, test


def main():
    a = parse_args(__doc__)
    tar = fetch(PACKAGE, a.out, a.package)
    build(a.out, tar, *pairs(tar), a.size, a.train, folders=("regular", "fill"))


if __name__ == "__main__":
    main()
