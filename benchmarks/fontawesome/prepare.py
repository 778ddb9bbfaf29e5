"""Build the Font Awesome Free source: icons captioned by their names, trained solid, tested in the regular style.

train.csv: Font Awesome Free's solid icons (`@fortawesome/fontawesome-free`, "svgs/solid/address-book.svg"),
caption = the name in words ("address book"); test.csv: the regular (outline) style of the names Free draws in both.
Licence: icons CC BY 4.0 (Font Awesome Free by Fonticons, Inc.; attribution is required when the images are
shared); the package's fonts SIL OFL 1.1 and code MIT.

Usage: python benchmarks/fontawesome/prepare.py OUT_DIR [--size 64] [--train 2000] [--package TGZ]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from svgset import build, fetch, members, parse_args, words  # noqa: E402

PACKAGE = "@fortawesome/fontawesome-free@7.3.1"


def pairs(tar):
    solid, regular = members(tar, "package/svgs/solid"), members(tar, "package/svgs/regular")
    return ({n: (m, words(n)) for n, m in solid.items()}, {n: (m, words(n)) for n, m in regular.items()})


def main():
    a = parse_args(__doc__)
    tar = fetch(PACKAGE, a.out, a.package)
    build(a.out, tar, *pairs(tar), a.size, a.train, folders=("solid", "regular"))


if __name__ == "__main__":
    main()
