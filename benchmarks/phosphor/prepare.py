"""Build the Phosphor source: icons captioned by their names, trained in the regular weight, tested filled.

train.csv: Phosphor's regular icons (`@phosphor-icons/core`, "assets/regular/address-book.svg"), caption = the
name in words ("address book"); test.csv: the fill weight of the same names ("assets/fill/address-book-fill.svg").
Licence: MIT (Phosphor Icons).

Usage: python -m benchmarks.phosphor.prepare OUT_DIR [--size 64] [--train 2000] [--package TGZ]
"""
from benchmarks.svgset import members, run, words

PACKAGE = "@phosphor-icons/core@2.1.1"


def pairs(tar):
    regular, fill = members(tar, "package/assets/regular"), members(tar, "package/assets/fill")
    train = {n: (m, words(n)) for n, m in regular.items()}
    test = {n[: -len("-fill")]: (m, words(n[: -len("-fill")])) for n, m in fill.items() if n.endswith("-fill")}
    return train, test


def main():
    run(__doc__, PACKAGE, pairs, ("regular", "fill"))


if __name__ == "__main__":
    main()
