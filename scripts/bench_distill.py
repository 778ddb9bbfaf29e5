"""Does distillation help a small student? A teacher trained here, distilled into the default tiny recipe at equal
student steps, against the same student without distillation, on real image-caption benchmarks.

    python -m scripts.bench_distill ../bench-data/icons ../bench-data/glyphs --work /tmp/distill   # full recipes
    python -m scripts.bench_distill DIR --work W --teacher train.max_steps=220 \
        --student train.max_steps=50 optim.warmup_steps=30 --distill distill.weight=0.5 distill.temperature=1
    python -m scripts.bench_distill DIR --work W --teacher-config configs/lit_minilm_shapes.yaml

Default: the teacher `configs/best_small.yaml` (600 steps) and the student `configs/shapes_tiny.yaml` (300 steps).
For each DIR (holding `train.csv` and `test.csv`, as `scripts.bench_quality` reads them) it trains, with
`contrastive train` and `data.train` overridden:
  1. the teacher: `--teacher-config` with `--teacher` overrides;
  2. the student: `--student-config` with `--student` overrides;
  3. the same student with `distill.teacher=<1>` and the `--distill` overrides (same seed, data order and steps).
Each is scored on both splits by the same code as bench_quality (text->image and image->text R@1/5/10, every row a
candidate). A run with a checkpoint under `--work` is reused as it is (its train seconds then come from its
files). Then the extra cost per step is measured side by side in one process: the student's training step on a
batch, alone and with the teacher's forward and the distillation loss, alternating, medians over `--rounds`.
Results: a JSON line per benchmark, and a markdown table appended to `--output` (default: print only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from scripts.bench_quality import Pixels, read_split, run_timed, score

ROOT = Path(__file__).resolve().parents[1]

ROWS = ("teacher", "student", "distilled")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="+", help="benchmark folders with train.csv and test.csv")
    p.add_argument("--work", required=True, help="folder for the runs (<work>/<benchmark>/<run>)")
    p.add_argument("--teacher-config", default=str(ROOT / "configs/best_small.yaml"))
    p.add_argument("--teacher", nargs="*", default=[], help="the teacher's dotted overrides (default: its recipe as is)")
    p.add_argument("--student-config", default=str(ROOT / "configs/shapes_tiny.yaml"))
    p.add_argument("--student", nargs="*", default=[], help="the student's dotted overrides (both students)")
    p.add_argument("--distill", nargs="*", default=[], help="overrides of the distilled student only (distill.*)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=7, help="rounds of the side-by-side step timing (0: skip it)")
    p.add_argument("--output", default="", help="markdown file to append the table to ('' = print only)")
    return p.parse_args(argv)


def train_run(data: Path, work: Path, name: str, config: str, overrides: list[str], seed: int) -> float:
    """Train (or reuse) <work>/<name>; returns its training seconds."""
    from contrastive.interop.checkpoint import latest_checkpoint

    run = work / name
    last = latest_checkpoint(run / "checkpoints") if run.is_dir() else None
    if last is not None:  # reused as it is (a run stopped early included): seconds from its files
        return (last / "model.safetensors").stat().st_mtime - (run / "config.yaml").stat().st_mtime
    cmd = [sys.executable, "-m", "contrastive", "train", "--config", config, f"data.train={data / 'train.csv'}",
           "data.val=", f"train.seed={seed}", f"train.output_dir={work}", "train.progress_bar=false",
           "eval.best_metric=", f"train.run_name={name}", "train.overwrite=true", *overrides]
    return run_timed(cmd, work / f"{name}.log")[1]


def evaluate(run: Path, splits: dict) -> dict:
    from contrastive import load

    model, preprocess, tokenizer = load(run)
    return score(model.encode_image, model.encode_text, Pixels(preprocess), tokenizer, splits)


def step_cost(student_run: Path, teacher_run: Path, distill: list[str], data: Path, rounds: int) -> dict:
    """Seconds of one training step of the student on a batch, alone and with distillation, alternating."""
    from contrastive.config import load_config
    from contrastive.data import TrainData
    from contrastive.losses.batch import BatchLoss
    from contrastive.training.distill import Teacher
    from contrastive.training.step import compute_loss
    from contrastive import load

    model, _, tokenizer = load(student_run)
    cfg = load_config(student_run / "config.yaml", [f"distill.teacher={teacher_run}", "data.num_workers=0", *distill])
    batch = next(TrainData(cfg.data, cfg.model, tokenizer, cfg.train.batch_size, 0).batches(0, 0))
    teacher = Teacher(cfg.distill, cfg.model, torch.device("cpu"), "fp32")
    plain, mixed = BatchLoss(cfg.loss), BatchLoss(cfg.loss, distill=cfg.distill)
    model.train()

    def step(with_teacher: bool) -> float:
        start = time.perf_counter()
        b = dict(batch, teacher=teacher(batch)) if with_teacher else batch
        compute_loss(model, b, mixed if with_teacher else plain).backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(False), step(True)  # warm-up
    times = {"plain": [], "distilled": []}
    for _ in range(rounds):
        times["plain"].append(step(False))
        times["distilled"].append(step(True))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"step_s": {k: round(v, 3) for k, v in med.items()}, "ratio": round(med["distilled"] / med["plain"], 3)}


def bench(a, data: Path) -> dict:
    work = Path(a.work) / data.name
    work.mkdir(parents=True, exist_ok=True)
    splits = {s: read_split(data, s) for s in ("train", "test")}
    seconds = {"teacher": train_run(data, work, "teacher", a.teacher_config, a.teacher, a.seed),
               "student": train_run(data, work, "student", a.student_config, a.student, a.seed),
               "distilled": train_run(data, work, "distilled", a.student_config,
                                      [*a.student, f"distill.teacher={work / 'teacher'}", *a.distill], a.seed)}
    out = {"data": data.name, "seed": a.seed, "train_s": {k: round(v, 1) for k, v in seconds.items()},
           **{name: evaluate(work / name, splits) for name in ROWS}}
    if a.rounds:
        out["step_cost"] = step_cost(work / "student", work / "teacher", a.distill, data, a.rounds)
    return out


def table(a, results: list[dict]) -> str:
    flags = [[f"--{name}", *values] for name, values in (("teacher", a.teacher), ("student", a.student),
                                                          ("distill", a.distill)) if values]
    cmd = "python -m scripts.bench_distill " + " ".join(
        [*(str(Path(d).name) for d in a.data), *(x for f in flags for x in f), f"--seed {a.seed}"])
    lines = [f"`{cmd}` on {platform.processor() or platform.machine()}, torch {torch.__version__}; "
             "percent, held-out test split unless marked train.", "",
             "| benchmark | run | train t→i R@1 | test t→i R@1 | test t→i R@10 | test i→t R@1 | test i→t R@10 | train s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for name in ROWS:
            tr, te = r[name]["train"], r[name]["test"]
            lines.append(f"| {r['data']} | {name} | {tr['t2i_R@1']:.2f} | {te['t2i_R@1']:.2f} | {te['t2i_R@10']:.2f} | "
                         f"{te['i2t_R@1']:.2f} | {te['i2t_R@10']:.2f} | {r['train_s'][name]:.0f} |")
    costs = [f"{r['data']}: {r['step_cost']['step_s']['plain']} s plain, {r['step_cost']['step_s']['distilled']} s "
             f"distilled ({r['step_cost']['ratio']}×)" for r in results if "step_cost" in r]
    if costs:
        lines += ["", "Step time side by side (median of alternating rounds, one process): " + "; ".join(costs) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    a = parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for d in a.data:
        results.append(bench(a, Path(d)))
        print(json.dumps(results[-1]), flush=True)
    text = table(a, results)
    print(text)
    if a.output:
        with open(a.output, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
