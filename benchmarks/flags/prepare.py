"""Build the flags source: country and region flags captioned by the country's name, trained in the 4:3 drawing,
tested in the square one.

train.csv: flag-icons' 4:3 flags ("flags/4x3/no.svg", letterboxed on white), caption = the name its country.json
gives ("Norway", "Bosnia and Herzegovina"); test.csv: the 1:1 drawings of the same flags, which crop and recompose
the design. Licence: MIT (flag-icons, Panayiotis Lipiridis and contributors).

Usage: python benchmarks/flags/prepare.py OUT_DIR [--size 64] [--train 0] [--package TGZ]
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from svgset import build, fetch, members, parse_args, words  # noqa: E402

PACKAGE = "flag-icons@7.5.0"


def pairs(tar):
    countries = json.load(tar.extractfile("package/country.json"))
    wide, square = members(tar, "package/flags/4x3"), members(tar, "package/flags/1x1")
    names = {c["code"]: c["name"] for c in countries}
    train = {code: (m, names[code]) for code, m in wide.items() if code in names}
    test = {code: (m, names[code]) for code, m in square.items() if code in names}
    return train, test


def main():
    a = parse_args(__doc__, default_train=0)
    tar = fetch(PACKAGE, a.out, a.package)
    build(a.out, tar, *pairs(tar), a.size, a.train, folders=("4x3", "1x1"))


if __name__ == "__main__":
    main()
