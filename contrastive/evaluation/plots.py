"""Pictures: training curves of a run directory, and the image x caption probability heatmap of caption ranking.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot), so importing or calling this module never
changes the global backend or opens a window.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

# Eval keys grouped into panels: (panel title, y label, predicate on the key without its "val/" prefix).
_EVAL_PANELS = [
    ("retrieval recall@k", "recall", lambda k: "_recall@" in k),
    ("zero-shot classification", "accuracy", lambda k: k in ("acc1", "acc5", "mean_per_class_recall")),
    ("caption ranking (top-1)", "accuracy", lambda k: k.startswith("caption_ranking")),
    ("retrieval rank", "rank (lower is better)", lambda k: k.endswith("_rank")),
]


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of `<run_dir>/metrics.jsonl`. A line cut by a kill mid-write is skipped; when a resumed run appended
    its first row to such a line, that row is kept."""
    from ..errors import DataError

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{run_dir} has no metrics.jsonl (is it a run directory?)")
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    rows = [row for line in text.splitlines() if (row := _metrics_row(line)) is not None]
    if not rows:
        raise DataError(f"{path} holds no metrics rows yet; plot once the run has logged a step")
    return rows


def _metrics_row(line: str) -> dict | None:
    """One logged row, or None for a blank or partial line. Rows begin with `{"step": `, so a partial line that a
    later row was appended to holds that row from the last such start."""
    for start in dict.fromkeys((0, line.rfind('{"step"'))):
        if start < 0:
            continue
        try:
            row = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            return row
    return None


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    # A resumed run may log a step twice; the later value wins.
    points = {r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])}
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def _natural(key: str) -> list:
    # recall@5 before recall@10
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write loss.png, temperature.png, lr.png and (when the run evaluated) eval.png; returns their paths.

    `out_dir` defaults to `<run_dir>/plots`.
    """
    rows = read_metrics(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, key, ylabel, log in (("loss", "loss", "training loss", False),
                                   ("temperature", "logit_scale", "logit scale (1 / temperature)", False),
                                   ("lr", "lr", "learning rate", False)):
        steps, values = _series(rows, key)
        if not steps:
            continue
        fig = _figure(6, 3.6)
        ax = fig.add_subplot()
        ax.plot(steps, values, color="tab:blue", lw=1.5, marker="." if len(steps) < 30 else None)
        if log:
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=ylabel, title=f"{Path(run_dir).name}: {ylabel}")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png")
        written.append(out / f"{name}.png")

    eval_keys = sorted({k for r in rows for k in r if k.startswith("val/")}, key=_natural)
    panels = []
    for title, ylabel, wanted in _EVAL_PANELS:
        keys = [k for k in eval_keys if wanted(k[len("val/"):]) and not k.endswith("_chance")]
        if keys:
            panels.append((title, ylabel, keys))
    if panels:
        fig = _figure(6.5, 3.4 * len(panels))
        for n, (title, ylabel, keys) in enumerate(panels, 1):
            ax = fig.add_subplot(len(panels), 1, n)
            for key in keys:
                steps, values = _series(rows, key)
                ax.plot(steps, values, marker="o", ms=3, lw=1.3, label=key[len("val/"):])
            if title.startswith("caption ranking"):
                steps, chance = _series(rows, "val/caption_ranking_chance")
                if steps:
                    ax.plot(steps, chance, ls="--", color="grey", lw=1, label="chance")
            ax.set(xlabel="step", ylabel=ylabel, title=title)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(out / "eval.png")
        written.append(out / "eval.png")
    return written


def plot_caption_heatmap(images: Sequence[str | Path], captions: Sequence[str], probabilities: torch.Tensor,
                         out_path: str | Path, *, title: str | None = None, thumbnail_px: int = 64) -> Path:
    """Heatmap of probabilities (N_img, N_txt): a thumbnail of each image labels its row, captions the columns."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    probs = probabilities.detach().float().cpu()
    n_img, n_txt = probs.shape
    if (n_img, n_txt) != (len(images), len(captions)):
        raise ValueError(f"probabilities {tuple(probs.shape)} do not match {len(images)} images x {len(captions)} captions")
    cell = 1.35  # inches per column / row
    label_lines = [textwrap.fill(c, 18) for c in captions]
    caption_height = 0.17 * max(t.count("\n") + 1 for t in label_lines) + 0.2  # labels sit above the columns
    title_height = 0.4 if title else 0.0
    left, bottom = 1.4, 0.3  # thumbnails live in the left margin
    width, height = left + cell * n_txt + 1.0, bottom + cell * n_img + caption_height + title_height
    fig = _figure(width, height)
    ax = fig.add_axes([left / width, bottom / height, cell * n_txt / width, cell * n_img / height])
    im = ax.imshow(probs.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(n_img):
        for j in range(n_txt):
            p = probs[i, j].item()
            ax.text(j, i, f"{p:.2f}", ha="center", va="center", fontsize=9, color="black" if p > 0.6 else "white")
    ax.set_xticks(range(n_txt), label_lines, fontsize=8)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    zoom = (cell * 0.8 * 72) / thumbnail_px  # OffsetImage sizes in points: a thumbnail fills 80% of its row
    for i, path in enumerate(images):
        with Image.open(path) as img:
            thumb = img.convert("RGB")
        thumb = thumb.resize((thumbnail_px, round(thumbnail_px * thumb.height / thumb.width)))
        # anchored at the left edge of row i, drawn a few points further left, right-aligned
        box = AnnotationBbox(OffsetImage(thumb, zoom=zoom), (-0.5, i), xybox=(-6, 0), xycoords="data",
                             boxcoords="offset points", box_alignment=(1.0, 0.5), frameon=False, annotation_clip=False)
        ax.add_artist(box)
    cax = fig.add_axes([(left + cell * n_txt + 0.15) / width, bottom / height, 0.15 / width, cell * n_img / height])
    fig.colorbar(im, cax=cax, label="probability")
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.1 / height, va="top")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    return out_path


def plot_tradeoff(xs: Sequence[float], ys: Sequence[float], labels: Sequence[str], out: str | Path, *, xlabel: str,
                  ylabel: str, title: str = "") -> Path:
    """A curve of (x, y) points, each labelled (e.g. WiSE-FT's reference score against its target score, one point
    per alpha); writes the PNG and returns its path."""
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(list(xs), list(ys), "-o", color="tab:blue")
    for label, x, y in zip(labels, xs, ys):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(out))
    return Path(out)
