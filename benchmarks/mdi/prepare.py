"""Build the Material Design Icons source: icons captioned by their names, trained filled, tested outlined.

train.csv: the Pictogrammers Material Design Icons (`@mdi/svg`) that are not outline variants ("account-box.svg"),
caption = the name in words ("account box"); test.csv: the outline variants ("account-box-outline.svg") of those
names, captioned like their filled twin. Licence: Apache-2.0 (Pictogrammers).

Usage: python -m benchmarks.mdi.prepare OUT_DIR [--size 64] [--train 2000] [--package TGZ]
"""
from benchmarks.svgset import members, run, words

PACKAGE = "@mdi/svg@7.4.47"


def pairs(tar):
    icons = members(tar, "package/svg")
    train = {n: (m, words(n)) for n, m in icons.items() if not n.endswith("-outline")}
    test = {n[: -len("-outline")]: (m, words(n[: -len("-outline")])) for n, m in icons.items() if n.endswith("-outline")}
    return train, test


def main():
    run(__doc__, PACKAGE, pairs, ("filled", "outline"))


if __name__ == "__main__":
    main()
