"""Build the Font Awesome Free source: icons captioned by their names, trained solid, tested in the regular style.

train.csv: Font Awesome Free's solid icons (`@fortawesome/fontawesome-free`, "svgs/solid/address-book.svg"),
caption = the name in words ("address book"); test.csv: the regular (outline) style of the names Free draws in both.
Licence: icons CC BY 4.0 (Font Awesome Free by Fonticons, Inc.; attribution is required when the images are
shared); the package's fonts SIL OFL 1.1 and code MIT.

Usage: python -m benchmarks.fontawesome.prepare OUT_DIR [--size 64] [--train 2000] [--package TGZ]
"""
from benchmarks.svgset import members, run, words

PACKAGE = "@fortawesome/fontawesome-free@7.3.1"


def pairs(tar):
    solid, regular = members(tar, "package/svgs/solid"), members(tar, "package/svgs/regular")
    return ({n: (m, words(n)) for n, m in solid.items()}, {n: (m, words(n)) for n, m in regular.items()})


def main():
    run(__doc__, PACKAGE, pairs, ("solid", "regular"))


if __name__ == "__main__":
    main()
