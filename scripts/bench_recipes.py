"""Recipe variants side by side on the validation splits of the real benchmarks: the table behind a recipe choice.

    python -m scripts.bench_recipes ../bench-data/icons ../bench-data/glyphs --config configs/best_small.yaml \
        --variant base: --variant "pd50:model.patch_dropout=0.5 train.epochs=50" --json /tmp/recipes.json

Each `--variant NAME:OVERRIDES` (dotted overrides split as a shell would, possibly none; `--set` gives overrides for
every variant, before its own) is trained on every benchmark with
`scripts.bench_quality`'s toolkit path (the same held-out validation split, the same scoring code, one process at a
time) and scored on validation only: the test split is not looked at here, so choosing among the rows leaves it
unseen. The table gives validation text->image R@1 / R@10 and training seconds per benchmark, and each variant's
R@1 as a ratio to the first variant's (the one denominator). Rows are appended to --output as markdown.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from scripts import bench_quality as bq


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a variant is NAME:OVERRIDES, got {text!r}")
    return name, shlex.split(rest)


def run(data: Path, config: str, overrides: list[str], seed: int, work: Path, name: str, val_fraction: float) -> dict:
    """One variant on one benchmark: the toolkit trained on train.csv less validation, scored on validation."""
    a = bq.parse_args([str(data), *overrides, "--config", config, "--no-peer", "--name", name, "--seeds", str(seed),
                       "--val-fraction", str(val_fraction), "--curve-every", "1000"])
    splits = bq.split_train(*bq.read_split(data, "train"), val_fraction)
    work.mkdir(parents=True, exist_ok=True)
    table = bq.write_table(work / "train_fit.csv", splits["train"], bq.read_columns(data, "train"))
    r = bq.toolkit(a, table, work, seed, {"train": splits["train"], "val": splits["val"]})
    return {k: r[k] for k in ("contender", "seed", "epochs", "train_s", "setting", "command", "train", "val")}


def markdown(argv: list[str], benchmarks: list[str], variants: dict[str, list[str]],
             rows: dict[str, dict[str, list[dict]]]) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = "| variant | " + " | ".join(f"{b} val t→i R@1 | {b} val R@10 | {b} train s" for b in benchmarks) + " |"
    lines = [f"### Recipe variants on the validation splits ({when})", "",
             f"`python -m scripts.bench_recipes {shlex.join(argv)}` on {bq.machine()}; percent, mean over seeds, "
             "ratio to the first row's R@1 in brackets; the test splits are not scored.", "",
             head, "|---|" + "---:|---:|---:|" * len(benchmarks)]
    first = next(iter(rows))
    for name, per in rows.items():
        cells = []
        for b in benchmarks:
            r1 = statistics.mean(r["val"]["t2i_R@1"] for r in per[b])
            base = statistics.mean(r["val"]["t2i_R@1"] for r in rows[first][b])
            r10 = statistics.mean(r["val"]["t2i_R@10"] for r in per[b])
            secs = statistics.median(r["train_s"] for r in per[b])
            ratio = f"{r1 / base:.2f}×" if base else "–"
            cells.append(f"{r1:.2f} ({ratio}) | {r10:.2f} | {secs:.0f}")
        overrides = shlex.join(variants[name]) or "(the config)"
        lines.append(f"| {name}: `{overrides}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="benchmark folders (train.csv, test.csv)")
    p.add_argument("--config", default=str(bq.ROOT / "configs/shapes_tiny.yaml"))
    p.add_argument("--variant", type=parse_variant, action="append", required=True, help="NAME:OVERRIDES")
    p.add_argument("--set", nargs="*", default=[], help="dotted overrides for every variant")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--work", default="/tmp/bench_recipes")
    p.add_argument("--json", default="", help="write every run here")
    p.add_argument("--output", default="", help="markdown file to append the table to")
    a = p.parse_args(argv)
    if not 0 < a.val_fraction < 0.5:
        p.error("--val-fraction must be in (0, 0.5): variants are chosen on validation")
    benchmarks = [Path(d).resolve().name for d in a.data]
    if len({name for name, _ in a.variant}) < len(a.variant):
        p.error("every --variant needs its own NAME")
    rows: dict[str, dict[str, list[dict]]] = {}
    for name, overrides in a.variant:
        rows[name] = {}
        for data in a.data:
            bench = Path(data).resolve()
            rows[name][bench.name] = [run(bench, a.config, a.set + overrides, seed, Path(a.work) / bench.name / name, name,
                                          a.val_fraction) for seed in a.seeds]
            print(json.dumps({"variant": name, "benchmark": bench.name,
                              "val": [r["val"] for r in rows[name][bench.name]]}), flush=True)
        if a.json:  # after every variant: a long sweep keeps what it has measured
            Path(a.json).write_text(json.dumps(rows, indent=1))
    text = markdown(argv, benchmarks, dict(a.variant), rows)
    print(text)
    if a.output:
        with open(a.output, "a", encoding="utf-8") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
