"""The figures README quotes for a trained shapes model, printed by code instead of typed.

    contrastive train --config configs/shapes_tiny.yaml train.run_name=default
    python -m scripts.default_figures runs/default                  # prints the figures (markdown)
    python -m scripts.default_figures runs/default --readme README.md   # and rewrites README's quick-start figures

On the bundled held-out set (`data/shapes/val.csv`, 400 images): top-1 caption ranking among all held-out captions
(and its chance), text->image and image->text recall@1/5, the median rank, and zero-shot accuracy for each attribute
the captions name (colour, size, shape, position; classes from `data/shapes/classes_<attribute>.txt`), all through
`contrastive.evaluation.evaluate.evaluate_dataset`, the code behind `contrastive eval`. With `--readme`, the text
between the markers `<!-- default-figures -->` and `<!-- /default-figures -->` is replaced.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from contrastive.evaluation.evaluate import evaluate_dataset

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "data/shapes"
ATTRIBUTES = ("color", "size", "shape", "position")
MARKERS = ("<!-- default-figures -->", "<!-- /default-figures -->")


def figures(run: str | Path, data: Path = SHAPES) -> dict[str, float]:
    """Retrieval and zero-shot figures of `run` (a run directory or checkpoint) on `data`/val.csv."""
    metrics = evaluate_dataset(run, data / "val.csv", "retrieval")["metrics"]
    out = {"caption_ranking_acc1": metrics["caption_ranking_acc1"], "caption_ranking_chance": metrics["caption_ranking_chance"],
           "t2i_recall@1": metrics["image_retrieval_recall@1"], "t2i_recall@5": metrics["image_retrieval_recall@5"],
           "i2t_recall@1": metrics["text_retrieval_recall@1"], "i2t_recall@5": metrics["text_retrieval_recall@5"],
           "t2i_median_rank": metrics["image_retrieval_median_rank"]}
    for attribute in ATTRIBUTES:
        zs = evaluate_dataset(run, data / "val.csv", "zeroshot", class_key=attribute,
                              classes_file=data / f"classes_{attribute}.txt")["metrics"]
        out[f"zeroshot_{attribute}_acc1"] = zs["acc1"]
    return out


def summary(f: dict[str, float], steps: int | None) -> str:
    """The README paragraph of these figures."""
    trained = f"{steps} steps at batch 128, " if steps else ""
    chance = f["caption_ranking_chance"]
    zero_shot = ", ".join(f"{a} {f[f'zeroshot_{a}_acc1']:.2f}" for a in ATTRIBUTES)
    return (f"What it reaches ({trained}`train.seed` 0; printed by `python -m scripts.default_figures RUN`): on the 400 "
            f"held-out images, top-1 caption ranking among all {round(1 / chance)} held-out captions "
            f"**{f['caption_ranking_acc1']:.3f}** against a chance of {chance:.4f} "
            f"({f['caption_ranking_acc1'] / chance:.0f}×), text→image recall@5 {f['t2i_recall@5']:.3f}, image→text "
            f"recall@5 {f['i2t_recall@5']:.3f}, median rank {f['t2i_median_rank']:g}; zero-shot accuracy {zero_shot} "
            "(earlier recipes and what start-up prints: [docs/training.md](docs/training.md#what-the-default-recipe-reaches)).")


def replace_between_markers(text: str, new: str) -> str:
    start, end = MARKERS
    if start not in text or end not in text:
        raise SystemExit(f"the README has no {start} ... {end} block to replace")
    return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{new}\n{end}", text, count=1, flags=re.S)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory or checkpoint of a shapes model")
    p.add_argument("--readme", default="", help="rewrite this README's figures block")
    a = p.parse_args(argv)
    f = figures(a.run)
    summary_file = Path(a.run) / "summary.json"
    steps = json.loads(summary_file.read_text()).get("steps") if summary_file.is_file() else None
    text = summary(f, steps)
    print(json.dumps({k: round(v, 4) for k, v in f.items()}))
    print(text)
    if a.readme:
        path = Path(a.readme)
        path.write_text(replace_between_markers(path.read_text(), text))
        print(f"updated {path}")


if __name__ == "__main__":
    main()
