"""Build the Material Design Icons source: icons captioned by their names, trained filled, tested outlined.

train.csv: the Pictogrammers Material Design Icons (`@mdi/svg`) that are not outline variants ("account-box.svg"),
caption = the name in words ("account box"); test.csv: the outline variants ("account-box-outline.svg") of those
names, captioned like their filled twin. Licence: Apache-2.0 (Pictogrammers).

Usage: python benchmarks/mdi/prepare.py OUT_DIR [--size 64] [--train 2000] [--package TGZ]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from svgset import build, fetch, members, parse_args, words  # noqa: E402

PACKAGE = "@mdi/svg@7.4.47"


def pairs(tar):
    icons = members(tar, "package/svg")
    train = {n: (m, words(n)) for n, m in icons.items() if not n.endswith("-outline")}
    test = {n[: -len("-outline")]: (m, words(n[: -len("-outline")])) for n, m in icons.items() if n.endswith("-outline")}
    return train, test


def main():
    a = parse_args(__doc__)
    tar = fetch(PACKAGE, a.out, a.package)
    build(a.out, tar, *pairs(tar), a.size, a.train, folders=("filled", "outline"))


if __name__ == "__main__":
    main()
