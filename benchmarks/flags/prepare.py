"""Build the flags source: country and region flags captioned by the country's name, trained in the 4:3 drawing,
tested in the square one.

train.csv: flag-icons' 4:3 flags ("flags/4x3/no.svg", letterboxed on white), caption = the name its country.json
gives ("Norway", "Bosnia and Herzegovina"); test.csv: the 1:1 drawings of the same flags, which crop and recompose
the design. Licence: MIT (flag-icons, Panayiotis Lipiridis and contributors).

Usage: python -m benchmarks.flags.prepare OUT_DIR [--size 64] [--train 0] [--package TGZ]
"""
import json
from benchmarks.svgset import members, run

PACKAGE = "flag-icons@7.5.0"


def pairs(tar):
    countries = json.load(tar.extractfile("package/country.json"))
    wide, square = members(tar, "package/flags/4x3"), members(tar, "package/flags/1x1")
    names = {c["code"]: c["name"] for c in countries}
    train = {code: (m, names[code]) for code, m in wide.items() if code in names}
    test = {code: (m, names[code]) for code, m in square.items() if code in names}
    return train, test


def main():
    run(__doc__, PACKAGE, pairs, ("4x3", "1x1"), default_train=0)


if __name__ == "__main__":
    main()
