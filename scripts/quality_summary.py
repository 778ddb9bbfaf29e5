"""The learning-quality summary: every recipe of several `bench_quality` runs against the tuned peer, one table.

    python -m scripts.quality_summary icons=RUNS/icons-default/results.json icons=RUNS/icons-best/results.json \
        glyphs=RUNS/glyphs-default/results.json glyphs=RUNS/glyphs-best/results.json

Each argument is BENCHMARK=results.json of `scripts.bench_quality` (a run with the peer, or one reusing it through
`--peer-from`). For each benchmark the peer's row is its mean over seeds (the one denominator of every ratio in its
rows); each recipe's row gives test text->image R@1 and R@10 and image->text R@10 with their ratios, its held-out
R@1 at the peer's (median) wall time and the seconds it takes to reach the peer's final R@1 (as a share of the
peer's time). The project's goals read off it: the default >= 1.2x the peer's R@1 at equal epochs; the best recipe
>= 1.5x at the peer's wall time, and the peer's final R@1 within a third of its time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scripts.bench_quality import at_seconds, mean_over_seeds, seconds_to_reach

PEER = "OpenCLIP"


def rows_of(bench: str, results: list[dict]) -> list[str]:
    """Markdown rows of one benchmark: the peer (from the first results file) and every other contender."""
    peer_runs = results[0]["runs"][PEER]
    p = mean_over_seeds(peer_runs)
    peer_s, peer_r1 = p["train_s"], p["test"]["t2i_R@1"]
    out = [f"| {bench} | OpenCLIP, tuned ({peer_runs[0]['setting']['lr']:g} / {peer_runs[0]['setting']['warmup']}) | "
           f"{peer_runs[0]['epochs']} | {', '.join(str(r['seed']) for r in peer_runs)} | {peer_s:.0f} | "
           f"{peer_r1:.2f} | {p['test']['t2i_R@10']:.2f} | {p['test']['i2t_R@10']:.2f} | {peer_r1:.2f} | 1.00 |"]
    ratio = lambda x, y: f"{x / y:.2f}×" if y else "–"
    contenders: dict[str, list[dict]] = {}  # a recipe's seeds may come from several files (one run per seed)
    for res in results:
        for label, runs in res["runs"].items():
            if label != PEER:
                contenders.setdefault(label, []).extend(runs)
    for label, runs in contenders.items():
        m = mean_over_seeds(runs)
        same = [at_seconds(r["curve"], peer_s) for r in runs]
        at = statistics.mean(s["test"]["t2i_R@1"] for s in same) if all(same) else None
        reach = [seconds_to_reach(r["curve"], peer_r1) for r in runs]
        share = statistics.median(reach) / peer_s if all(s is not None for s in reach) else None
        t, s = m["test"], runs[0]["setting"]
        out.append(
            f"| {bench} | {label} ({s['lr']:g} / {s['warmup']}) | {runs[0]['epochs']} | "
            f"{', '.join(str(r['seed']) for r in runs)} | {m['train_s']:.0f} | "
            f"**{t['t2i_R@1']:.2f}** ({ratio(t['t2i_R@1'], peer_r1)}) | {t['t2i_R@10']:.2f} "
            f"({ratio(t['t2i_R@10'], p['test']['t2i_R@10'])}) | {t['i2t_R@10']:.2f} "
            f"({ratio(t['i2t_R@10'], p['test']['i2t_R@10'])}) | "
            + (f"{at:.2f} ({ratio(at, peer_r1)})" if at is not None else "–") + " | "
            + (f"{share:.2f}" if share is not None else "not reached") + " |")
    return out


def summary(pairs: list[tuple[str, Path]]) -> str:
    by_bench: dict[str, list[dict]] = {}
    for bench, path in pairs:
        by_bench.setdefault(bench, []).append(json.loads(Path(path).read_text()))
    lines = ["| benchmark | recipe (lr / warm-up) | epochs | seeds | train s | test t→i R@1 | test t→i R@10 | "
             "test i→t R@10 | t→i R@1 at the peer's wall time | time to the peer's R@1 (share of its time) |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for bench, results in by_bench.items():
        if PEER not in results[0]["runs"]:
            raise SystemExit(f"the first results file of {bench} has no {PEER} runs to divide by")
        same = lambda runs: [(r["seed"], r["setting"], r["test"]) for r in runs]
        if any(PEER in r["runs"] and same(r["runs"][PEER]) != same(results[0]["runs"][PEER]) for r in results[1:]):
            raise SystemExit(f"the results files of {bench} hold different {PEER} runs: one peer divides every row "
                             "(run the later recipes with bench_quality --peer-from the first file)")
        lines += rows_of(bench, results)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="BENCHMARK=results.json")
    a = p.parse_args(argv)
    pairs = []
    for item in a.results:
        bench, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            p.error(f"expected BENCHMARK=results.json of an existing file, got {item!r}")
        pairs.append((bench, Path(path)))
    print(summary(pairs))


if __name__ == "__main__":
    main()
