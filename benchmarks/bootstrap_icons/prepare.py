"""Build the Bootstrap Icons source: icons captioned by their names, trained in one style, tested in another.

train.csv: Bootstrap's outline icons ("arrow-left-circle.svg"), caption = the name in words ("arrow left circle");
test.csv: the filled icons ("arrow-left-circle-fill.svg") of the names that have one, captioned like their outline
twin. Licence: MIT (Bootstrap Icons, copyright the Bootstrap Authors).

Usage: python -m benchmarks.bootstrap_icons.prepare OUT_DIR [--size 64] [--train 2000] [--package TGZ]
"""
from benchmarks.svgset import members, run, words

PACKAGE = "bootstrap-icons@1.13.2"


def pairs(tar):
    icons = members(tar, "package/icons")
    train = {n: (m, words(n)) for n, m in icons.items() if not n.endswith("-fill")}
    test = {n[: -len("-fill")]: (m, words(n[: -len("-fill")])) for n, m in icons.items() if n.endswith("-fill")}
    return train, test


def main():
    run(__doc__, PACKAGE, pairs, ("outline", "fill"))


if __name__ == "__main__":
    main()
