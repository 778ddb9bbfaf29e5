"""How much a recipe learns: this toolkit against a tuned OpenCLIP peer on a real image-caption benchmark, one
command.

    python -m scripts.bench_quality ../bench-data/icons                    # default recipe vs OpenCLIP, seed 0
    python -m scripts.bench_quality ../bench-data/icons --seeds 0 1 --search-lr 5e-4 1e-3 --search-warmup 30 100
    python -m scripts.bench_quality ../bench-data/glyphs --config configs/best_small.yaml --seeds 0 1
    python -m scripts.bench_quality DIR --config C optim.lr=5e-4 --no-peer  # a recipe alone (dotted overrides)

DIR holds `train.csv` and `test.csv` (columns `image`, relative to the CSV, and `caption`; row i's caption names row
i's image). A validation split is held out of train.csv (`--val-fraction`, default 10% of its distinct captions,
chosen by a stable hash of the caption, so the same items every time): both contenders train on the rest, every
choice (the learning-rate / warm-up search) is made on validation, and the test split is reported once, for the
chosen settings. Both contenders train for the same epochs (the toolkit config's, or --epochs) at the tiny budget:
ViT 64 px / patch 8, width 192, 4+4 layers, embed 128, batch 128, fp32, 2 loader workers. The peer is OpenCLIP's own
training entry point with its pretrained 49,408-token BPE at context 32 and AdamW wd 0.1 (`pip install -e .[bench]`).

The search (`--search-lr`, `--search-warmup`) is the same grid for both contenders, run back to back in this
invocation with the first seed; each contender's best setting on validation text->image R@1 (then R@10) is then run
with every seed. Each run saves weights every `--curve-every` epochs; every saved model is scored with the same code
(`contrastive.evaluation.metrics.retrieval_metrics`): text->image and image->text R@1/5/10 on each split, every row a
candidate. The wall time of a saved model is its file's time since its process started, so the curves (held-out
text->image R@1 against seconds, a PNG) give the time-to-accuracy figures: the toolkit's R@1 at the peer's final wall
time, and the toolkit's time to reach the peer's final R@1. Results: results.json in --work, a markdown section
appended to docs/benchmarks.md ("## Learning quality"), the PNG in docs/images/. Every ratio divides by the tuned
peer's mean over its seeds.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
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
    p.add_argument("--peer-lr", type=float, default=5e-4, help="OpenCLIP's learning rate without a search")
    p.add_argument("--peer-warmup", type=int, default=100, help="OpenCLIP's warm-up steps without a search")
    p.add_argument("--search-lr", type=float, nargs="*", default=[], help="learning rates searched for both contenders")
    p.add_argument("--search-warmup", type=int, nargs="*", default=[], help="warm-up steps searched for both contenders")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of train.csv's captions held out for choices")
    p.add_argument("--no-peer", action="store_true", help="train the toolkit only")
    p.add_argument("--peer-from", default="", help="reuse the peer runs of an earlier results.json (same data, seeds, epochs)")
    p.add_argument("--curve-every", type=int, default=2, help="save and score every N epochs (the curve's points)")
    p.add_argument("--work", default="", help="folder for runs (default: a fresh one under /tmp)")
    p.add_argument("--name", default="", help="label of the toolkit contender (default: the config's stem)")
    p.add_argument("--output", default=str(ROOT / "docs/benchmarks.md"), help="markdown file to append to ('' = none)")
    p.add_argument("--plot", default="", help="PNG of held-out R@1 against seconds (default docs/images/quality_<data>_<name>.png)")
    a = p.parse_intermixed_args(argv)
    if a.epochs < 0 or a.curve_every < 1 or not 0 <= a.val_fraction < 0.5:
        p.error("--epochs must be >= 0, --curve-every >= 1 and --val-fraction in [0, 0.5)")
    return a


def read_split(data: Path, split: str) -> tuple[list[str], list[str]]:
    """(image paths, captions) of DIR/<split>.csv, row-aligned."""
    with open(data / f"{split}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [str(data / r["image"]) for r in rows], [r["caption"] for r in rows]


def holds_out(caption: str, fraction: float) -> bool:
    """Whether a caption's items go to validation: a stable hash of the caption, so every image named alike goes
    to the same side and every run holds out the same items."""
    digest = hashlib.blake2b(caption.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def split_train(paths: list[str], captions: list[str], fraction: float) -> dict[str, tuple[list[str], list[str]]]:
    """{"train": the rows trained on, "val": the held-out rows} of train.csv (no "val" when `fraction` is 0)."""
    held = [holds_out(c, fraction) for c in captions]
    out = {"train": ([p for p, h in zip(paths, held) if not h], [c for c, h in zip(captions, held) if not h])}
    if fraction > 0:
        out["val"] = ([p for p, h in zip(paths, held) if h], [c for c, h in zip(captions, held) if h])
    return out


def read_columns(data: Path, split: str) -> dict[str, dict[str, str]]:
    """Every column of DIR/<split>.csv beyond image and caption (a benchmark's extra captions, such as `keywords`),
    by absolute image path: a recipe may train on them (`data.caption_key=caption,keywords`); scoring never does."""
    with open(data / f"{split}.csv", newline="", encoding="utf-8") as f:
        return {str(data / r["image"]): {k: v for k, v in r.items() if k not in ("image", "caption")}
                for r in csv.DictReader(f)}


def write_table(path: Path, split: tuple[list[str], list[str]], columns: dict[str, dict[str, str]] | None = None) -> Path:
    """A CSV (image, caption, then `columns`' extra columns of each image) of a split, absolute image paths."""
    columns = columns or {}
    extra = list(next(iter(columns.values()), {}))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "caption", *extra])
        w.writerows([image, caption, *(columns[image][k] for k in extra)] for image, caption in zip(*split))
    return path


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


def toolkit(a, table: Path, work: Path, seed: int, splits: dict, setting: dict | None = None) -> dict:
    """Train and score the toolkit's recipe (with `setting`'s lr / warm-up when given) on `table`."""
    from contrastive import load
    from contrastive.config import load_config

    tuned = [f"optim.lr={setting['lr']:g}", f"optim.warmup_steps={setting['warmup']}"] if setting else []
    overrides_in = a.overrides + tuned
    name = f"toolkit-seed{seed}" + ("" if not setting else f"-lr{setting['lr']:g}-w{setting['warmup']}")
    base = load_config(a.config, overrides_in + [f"data.train={table}"])
    epochs = a.epochs or (base.train.epochs if base.train.max_steps <= 0 else 0)
    if not epochs:
        raise SystemExit("the toolkit config sets train.max_steps; give --epochs so both contenders train alike")
    steps_per_epoch = len(splits["train"][0]) // base.train.batch_size  # rows as the CSV reader counts them
    overrides = overrides_in + [
        f"data.train={table}", "data.val=", f"train.epochs={epochs}", "train.max_steps=0",
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
        res = score(model.encode_image, model.encode_text, pixels, tokenizer, curve_splits(splits, ckpt == ckpts[-1]))
        step = int(ckpt.name.split("_")[1])
        curve.append({"epoch": step / steps_per_epoch, "seconds": (ckpt / "model.safetensors").stat().st_mtime - start, **res})
    return {"contender": a.name or Path(a.config).stem, "seed": seed, "epochs": epochs, "train_s": round(seconds, 1),
            "setting": setting or {"lr": base.optim.lr, "warmup": base.optim.warmup_steps},
            "command": "contrastive train --config " + shlex.join([os.path.relpath(a.config, ROOT), *overrides_in]),
            **{k: curve[-1][k] for k in splits}, "curve": curve}


def curve_splits(splits: dict, last: bool) -> dict:
    """What a saved model is scored on: every split at the end; along the curve the held-out ones only."""
    return splits if last else {k: v for k, v in splits.items() if k != "train"}


def peer(a, work: Path, seed: int, epochs: int, splits: dict, setting: dict) -> dict:
    """Train OpenCLIP with its own entry point at `setting` (lr, warm-up) on splits["train"] and score it."""
    import open_clip

    name = f"openclip-seed{seed}-lr{setting['lr']:g}-w{setting['warmup']}"
    cfg_file = work / "bench-tiny.json"
    cfg_file.write_text(json.dumps(PEER_MODEL))
    tsv = work / "train.tsv"
    paths, captions = splits["train"]
    with open(tsv, "w") as f:  # OpenCLIP's CSV loader: tab-separated, its own column names
        f.write("filepath\ttitle\n" + "".join(f"{p}\t{c}\n" for p, c in zip(paths, captions)))
    script = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); "
              "from open_clip_train.main import main; main(sys.argv[2:])")
    from contrastive.config import load_config

    batch = load_config(a.config, a.overrides).train.batch_size  # the toolkit's batch: both see the same steps
    args = ["--train-data", str(tsv), "--dataset-type", "csv", "--model", "bench-tiny", "--batch-size", str(batch),
            "--epochs", str(epochs), "--lr", str(setting["lr"]), "--wd", "0.1", "--warmup", str(setting["warmup"]),
            "--workers", "2",
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
        res = score(model.encode_image, model.encode_text, pixels, tok, curve_splits(splits, ckpt == ckpts[-1]))
        curve.append({"epoch": int(ckpt.stem.split("_")[1]), "seconds": ckpt.stat().st_mtime - start, **res})
    return {"contender": "OpenCLIP", "seed": seed, "epochs": epochs, "train_s": round(seconds, 1), "setting": setting,
            **{k: curve[-1][k] for k in splits}, "curve": curve}


def at_seconds(curve: list[dict], seconds: float) -> dict | None:
    """The last point of a curve reached within `seconds`."""
    inside = [p for p in curve if p["seconds"] <= seconds * 1.02]
    return inside[-1] if inside else None


def seconds_to_reach(curve: list[dict], target: float, split: str = "test", metric: str = "t2i_R@1") -> float | None:
    """Seconds until a curve first reaches `target` (linear between saved points, from (0 s, 0)); None if never."""
    prev_s, prev_v = 0.0, 0.0
    for p in curve:
        s, v = p["seconds"], p[split][metric]
        if v >= target:
            return s if v == prev_v else prev_s + (target - prev_v) / (v - prev_v) * (s - prev_s)
        prev_s, prev_v = s, v
    return None


def choose(runs: list[dict]) -> dict:
    """The run of a search whose final model is best on validation: text->image R@1, then R@10."""
    return max(runs, key=lambda r: (r["val"]["t2i_R@1"], r["val"]["t2i_R@10"]))


def mean_over_seeds(results: list[dict]) -> dict:
    out = {"train_s": statistics.median(r["train_s"] for r in results)}
    for split in [s for s in ("train", "val", "test") if s in results[0]]:
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


def markdown(a, data: Path, results: dict[str, list[dict]], search: dict[str, list[dict]], toolkit_label: str,
             peer_label: str | None) -> str:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    argv = " ".join(shlex.quote(x) for x in sys.argv[1:])
    val = "val" in results[toolkit_label][0]
    lines = [f"### {data.name}: {toolkit_label} vs {peer_label or '-'} ({when})", "",
             f"`python -m scripts.bench_quality {argv}` on {machine()}; percent, mean over each contender's seeds. "
             + (f"Validation: {len(results[toolkit_label][0]['curve']) and ''}{a.val_fraction:.0%} of train.csv's captions "
                "held out (choices are made there); test: the other designer's images, reported for the chosen "
                "settings only." if val else "No validation split (--val-fraction 0)."), ""]
    if any(len(runs) > 1 for runs in search.values()):
        lines += ["Search (first seed, validation split; the chosen setting in bold):", "",
                  "| contender | lr | warm-up | val t→i R@1 | val t→i R@10 | train s |", "|---|---:|---:|---:|---:|---:|"]
        for label, runs in search.items():
            best = choose(runs)
            for r in runs:
                b = "**" if r is best else ""
                lines.append(f"| {label} | {b}{r['setting']['lr']:g}{b} | {b}{r['setting']['warmup']}{b} | "
                             f"{r['val']['t2i_R@1']:.2f} | {r['val']['t2i_R@10']:.2f} | {r['train_s']:.0f} |")
        lines.append("")
    lines += ["| contender | lr / warm-up | seeds | epochs | train s (median) | train t→i R@1 | "
              + ("val t→i R@1 | " if val else "") + "test t→i R@1 | test t→i R@5 | test t→i R@10 | test i→t R@1 | test i→t R@10 |",
              "|---|---|---|---:|---:|---:|" + ("---:|" if val else "") + "---:|---:|---:|---:|---:|"]
    means = {label: mean_over_seeds(runs) for label, runs in results.items()}
    for label, runs in results.items():
        m, s = means[label], runs[0]["setting"]
        lines.append(f"| {label} | {s['lr']:g} / {s['warmup']} | {', '.join(str(r['seed']) for r in runs)} | {runs[0]['epochs']} | "
                     f"{m['train_s']:.0f} | {m['train']['t2i_R@1']:.2f} | " + (f"{m['val']['t2i_R@1']:.2f} | " if val else "")
                     + f"{m['test']['t2i_R@1']:.2f} | {m['test']['t2i_R@5']:.2f} | {m['test']['t2i_R@10']:.2f} | "
                     f"{m['test']['i2t_R@1']:.2f} | {m['test']['i2t_R@10']:.2f} |")
    if peer_label:
        lines += ["", *comparison(means[toolkit_label], means[peer_label], results[toolkit_label], results[peer_label])]
    return "\n".join(lines) + "\n"


def comparison(t: dict, p: dict, toolkit_runs: list[dict], peer_runs: list[dict]) -> list[str]:
    """Ratios to the tuned peer (its mean over seeds: the one denominator) and the time-to-accuracy figures."""
    ratio = lambda s, k: t[s][k] / p[s][k] if p[s][k] else float("inf")
    te, pe = toolkit_runs[0]["epochs"], peer_runs[0]["epochs"]
    epochs = "equal epochs" if te == pe else f"{te} epochs against the peer's {pe}"
    out = [f"Ratios to the tuned peer's mean ({epochs}, test split): t→i R@1 {ratio('test', 't2i_R@1'):.2f}×, "
           f"t→i R@10 {ratio('test', 't2i_R@10'):.2f}×, i→t R@10 {ratio('test', 'i2t_R@10'):.2f}×; "
           f"train t→i R@1 {ratio('train', 't2i_R@1'):.2f}×; wall time {t['train_s'] / p['train_s']:.2f}×."]
    peer_s, peer_r1 = p["train_s"], p["test"]["t2i_R@1"]
    same = [at_seconds(r["curve"], peer_s) for r in toolkit_runs]
    if all(same):
        r1 = statistics.mean(s["test"]["t2i_R@1"] for s in same)
        out.append(f"Time to accuracy: (a) at the peer's wall time ({peer_s:.0f} s) the toolkit's held-out t→i R@1 is "
                   f"{r1:.2f}% ({r1 / peer_r1 if peer_r1 else float('inf'):.2f}× the peer's final {peer_r1:.2f}%);")
    reach = [seconds_to_reach(r["curve"], peer_r1) for r in toolkit_runs]
    if all(s is not None for s in reach):
        med = statistics.median(reach)
        out.append(f"(b) the toolkit reaches the peer's final R@1 in {med:.0f} s ({med / peer_s:.2f} of the peer's time).")
    else:
        out.append("(b) the toolkit does not reach the peer's final R@1 in every seed.")
    return out


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


def settings(a) -> tuple[list[dict | None], list[dict]]:
    """(the toolkit's settings, the peer's): the searched grid for both, else the config's and --peer-lr/--peer-warmup."""
    if a.search_lr or a.search_warmup:
        if not (a.search_lr and a.search_warmup):
            raise SystemExit("give both --search-lr and --search-warmup (the grid is their product)")
        grid = [{"lr": lr, "warmup": w} for lr in a.search_lr for w in a.search_warmup]
        return list(grid), list(grid)
    return [None], [{"lr": a.peer_lr, "warmup": a.peer_warmup}]


def run_contenders(a, work: Path, table: Path, splits: dict, label: str, peer_label: str | None):
    """Search on the first seed, then every seed at each contender's chosen setting: (results, search)."""
    mine, theirs = settings(a)
    if len(mine) > 1 and "val" not in splits:
        raise SystemExit("a search chooses on the validation split: --val-fraction must be > 0")
    first, peer_seeds = a.seeds[0], a.seeds if a.peer_seeds is None else a.peer_seeds
    search: dict[str, list[dict]] = {label: []}
    for s in mine:
        search[label].append(toolkit(a, table, work, first, splits, s))
        print(json.dumps({k: v for k, v in search[label][-1].items() if k != "curve"}), flush=True)
    results = {label: [choose(search[label]) if len(mine) > 1 else search[label][0]]}
    results[label] += [toolkit(a, table, work, seed, splits, results[label][0]["setting"] if len(mine) > 1 else None)
                       for seed in a.seeds[1:]]
    if peer_label and a.peer_from:
        earlier = json.loads(Path(a.peer_from).read_text())
        results[peer_label], search[peer_label] = earlier["runs"]["OpenCLIP"], earlier["search"]["OpenCLIP"]
    elif peer_label:
        epochs = results[label][0]["epochs"]
        search[peer_label] = [peer(a, work, peer_seeds[0], epochs, splits, s) for s in theirs]
        best = choose(search[peer_label]) if len(theirs) > 1 else search[peer_label][0]
        results[peer_label] = [best] + [peer(a, work, seed, epochs, splits, best["setting"]) for seed in peer_seeds[1:]]
    return results, search


def main(argv=None) -> None:
    a = parse_args(argv)
    data = Path(a.data).resolve()
    for split in ("train", "test"):
        if not (data / f"{split}.csv").is_file():
            raise SystemExit(f"{data / split}.csv not found")
    import tempfile

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix=f"bench_quality_{data.name}_"))
    work.mkdir(parents=True, exist_ok=True)
    splits = {**split_train(*read_split(data, "train"), a.val_fraction), "test": read_split(data, "test")}
    table = write_table(work / "train_fit.csv", splits["train"], read_columns(data, "train"))
    label = a.name or Path(a.config).stem
    peer_label = None if a.no_peer else "OpenCLIP"
    results, search = run_contenders(a, work, table, splits, label, peer_label)
    (work / "results.json").write_text(json.dumps({"runs": results, "search": search}, indent=1))
    text = markdown(a, data, results, search, label, peer_label)
    png = Path(a.plot) if a.plot else ROOT / "docs/images" / f"quality_{data.name}_{label}.png"
    plot(results, png, f"{data.name}: held-out text→image R@1 during training")
    text += f"\n![held-out R@1 against wall-clock time]({os.path.relpath(png, ROOT / 'docs')})\n"
    print(text)
    if a.output:
        append_markdown(Path(a.output), text)
    print(f"runs in {work}; plot {png}")


if __name__ == "__main__":
    main()
