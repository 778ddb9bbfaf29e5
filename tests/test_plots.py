"""Pictures: a run's curves and the caption-ranking heatmap are written as PNGs that decode."""

import json

import pytest
import torch
from PIL import Image

from contrastive.cli import main
from contrastive.evaluation.plots import plot_caption_heatmap, plot_run
from tests.conftest import ROOT


def decode(path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG"
        return img.copy()


def test_plot_run_writes_every_curve(tiny_run, tmp_path, capsys):
    assert main(["plot", str(tiny_run), "--output", str(tmp_path / "plots")]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.rsplit("/", 1)[-1] for p in printed)
    assert names == ["eval.png", "loss.png", "lr.png", "temperature.png"]
    for path in printed:
        img = decode(path)
        assert img.width >= 400 and img.height >= 200
        # a drawn curve: far from a blank canvas
        assert len(img.convert("L").getcolors(maxcolors=256)) > 10


def test_plot_run_without_eval_and_dedupes_resumed_steps(tmp_path):
    rows = [{"step": s, "loss": 5.0 - s, "logit_scale": 14.0, "lr": 1e-3} for s in (1, 2, 3)]
    rows.append({"step": 2, "loss": 9.0, "logit_scale": 14.0, "lr": 1e-3})  # a resumed run logs step 2 again
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = plot_run(tmp_path)
    assert sorted(p.name for p in written) == ["loss.png", "lr.png", "temperature.png"]
    assert all(p.parent == tmp_path / "plots" for p in written)
    from contrastive.evaluation.plots import _series

    assert _series(rows, "loss") == ([1, 2, 3], [4.0, 9.0, 2.0])


def test_plot_of_a_folder_without_metrics_is_a_user_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "metrics.jsonl" in capsys.readouterr().err


def test_heatmap_png(tmp_path):
    images = [str(ROOT / f"data/shapes/images/val/{i:05d}.jpg") for i in range(3)]
    captions = ["a red circle", "a very long caption about a small blue square in the top left corner", "x", "y"]
    probs = torch.rand(3, 4).softmax(dim=1)
    img = decode(plot_caption_heatmap(images, captions, probs, tmp_path / "sub" / "h.png", title="t"))
    wider = decode(plot_caption_heatmap(images, captions + ["z"], torch.rand(3, 5).softmax(1), tmp_path / "w.png"))
    assert wider.width > img.width > 400
    # the thumbnails are drawn in the left margin: its pixels are not all white
    margin = img.convert("RGB").crop((10, img.height // 2 - 20, 120, img.height // 2 + 20))
    assert min(low for low, _ in margin.getextrema()) < 200
    with pytest.raises(ValueError, match="do not match"):
        plot_caption_heatmap(images[:2], captions, probs, tmp_path / "bad.png")


def test_plot_skips_a_line_cut_by_a_kill(tmp_path, capsys):
    rows = [json.dumps({"step": s, "loss": 5.0 - s, "logit_scale": 14.0, "lr": 1e-3}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + "\n" + rows[0][:17])  # the last write was cut
    assert main(["plot", str(tmp_path)]) == 0
    assert sorted(p.rsplit("/", 1)[-1] for p in capsys.readouterr().out.split()) == ["loss.png", "lr.png", "temperature.png"]
    from contrastive.evaluation.plots import read_metrics

    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    # a resumed run appending its first row to the cut line: that row is kept, the fragment dropped
    (tmp_path / "metrics.jsonl").write_text(rows[0] + "\n" + rows[1][:20] + rows[2] + "\n[1, 2]\n7\n")
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 3]


def test_plot_of_empty_metrics_is_one_line_and_writes_nothing(tmp_path, capsys):
    for text in ("", "\n\n", '{"step": 1, "lo'):
        (tmp_path / "metrics.jsonl").write_text(text)
        assert main(["plot", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no metrics rows" in err[0]
        assert not (tmp_path / "plots").exists()
