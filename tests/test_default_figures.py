"""scripts/default_figures.py: the README's figures come from `contrastive eval`'s code, and only its block changes."""

import pytest

from contrastive.evaluation.evaluate import evaluate_dataset
from scripts import default_figures as df
from tests.conftest import ROOT


def test_the_figures_are_the_eval_commands(tiny_run, tmp_path):
    # a 64-image slice of the held-out set keeps it quick; the code path is the full one
    data = tmp_path / "shapes"
    data.mkdir()
    lines = (ROOT / "data/shapes/val.csv").read_text().splitlines(keepends=True)
    (data / "val.csv").write_text(lines[0] + "".join(str(ROOT / "data/shapes") + "/" + line for line in lines[1:65]))
    for attribute in df.ATTRIBUTES:
        (data / f"classes_{attribute}.txt").write_text((ROOT / f"data/shapes/classes_{attribute}.txt").read_text())
    f = df.figures(tiny_run, data)
    retrieval = evaluate_dataset(tiny_run, data / "val.csv", "retrieval")["metrics"]
    assert f["t2i_recall@5"] == retrieval["image_retrieval_recall@5"]
    assert f["caption_ranking_chance"] == pytest.approx(1 / 64)
    assert all(0.0 <= f[f"zeroshot_{a}_acc1"] <= 1.0 for a in df.ATTRIBUTES)
    text = df.summary(f, 2)
    assert text.startswith("What it reaches (2 steps") and "all 64 held-out captions" in text


def test_only_the_marked_block_of_the_readme_changes():
    readme = "intro\n<!-- default-figures -->\nold figures\n<!-- /default-figures -->\nrest\n"
    assert df.replace_between_markers(readme, "new") == "intro\n<!-- default-figures -->\nnew\n<!-- /default-figures -->\nrest\n"
    with pytest.raises(SystemExit, match="no <!-- default-figures -->"):
        df.replace_between_markers("no block here", "new")
    assert df.MARKERS[0] in (ROOT / "README.md").read_text()  # the README carries the block the script rewrites
