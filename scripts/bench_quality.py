"""How much a recipe learns: this toolkit against the OpenCLIP peer on a real image-caption benchmark, one command.

    python -m scripts.bench_quality ../bench-data/icons                       # default recipe vs OpenCLIP, seed 0
    python -m scripts.bench_quality ../bench-data/icons --seeds 0 1 --peer-lr 5e-4
    python -m scripts.bench_quality ../bench-data/glyphs --config configs/best_small.yaml --seeds 0 1
    python -m scripts.bench_quality DIR --config C optim.lr=5e-4 --no-peer   # a recipe alone (dotted overrides)

DIR holds `train.csv` and `test.csv` (columns `image`, relative to the CSV, and `caption`; row i's caption names row
i's image). Both contenders train on train.csv for the same epochs (the toolkit: its config's, or --epochs for
both) at the tiny budget: ViT 64 px / patch 8, width 192, 4+4 layers, embed 128, batch 128, fp32, 2 loader workers.
The peer is OpenCLIP's own training entry point with its pretrained 49,408-token BPE at context 32, AdamW wd 0.1 and
30 warm-up steps (`pip install -e .[bench]`). Each saves weights every `--curve-every` epochs; afterwards every
saved model is scored with the same code (`contrastive.evaluation.metrics.retrieval_metrics`): text->image and image->text
R@1/5/10 on both splits, every row a candidate. The wall time of a saved model is its file's time since its process
started, so the curve (held-out text->image R@1 against seconds, a PNG) also gives each contender's score at the
other's wall-clock budget. Results: a JSON line per contender and seed, a markdown table appended to
docs/benchmarks.md ("## Learning quality"), the PNG in docs/images/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

from contrastive.evaluation.metrics import retrieval_metrics

PEER_MODEL = {"embed_dim": 128,
              "vision_cfg": {"image_size": 64, "layers": 4, "width": 192, "head_width": 64, "patch_size": 8},
              "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 192, "heads": 3, "layers": 4}}
METRICS = [f"{d}_R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="benchmark folder with train.csv and test.csv")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the toolkit's config (key.sub=value)")
    p.add_argument("--config", default=str(ROOT / "configs/shapes_tiny.yaml"), help="the toolkit's recipe")
    p.add_argument("--epochs", type=int, default=0, help="epochs for both (0: the toolkit config's; the peer gets the same)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--peer-seeds", type=int, nargs="*", default=None, help="seeds of the peer (default: --seeds)")
    p.add_argument("--peer-lr", type=float, default=5e-4, help="OpenCLIP's learning rate (at 1e-3 it collapses on icons)")
    p.add_argument("--no-peer", action="store_true", help="train the toolkit only")
    p.add_argument("--peer-from", default="", help="reuse the peer runs of an earlier results.json (same data, seeds, epochs)")
    p.add_argument("--curve-every", type=int, default=2, help="save and score every N epochs (the curve's points)")
    p.add_argument("--work", default="", help="folder for runs (default: a fresh one under /tmp)")
    p.add_argument("--name", default="", help="label of the toolkit contender (default: the config's stem)")
    p.add_argument("--output", default=str(ROOT / "docs/benchmarks.md"), help="markdown file to append to ('' = none)")
    p.add_argument("--plot", default="", help="PNG of held-out R@1 against seconds (default docs/images/quality_<data>_<name>.png)")
    a = p.parse_intermixed_args(argv)
    if a.epochs < 0 or a.curve_every < 1:
        p.error("--epochs must be >= 0 and --curve-every >= 1")
    return a


def read_split(data: Path, split: str) -> tuple[list[str], list[str]]:
    """(image paths, captions) of DIR/<split>.csv, row-aligned."""
    with open(data / f"{split}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [str(data / r["image"]) for r in rows], [r["caption"] for r in rows]


def recall(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> dict[str, float]:
    """Percent R@1/5/10 both ways; row i of each is a pair and every row is a candidate."""
    m = retrieval_metrics(image_embeds.float(), text_embeds.float(), torch.arange(len(text_embeds)))
    out = {}
    for ours, key in (("t2i", "image_retrieval"), ("i2t", "text_retrieval")):
        for k in (1, 5, 10):
            out[f"{ours}_R@{k}"] = round(100 * m[f"{key}_recall@{k}"], 2)
    return out


class Pixels:
    """Each split's images through one contender's eval preprocessing, decoded once for all its saved models."""

    def __init__(self, preprocess) -> None:
        self.preprocess, self.cache = preprocess, {}

    def __call__(self, split: str, paths: list[str]) -> torch.Tensor:
        if split not in self.cache:
            self.cache[split] = torch.stack([self.preprocess(Image.open(p).convert("RGB")) for p in paths])
        return self.cache[split]  # (N, 3, S, S)


@torch.no_grad()
def score(encode_image, encode_text, pixels: Pixels, tokenize, splits: dict) -> dict[str, dict[str, float]]:
    """Recall on each split with a contender's own preprocessing and tokenizer, in batches of 256."""
    out = {}
    for split, (paths, captions) in splits.items():
        x = pixels(split, paths)
        img = torch.cat([encode_image(x[i:i + 256]) for i in range(0, len(x), 256)])
        txt = torch.cat([encode_text(tokenize(captions[i:i + 256])) for i in range(0, len(captions), 256)])
        out[split] = recall(torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1))
    return out


def run_timed(cmd: list[str], log: Path, env: dict | None = None) -> tuple[float, float]:
    """Run `cmd` to completion with its output in `log`; (start time, seconds)."""
    start = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"{cmd[0]} ... failed (exit {proc.returncode}); see {log}:\n" + "\n".join(tail))
    return start, time.time() - start


def toolkit(a, data: Path, work: Path, seed: int, splits: dict) -> dict:
    from contrastive import load
    from contrastive.config import load_config

    name = f"toolkit-seed{seed}"
    base = load_config(a.config, a.overrides + [f"data.train={data / 'train.csv'}"])
    epochs = a.epochs or (base.train.epochs if base.train.max_steps <= 0 else 0)
    if not epochs:
        raise SystemExit("the toolkit config sets train.max_steps; give --epochs so both contenders train alike")
    steps_per_epoch = len(splits["train"][0]) // base.train.batch_size  # rows as the CSV reader counts them
    overrides = a.overrides + [
        f"data.train={data / 'train.csv'}", "data.val=", f"train.epochs={epochs}", "train.max_steps=0",
        f"train.seed={seed}", f"train.output_dir={work}", f"train.run_name={name}", "train.overwrite=true",
        f"train.save_every_n_steps={a.curve_every * steps_per_epoch}", "train.keep_checkpoints=1000",
        "eval.best_metric=", "train.progress_bar=false"]
    start, seconds = run_timed([sys.executable, "-m", "contrastive", "train", "--config", a.config, *overrides],
                               work / f"{name}.log")
    curve, pixels = [], None
    ckpts = sorted((work / name / "checkpoints").glob("step_*"))
    for ckpt in ckpts:
        model, preprocess, tokenizer = load(ckpt)
        pixels = pixels or Pixels(preprocess)
        scored = splits if ckpt == ckpts[-1] else {"test": splits["test"]}  # the curve needs the test split only
        res = score(model.encode_image, model.encode_text, pixels, tokenizer, scored)
        step = int(ckpt.name.split("_")[1])
        curve.append({"epoch": step / steps_per_epoch, "seconds": (ckpt / "model.safetensors").stat().st_mtime - start, **res})
    return {"contender": a.name or Path(a.config).stem, "seed": seed, "epochs": epochs, "train_s": round(seconds, 1),
            "command": "contrastive train --config " + shlex.join([os.path.relpath(a.config, ROOT), *a.overrides]),
            **{k: curve[-1][k] for k in ("train", "test")}, "curve": curve}


def peer(a, data: Path, work: Path, seed: int, epochs: int, splits: dict) -> dict:
    import open_clip

    name = f"openclip-seed{seed}-lr{a.peer_lr:g}"
    cfg_file = work / "bench-tiny.json"
    cfg_file.write_text(json.dumps(PEER_MODEL))
    tsv = work / "train.tsv"
    paths, captions = splits["train"]
    with open(tsv, "w") as f:  # OpenCLIP's CSV loader: tab-separated, its own column names
        f.write("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in zip(paths, captions)))
    script = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
              "from open_clip_train.main import main; main(sys.argv[2:])")
    args = ["--train-data", str(tsv), "--dataset-type", "csv", "--model", "bench-tiny", "--batch-size", "128",
            "--epochs", str(epochs), "--lr", str(a.peer_lr), "--wd", "0.1", "--warmup", "30", "--workers", "2",
            "--precision", "fp32", "--logs", str(work), "--name", name, "--seed", str(seed),
            "--save-frequency", str(a.curve_every), "--log-every-n-steps", "15"]
    if (work / name).exists():
        import shutil

        shutil.rmtree(work / name)
    start, seconds = run_timed([sys.executable, "-c", script, str(cfg_file), *args], work / f"{name}.log")
    open_clip.add_model_config(str(cfg_file))
    tok = open_clip.get_tokenizer("bench-tiny")
    curve = []
    ckpts = sorted((work / name / "checkpoints").glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    pixels = None
    for ckpt in ckpts:
        model, _, preprocess = open_clip.create_model_and_transforms("bench-tiny", pretrained=str(ckpt))
        model.eval()
        pixels = pixels or Pixels(preprocess)
        scored = splits if ckpt == ckpts[-1] else {"test": splits["test"]}
        res = score(model.encode_image, model.encode_text, pixels, tok, scored)
        curve.append({"epoch": int(ckpt.stem.split("_")[1]), "seconds": ckpt.stat().st_mtime - start, **res})
    return {"contender": f"OpenCLIP lr {a.peer_lr:g}", "seed": seed, "epochs": epochs, "train_s": round(seconds, 1),
            **{k: curve[-1][k] for k in ("train", "test")}, "curve": curve}


def at_seconds(curve: list[dict], seconds: float) -> dict | None:
    """The last point of a curve reached within `seconds`."""
    inside = [p for p in curve if p["seconds"] <= seconds * 1.02]
    return inside[-1] if inside else None


def mean_over_seeds(results: list[dict]) -> dict:
    out = {"train_s": statistics.median(r["train_s"] for r in results)}
    for split in ("train", "test"):
        out[split] = {m: round(statistics.mean(r[split][m] for r in results), 2) for m in METRICS}
    return out


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for (label, runs), colour in zip(results.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        for i, r in enumerate(runs):
            xs = [0] + [p["seconds"] for p in r["curve"]]
            ys = [0] + [p["test"]["t2i_R@1"] for p in r["curve"]]
            ax.plot(xs, ys, marker="o", ms=3, color=colour, alpha=0.9 if i == 0 else 0.5,
                    label=label if i == 0 else None)
    ax.set_xlabel("wall-clock seconds (training, this machine)")
    ax.set_ylabel("held-out text→image R@1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def machine() -> str:
    from scripts.speedbench import machine_description

    return machine_description(torch.device("cpu"))


def markdown(a, data: Path, results: dict[str, list[dict]], toolkit_label: str, peer_label: str | None) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    argv = " ".join(shlex.quote(x) for x in sys.argv[1:])
    lines = [f"### {data.name}: {toolkit_label} vs {peer_label or '-'} ({when})", "",
             f"`python -m scripts.bench_quality {argv}` on {machine()}; mean over each contender's seeds, percent.", "",
             "| contender | seeds | epochs | train s (median) | train t→i R@1 | test t→i R@1 | test t→i R@5 | test t→i R@10 | "
             "test i→t R@1 | test i→t R@10 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    means = {label: mean_over_seeds(runs) for label, runs in results.items()}
    for label, runs in results.items():
        m = means[label]
        lines.append(f"| {label} | {', '.join(str(r['seed']) for r in runs)} | {runs[0]['epochs']} | {m['train_s']:.0f} | {m['train']['t2i_R@1']:.2f} | "
                     f"{m['test']['t2i_R@1']:.2f} | {m['test']['t2i_R@5']:.2f} | {m['test']['t2i_R@10']:.2f} | "
                     f"{m['test']['i2t_R@1']:.2f} | {m['test']['i2t_R@10']:.2f} |")
    if peer_label:
        t, p = means[toolkit_label], means[peer_label]
        ratio = lambda s, k: t[s][k] / p[s][k] if p[s][k] else float("inf")
        lines += ["", f"Ratios to the peer (equal epochs): test t→i R@1 {ratio('test', 't2i_R@1'):.2f}×, "
                      f"test t→i R@10 {ratio('test', 't2i_R@10'):.2f}×, test i→t R@10 {ratio('test', 'i2t_R@10'):.2f}×, "
                      f"train t→i R@1 {ratio('train', 't2i_R@1'):.2f}×; wall time {t['train_s'] / p['train_s']:.2f}×."]
        # equal wall clock: each toolkit run at the peer's time, from its curve
        same = [at_seconds(r["curve"], statistics.median(q["train_s"] for q in results[peer_label]))
                for r in results[toolkit_label]]
        if all(same):
            r1 = statistics.mean(s["test"]["t2i_R@1"] for s in same)
            base = p["test"]["t2i_R@1"]
            lines.append(f"At the peer's wall-clock time: the toolkit's held-out t→i R@1 {r1:.2f}% "
                         f"({r1 / base if base else float('inf'):.2f}× the peer's final {base:.2f}%).")
    return "\n".join(lines) + "\n"


def append_markdown(path: Path, text: str) -> None:
    body = path.read_text() if path.exists() else "# Benchmarks\n"
    if "## Learning quality" not in body:
        body = body.rstrip() + "\n\n## Learning quality\n\n" + (
            "Real image-caption benchmarks (`../shared/bench/`: train on one designer's images, retrieve another's by "
            "caption), this toolkit's recipes against the OpenCLIP peer at the same model size and epochs, scored by "
            "the same retrieval code. Command and machine above each table.\n")
    head, sep, tail = body.partition("## Learning quality")
    nxt = tail.find("\n## ", 1)
    section, rest = (tail, "") if nxt < 0 else (tail[:nxt], tail[nxt:])
    path.write_text(head + sep + section.rstrip() + "\n\n" + text + rest)


def main(argv=None) -> None:
    a = parse_args(argv)
    data = Path(a.data).resolve()
    for split in ("train", "test"):
        if not (data / f"{split}.csv").is_file():
            raise SystemExit(f"{data / split}.csv not found")
    import tempfile

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix=f"bench_quality_{data.name}_"))
    work.mkdir(parents=True, exist_ok=True)
    splits = {s: read_split(data, s) for s in ("train", "test")}
    label = a.name or Path(a.config).stem
    results: dict[str, list[dict]] = {label: []}
    peer_label = None if a.no_peer else f"OpenCLIP lr {a.peer_lr:g}"
    if peer_label:
        results[peer_label] = []
    peer_seeds = a.seeds if a.peer_seeds is None else a.peer_seeds
    for seed in sorted(set(a.seeds) | set(peer_seeds)):
        if seed in a.seeds:
            r = toolkit(a, data, work, seed, splits)
            print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
            results[label].append(r)
        if seed not in peer_seeds:
            continue
        if peer_label and a.peer_from:
            earlier = json.loads(Path(a.peer_from).read_text())
            q = next((q for q in earlier.get(peer_label, []) if q["seed"] == seed), None)
            if q is None:
                raise SystemExit(f"{a.peer_from} holds no '{peer_label}' run of seed {seed}")
            results[peer_label].append(q)
        elif peer_label:
            q = peer(a, data, work, seed, results[label][0]["epochs"], splits)
            print(json.dumps({k: v for k, v in q.items() if k != "curve"}), flush=True)
            results[peer_label].append(q)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    text = markdown(a, data, results, label, peer_label)
    png = Path(a.plot) if a.plot else ROOT / "docs/images" / f"quality_{data.name}_{label}.png"
    plot(results, png, f"{data.name}: held-out text→image R@1 during training")
    text += f"\n![held-out R@1 against wall-clock time]({os.path.relpath(png, ROOT / 'docs')})\n"
    print(text)
    if a.output:
        append_markdown(Path(a.output), text)
    print(f"runs in {work}; plot {png}")


if __name__ == "__main__":
    main()
