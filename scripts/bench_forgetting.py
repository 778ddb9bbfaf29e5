"""Fine-tuning without forgetting, measured: start from a model trained with the default recipe on the bundled shapes
set, fine-tune it on the icons benchmark, and score what each remedy keeps of shapes against what it gains on icons.

    python -m scripts.bench_forgetting ../bench-data/icons                 # everything (the start included)
    python -m scripts.bench_forgetting ../bench-data/icons --start runs/start     # reuse a trained start
    python -m scripts.bench_forgetting ../bench-data/icons --start broad --steps 1800   # the broad start

The icons data is built by `python ../shared/bench/icons/prepare.py ../bench-data/icons`. The start is trained with
`configs/shapes_tiny.yaml` as it stands (300 steps; `--start-steps` shortens it) or given with `--start`. Each
remedy is one fine-tuning run of `configs/finetune_icons.yaml` from that start (`model.init_from`, the start's
tokenizer and context):

  full      every weight trains; the same run keeps an EMA of its weights (`train.ema_decay`, no warm-up: the
            average starts at the start's weights), reported as "EMA"
  locked    the image tower is locked (`finetune.image.lock=true`), the text tower and projections train
  LoRA      rank-`--lora-rank` adapters on both towers' attention projections (`finetune.*.lora.rank`)
  WiSE-FT   `contrastive wise-ft --alphas ...` between the start and the full fine-tune, and between the start
            and the best other method's fine-tune (the one whose smaller of kept and gain is largest; an EMA row
            interpolates toward that run's EMA weights, `--weights ema`)
  LP-FT     `finetune.probe_steps=--probe-steps`: the projections and the temperature alone first, then everything
  restart   `finetune.reset_logit_scale=--reset-scale`: the fine-tune starts at that temperature scale
  rehearsal the start's own training data mixed into every batch, once at each of `--rehearsal-weights` (`data.train`
            as a list of sources); also with LP-FT at the first weight ("rehearsal + LP-FT"); each rehearsal run
            keeps an EMA of its weights as full fine-tuning does, reported as "rehearsal N% EMA"
`--methods` picks which run (full always runs: the gains are shares of its gain).

Scores come from the runs themselves: the reference (the 400 held-out shapes, `eval.reference`) and the target (the
679 Lucide icons of icons/test.csv, `data.val`) are evaluated at step 0 and at the end; WiSE-FT's from its sweep.
"kept" is the reference's text->image R@1 over the start's; "gain" is the target's text->image R@10 gained over the
start's, as a share of full fine-tuning's gain (R@10: after a few epochs the target's R@1 is a handful of icons).
The goal: one method with kept >= 90% and gain >= 90%. Output: a markdown section in docs/benchmarks.md
("## Fine-tuning without forgetting"), the trade-off PNG in docs/images/, a JSON line per method, and with
`--json` the same figures as {"methods": {name: {"kept": fraction, "gain": fraction}}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRIC, OTHER = "image_retrieval_recall@1", "text_retrieval_recall@1"  # t->i R@1 (headline), i->t R@1
# the target's gain is counted at t->i R@10: after a few epochs the target's R@1 is a handful of the 679 icons
GAIN = "image_retrieval_recall@10"
KEYS = (METRIC, OTHER, GAIN)
SECTION = "## Fine-tuning without forgetting"
INTRO = """A model trained with the default recipe on the bundled shapes set (the start) is fine-tuned on the icons
benchmark (`../shared/bench/icons`, built with `python ../shared/bench/icons/prepare.py ../bench-data/icons`):
2,000 Tabler icons captioned by name. Reference: the 400 held-out shapes (`eval.reference`); target: the 679 Lucide
icons of the same names (`data.val`). Methods: full fine-tuning; the same run's EMA of the weights; the image tower
locked; LoRA on both towers' attention projections; WiSE-FT between the start and the full fine-tune, and between
the start and the locked-image fine-tune. "kept" is the reference t→i R@1 over the start's, "gain" the target t→i
R@10 gained over the start's as a share of full fine-tuning's gain; the goal is one method with both at 90% or
more. Scores are each run's own evaluations
(`ref/...`, `val/...`, `val_ema/...`) and `contrastive wise-ft --alphas`.
"""


# method -> its label in the table; full always runs (with its EMA and WiSE-FT curve)
METHODS = {"locked": "locked image", "lora": "LoRA", "lpft": "LP-FT", "restart": "temperature restart",
           "rehearsal": "rehearsal", "rehearsal_lpft": "rehearsal + LP-FT"}
START_DATA = "data/shapes/train.csv"  # what the default start was trained on (rehearsal mixes it in)
SHAPES_REFERENCE = "data/shapes/val.csv"  # what the default start knew (held out)
BROAD = "configs/broad_start.yaml"  # --start broad: a start trained on a mixture of sources


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="icons benchmark folder with train.csv and test.csv")
    p.add_argument("--start", default="", help="a start run or checkpoint (default: train one with "
                   "configs/shapes_tiny.yaml); 'broad': train one with configs/broad_start.yaml, whose sources' "
                   "held-out splits together are the reference and whose sources are the rehearsal data")
    p.add_argument("--start-steps", type=int, default=0, help="steps of the start's training (0: the recipe's own)")
    p.add_argument("--steps", type=int, default=600, help="steps of each fine-tuning run (about 10 epochs at batch 32; "
                   "from the shapes start full fine-tuning sits at chance loss for the first ~200; from the broad "
                   "start it gains until ~1500, so compare there at 1800)")
    p.add_argument("--batch-size", type=int, default=32, help="small: many updates for the CPU time")
    p.add_argument("--seed", type=int, default=0, help="every fine-tuning run's `train.seed` (the start is given or "
                   "trained with its own)")
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate of full fine-tuning and the locked tower "
                   "(full fine-tuning's best target of 5e-5, 1e-4, 2e-4 and 5e-4, docs/benchmarks.md)")
    p.add_argument("--ema-decay", type=float, default=0.995, help="per step, without warm-up: after 300 steps the "
                   "start still weighs 0.995^300 = 22%% in the average, after 600 steps 5%%")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-lr", type=float, default=2e-3, help="LoRA's learning rate (adapters start at zero)")
    p.add_argument("--probe-steps", type=int, default=150, help="LP-FT: steps that train only the head")
    p.add_argument("--reset-scale", type=float, default=2.0, help="temperature restart: the scale a fine-tune starts at")
    p.add_argument("--rehearsal-weights", default="0.1,0.3",
                   help="rehearsal: the start's data's share of a batch, one run per weight (comma-separated)")
    p.add_argument("--rehearsal-equal-target", action="store_true",
                   help="rehearsal runs take --steps / (1 - weight) steps, so the target gets as many samples as in "
                   "full fine-tuning (at that much more compute)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    p.add_argument("--alphas", default="0,0.2,0.4,0.6,0.8,1")
    p.add_argument("--work", default="", help="folder for the runs (default: a fresh one under /tmp)")
    p.add_argument("--output", default=str(ROOT / "docs/benchmarks.md"), help="markdown file ('' = none)")
    p.add_argument("--plot", default="", help="the trade-off PNG (default: docs/images/forgetting_<start>.png)")
    p.add_argument("--json", default="", help="a JSON file of every method's kept and gain ('' = none)")
    p.add_argument("--reuse", action="store_true",
                   help="read runs of --work that finished (the start and the WiSE-FT sweeps included) instead of "
                   "running them again")
    return p.parse_args(argv)


def run(cmd: list[str], log: Path) -> float:
    """Run a command to completion with its output in `log`; its wall seconds."""
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ})
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}); see {log}:\n{tail}")
    return time.time() - start


def contrastive(*args: str) -> list[str]:
    return [sys.executable, "-m", "contrastive", *args]


def start_checkpoint(a, work: Path) -> Path:
    """The start's checkpoint, trained now unless given; sets `a.reference` (the table of what the start knew) and
    `a.rehearsal` ((path, weight, name) of its training sources)."""
    from contrastive.interop.checkpoint import resolve_checkpoint

    a.reference, a.rehearsal = SHAPES_REFERENCE, [(START_DATA, 1.0, "rehearsal")]
    broad = a.start == "broad"
    if broad:
        from contrastive.config import load_config

        cfg = load_config(ROOT / BROAD)
        a.rehearsal = [(s.path, s.weight, f"rehearsal_{s.name or i}") for i, s in enumerate(cfg.data.train_sources())]
        a.reference = str(reference_table([r.data for r in cfg.eval.reference], work / "reference.csv"))
    elif a.start:
        return resolve_checkpoint(a.start)
    if a.reuse and (work / "start" / "summary.json").is_file():
        print(f"start: reused the finished run in {work / 'start'}", flush=True)
        return resolve_checkpoint(work / "start")
    steps = [f"train.max_steps={a.start_steps}"] if a.start_steps else []
    seconds = run(contrastive("train", "--config", BROAD if broad else "configs/shapes_tiny.yaml", *steps,
                              f"train.output_dir={work}", "train.run_name=start", "train.overwrite=true",
                              "train.progress_bar=false"), work / "start.log")
    print(f"start: trained in {seconds:.0f} s", flush=True)
    return resolve_checkpoint(work / "start")


def reference_table(tables: list[str], out: Path) -> Path:
    """One retrieval table of several (image paths made absolute): the broad start's reference."""
    import csv

    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption"])
        for table in tables:
            path = (ROOT / table).resolve()
            with path.open(newline="") as t:
                w.writerows([str(path.parent / r["image"]), r["caption"]] for r in csv.DictReader(t))
    return out


def finetune(a, work: Path, start: Path, name: str, *overrides: str) -> dict:
    """One fine-tuning run; {weights: {"reference": metrics, "target": metrics}} at step 0 and the end."""
    from contrastive.interop.checkpoint import read_meta

    context = read_meta(start)["config"]["model"]["context_length"]
    timing = work / f"{name}.seconds"
    steps = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("train.max_steps=")), a.steps)
    if a.reuse and finished(work / name, steps) and timing.is_file():
        seconds = float(timing.read_text())
        print(f"{name}: reused the finished run in {work / name}", flush=True)
    else:
        seconds = train_run(a, work, start, name, context, overrides)
        timing.write_text(f"{seconds:.1f}\n")
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
    first = next(r for r in rows if r["step"] == 0 and f"ref/{METRIC}" in r)
    last = json.loads((work / name / "summary.json").read_text())
    out = {"start": scores(first, "val", "ref"), "model": scores(last, "val", "ref"), "seconds": seconds}
    if f"val_ema/{METRIC}" in last:
        out["ema"] = scores(last, "val_ema", "ref_ema")
    print(f"{name}: {steps} steps in {seconds:.0f} s", flush=True)
    return out


def finished(run_dir: Path, steps: int) -> bool:
    """A run that wrote its summary after `steps` steps."""
    summary = run_dir / "summary.json"
    return summary.is_file() and json.loads(summary.read_text()).get("steps") == steps


def train_run(a, work: Path, start: Path, name: str, context: int, overrides: tuple[str, ...]) -> float:
    return run(contrastive("train", "--config", "configs/finetune_icons.yaml", f"model.init_from={start}",
                              f"model.tokenizer=bpe:{start / 'tokenizer.json'}", f"model.context_length={context}",
                              f"data.train={Path(a.data) / 'train.csv'}", f"data.val={Path(a.data) / 'test.csv'}",
                              f"train.max_steps={a.steps}", f"train.batch_size={a.batch_size}", f"optim.lr={a.lr}",
                              f"train.seed={a.seed}",
                              f"train.output_dir={work}", f"train.run_name={name}",
                              "train.overwrite=true", "train.progress_bar=false", "eval.every_n_steps=0",
                              f"eval.reference=[{a.reference}]", *overrides),
               work / f"{name}.log")


def scores(row: dict, target: str, reference: str) -> dict:
    return {"target": {m: row[f"{target}/{m}"] for m in KEYS}, "reference": {m: row[f"{reference}/{m}"] for m in KEYS}}


def wise_ft(a, work: Path, start: Path, finetuned: Path, name: str = "wise_ft", weights: str = "model") -> list[dict]:
    out = work / name
    if not (a.reuse and (out / "wise_ft.json").is_file()):
        run(contrastive("wise-ft", "--start", str(start), "--finetuned", str(finetuned), "--alphas", a.alphas,
                        "--weights", weights, "--eval-target", str(Path(a.data) / "test.csv"),
                        "--eval-reference", a.reference, "--output", str(out)), work / f"{name}.log")
    points = json.loads((out / "wise_ft.json").read_text())["points"]
    return [{"alpha": p["alpha"], "target": {m: p["target"][m] for m in KEYS},
             "reference": {m: p["reference"][m] for m in KEYS}} for p in points]


def interior(curve: list[dict]) -> list[dict]:
    """The sweep's points strictly between its ends: α = 0 and 1 are the start and the fine-tune themselves."""
    return [p for p in curve if 0 < p["alpha"] < 1]


def judge(rows: dict[str, dict], start: dict) -> dict[str, dict]:
    """kept (reference R@1 / the start's) and gain (target R@10 gained / full fine-tuning's gain) per method."""
    gain_full = rows["full"]["target"][GAIN] - start["target"][GAIN]
    out = {}
    for name, r in rows.items():
        kept = r["reference"][METRIC] / start["reference"][METRIC]
        gain = (r["target"][GAIN] - start["target"][GAIN]) / gain_full if gain_full > 0 else float("nan")
        out[name] = {**r, "kept": kept, "gain": gain, "goal": kept >= 0.9 and gain >= 0.9}
    return out


def write_json(path: Path, a, judged: dict[str, dict], start: dict) -> None:
    """{"methods": {name: {"kept", "gain", ...}}, "start": ..., "command": ...}: the table's figures, for tools."""
    pick = lambda r: {"reference": r["reference"], "target": r["target"]}  # noqa: E731
    out = {"command": "python -m scripts.bench_forgetting " + " ".join(shlex.quote(x) for x in sys.argv[1:]),
           "kept": f"reference {METRIC} over the start's", "gain": f"target {GAIN} gained, as a share of full's",
           "start": pick(start),
           "methods": {n: {"kept": round(r["kept"], 4), "gain": round(r["gain"], 4), "goal": r["goal"], **pick(r)}
                       for n, r in judged.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")


def pairing(a) -> tuple[str, str]:
    """(the start's name, the reference's description) for titles and axes."""
    return ("broad start", "the start's sources, held out") if a.start == "broad" else ("shapes", "shapes held-out")


def plot(a, judged: dict[str, dict], start: dict, curves: dict[str, list[dict]], path: Path) -> None:
    from contrastive.evaluation.plots import _figure

    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    pct = lambda r, s: 100 * r[s][GAIN if s == "target" else METRIC]  # noqa: E731
    for (name, curve), color in zip(curves.items(), ("tab:blue", "tab:olive")):
        ax.plot([pct(p, "target") for p in curve], [pct(p, "reference") for p in curve], "-o", color=color,
                label=f"WiSE-FT (start → {name})", zorder=2, ms=4)
        for p in interior(curve):
            ax.annotate(f"α={p['alpha']:g}", (pct(p, "target"), pct(p, "reference")), textcoords="offset points",
                        xytext=(5, 3), fontsize=7, color=color)
    markers = iter(zip("sDv^PXoh<>p", ("tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
                                        "tab:cyan", "tab:gray", "tab:olive", "gold", "navy")))
    for name, r in judged.items():
        if not name.startswith("WiSE-FT"):
            marker, color = next(markers)
            ax.scatter([pct(r, "target")], [pct(r, "reference")], marker=marker, s=60, color=color, label=name,
                       zorder=3)
    ax.scatter([pct(start, "target")], [pct(start, "reference")], marker="*", s=140, color="black", label="start",
               zorder=3)
    gain_full = judged["full"]["target"][GAIN] - start["target"][GAIN]
    ax.axhline(90 * start["reference"][METRIC], ls="--", lw=0.8, color="gray")
    ax.axvline(100 * (start["target"][GAIN] + 0.9 * gain_full), ls="--", lw=0.8, color="gray")
    ax.set_xlabel(f"target: {Path(a.data).name} test t→i R@10 (%)")
    start_name, reference = pairing(a)
    ax.set_ylabel(f"reference: {reference}, t→i R@1 (%)")
    ax.set_title(f"fine-tuning {start_name} → {Path(a.data).name}: kept vs gained (dashed: 90% goals)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path))


def markdown(a, judged: dict[str, dict], start: dict, seconds: dict[str, float], image: str) -> str:
    from scripts.speedbench import machine_description

    import torch

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    argv = " ".join(shlex.quote(x) for x in sys.argv[1:])
    lines = [f"### {pairing(a)[0]} → {Path(a.data).name} ({when})", "",
             f"`python -m scripts.bench_forgetting {argv}` on {machine_description(torch.device('cpu'))}; "
             f"{a.steps} fine-tuning steps at batch {a.batch_size} per run, seed {a.seed}; percent. kept: reference t→i R@1 over "
             "the start's; gain: target t→i R@10 gained over the start's, as a share of full fine-tuning's.", "",
             "| method | reference t→i R@1 | i→t R@1 | kept | target t→i R@1 | t→i R@10 | gain (of full's) | both ≥ 90% |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    row = lambda name, r, kept, gain, goal: (  # noqa: E731
        f"| {name} | {100 * r['reference'][METRIC]:.2f} | {100 * r['reference'][OTHER]:.2f} | {kept} | "
        f"{100 * r['target'][METRIC]:.2f} | {100 * r['target'][GAIN]:.2f} | {gain} | {goal} |")
    lines.append(row("start", start, "100%", "0%", "-"))
    for name, r in judged.items():
        lines.append(row(name, r, f"{100 * r['kept']:.0f}%", f"{100 * r['gain']:.0f}%", "yes" if r["goal"] else "no"))
    winners = [n for n, r in judged.items() if r["goal"]]
    lines += ["", "Both goals (kept ≥ 90% of the start's reference R@1, ≥ 90% of full fine-tuning's target gain): "
              + (", ".join(winners) if winners else "none") + ". Run times: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + ".", "", f"![kept against gained]({image})", ""]
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> None:
    """Replace the newest table of the section (or start the section) in `path`."""
    body = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION not in body:
        body = body.rstrip() + f"\n\n{SECTION}\n\n" + INTRO
    head, sep, tail = body.partition(SECTION)
    nxt = tail.find("\n## ", 1)
    section, rest = (tail, "") if nxt < 0 else (tail[:nxt], tail[nxt:])
    path.write_text(head + sep + section.rstrip() + "\n\n" + text + rest)


def rehearsal_weights(a) -> list[float]:
    return [float(w) for w in str(a.rehearsal_weights).split(",") if w.strip()]


def mixture(a, w: float) -> str:
    """`data.train`: the target at weight 1 - w, the start's sources sharing w in their own proportions."""
    total = sum(weight for _, weight, _ in a.rehearsal)
    start_data = ", ".join(f"{{path: {path}, weight: {w * weight / total:.6g}, name: {name}}}"
                           for path, weight, name in a.rehearsal)
    return f"data.train=[{{path: {Path(a.data) / 'train.csv'}, weight: {1 - w:g}, name: target}}, {start_data}]"


def method_overrides(a) -> dict[str, list[str]]:
    """The overrides of each run (besides the shared ones of `train_run`), by run name; rehearsal runs once per
    weight ("rehearsal_0.1", ...)."""
    probe = f"finetune.probe_steps={a.probe_steps}"
    weights = rehearsal_weights(a)
    return {"locked": ["finetune.image.lock=true"],
            "lora": [f"finetune.image.lora.rank={a.lora_rank}", f"finetune.text.lora.rank={a.lora_rank}",
                     f"optim.lr={a.lora_lr}"],
            "lpft": [probe], "restart": [f"finetune.reset_logit_scale={a.reset_scale:g}"],
            **{f"rehearsal_{w:g}": [mixture(a, w), *rehearsal_steps(a, w), *ema_overrides(a)] for w in weights},
            "rehearsal_lpft": [mixture(a, weights[0]), probe]}


def ema_overrides(a) -> list[str]:
    """A run that also keeps an EMA of its weights from the start's (no warm-up), scored beside them."""
    return [f"train.ema_decay={a.ema_decay}", "train.ema_warmup=false"]


def rehearsal_steps(a, w: float) -> list[str]:
    """With --rehearsal-equal-target: the steps that give the target full fine-tuning's samples."""
    return [f"train.max_steps={round(a.steps / (1 - w))}"] if a.rehearsal_equal_target else []


def run_names(a, methods: list[str]) -> list[str]:
    """The runs of the chosen methods (rehearsal: one per weight)."""
    rehearsal = [f"rehearsal_{w:g}" for w in rehearsal_weights(a)]
    return [name for m in methods for name in (rehearsal if m == "rehearsal" else [m])]


def label(a, name: str) -> str:
    """A run's label in the table: the method's, with the rehearsal weight as a share of the batch."""
    if name == "rehearsal_lpft":
        return f"rehearsal {100 * rehearsal_weights(a)[0]:g}% + LP-FT"
    if name.startswith("rehearsal_"):
        return f"rehearsal {100 * float(name.removeprefix('rehearsal_')):g}%"
    return METHODS[name]


def method_rows(full: dict, runs: dict[str, dict]) -> tuple[dict[str, dict], dict[str, tuple[str, str]]]:
    """The table's rows (label -> scores): full fine-tuning, its EMA, each other run and its EMA where it kept one;
    and for each other method's row, the run and weights ("model" or "ema") that WiSE-FT would interpolate toward."""
    rows, owner = {"full": full["model"], "EMA": full["ema"]}, {}
    for name, r in runs.items():
        rows[name], owner[name] = r["model"], (r["run"], "model")
        if "ema" in r:
            rows[f"{name} EMA"], owner[f"{name} EMA"] = r["ema"], (r["run"], "ema")
    return rows, owner


def best_other(judged: dict[str, dict], names: list[str]) -> str:
    """The method (neither full fine-tuning, its EMA nor a WiSE-FT point) whose smaller of kept and gain is largest."""
    return max(names, key=lambda n: min(judged[n]["kept"], judged[n]["gain"]))


def main(argv=None) -> None:
    a = parse_args(argv)
    a.data = str(Path(a.data).resolve())  # the runs work in the repository root
    a.start = str(Path(a.start).resolve()) if a.start not in ("", "broad") else a.start
    methods = [m for m in a.methods.split(",") if m and m != "full"]
    if unknown := [m for m in methods if m not in METHODS]:
        raise SystemExit(f"--methods: unknown {', '.join(unknown)} (known: full, {', '.join(METHODS)})")
    for split in ("train", "test"):
        if not (Path(a.data) / f"{split}.csv").is_file():
            raise SystemExit(f"{Path(a.data) / split}.csv not found; build it with "
                             "python ../shared/bench/icons/prepare.py DIR")
    import tempfile

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="bench_forgetting_"))
    work.mkdir(parents=True, exist_ok=True)
    start = start_checkpoint(a, work)
    full = finetune(a, work, start, "full", *ema_overrides(a))
    curves = {"full": wise_ft(a, work, start, work / "full")}
    print(json.dumps({"full": full, "wise_ft": curves["full"]}), flush=True)  # the figures so far, in case of a stop
    overrides, runs = method_overrides(a), {}
    for name in run_names(a, methods):
        runs[label(a, name)] = finetune(a, work, start, name, *overrides[name]) | {"run": name}
    begin = full["start"]
    rows, owner = method_rows(full, runs)
    if owner:  # WiSE-FT of the best other method too
        best = best_other(judge(rows, begin), list(owner))
        run_name, weights = owner[best]
        curves[best] = wise_ft(a, work, start, work / run_name,
                               f"wise_ft_{run_name}" + ("_ema" if weights == "ema" else ""), weights)
    for name, curve in curves.items():
        rows |= {f"WiSE-FT {'' if name == 'full' else name + ' '}α={p['alpha']:g}": p for p in interior(curve)}
    judged = judge(rows, begin)
    for name, r in judged.items():
        print(json.dumps({"method": name, **r}), flush=True)
    a.plot = a.plot or str(ROOT / f"docs/images/forgetting_{'broad' if a.start == 'broad' else 'icons'}.png")
    Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
    plot(a, judged, begin, curves, Path(a.plot))
    seconds = {"full + EMA": full["seconds"], **{n: r["seconds"] for n, r in runs.items()}}
    text = markdown(a, judged, begin, seconds, os.path.relpath(a.plot, Path(a.output).parent if a.output else ROOT))
    print(text)
    if a.output:
        write_markdown(Path(a.output), text)
    if a.json:
        write_json(Path(a.json), a, judged, begin)


if __name__ == "__main__":
    main()
