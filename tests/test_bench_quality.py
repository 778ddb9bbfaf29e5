"""scripts/bench_quality.py: its recall against a naive count, its markdown and curve helpers, and one real run."""

import json

import torch
from PIL import Image


from scripts import bench_quality as bq


def test_recall_matches_a_naive_count():
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.8 * torch.randn(40, 8, generator=g), dim=-1)
    out = bq.recall(img, txt)
    sim = img @ txt.T
    for k in (1, 5, 10):
        t2i = sum(int((sim[:, i] > sim[i, i]).sum()) < k for i in range(40)) / 40  # text i queries all images
        i2t = sum(int((sim[i] > sim[i, i]).sum()) < k for i in range(40)) / 40
        assert out[f"t2i_R@{k}"] == round(100 * t2i, 2) and out[f"i2t_R@{k}"] == round(100 * i2t, 2)
    assert 0 < out["t2i_R@1"] < out["t2i_R@10"] < 100


def test_at_seconds_takes_the_last_point_within_the_budget():
    curve = [{"seconds": 10, "v": 1}, {"seconds": 20, "v": 2}, {"seconds": 30, "v": 3}]
    assert bq.at_seconds(curve, 25)["v"] == 2 and bq.at_seconds(curve, 5) is None and bq.at_seconds(curve, 30)["v"] == 3


def test_markdown_goes_into_its_own_section(tmp_path):
    md = tmp_path / "b.md"
    md.write_text("# Benchmarks\n\n## Loss\n\nx\n")
    bq.append_markdown(md, "### run 1\n")  # no section yet: made at the end
    text = md.read_text()
    assert text.index("## Loss") < text.index("## Learning quality") < text.index("### run 1")
    md.write_text("# Benchmarks\n\n## Learning quality\n\nintro\n\n### run 1\n\n## Later\n\ny\n")
    bq.append_markdown(md, "### run 2\n")  # into the section, before the next one
    text = md.read_text()
    assert text.index("intro") < text.index("### run 1") < text.index("### run 2") < text.index("## Later")
    assert text.count("## Learning quality") == 1 and text.endswith("y\n")


def test_a_toolkit_run_is_trained_scored_and_reported(tmp_path):
    data = tmp_path / "bench"
    data.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "black": (0, 0, 0)}
    for split in ("train", "test"):
        rows = ["image,caption"]
        for i, (name, rgb) in enumerate(colours.items()):
            for j in range(4 if split == "train" else 1):
                path = f"{split}_{i}_{j}.png"
                Image.new("RGB", (16, 16), tuple(min(255, c + 10 * j) for c in rgb)).save(data / path)
                rows.append(f"{path},{name} square {j}")
        (data / f"{split}.csv").write_text("\n".join(rows) + "\n")
    md = tmp_path / "bench.md"
    bq.main([str(data), "model.image_size=16", "model.image_encoder_args={layers: 1}", "model.text_encoder_args={layers: 1}",
             "train.batch_size=8", "data.num_workers=0", "data.persistent_workers=false", "--epochs", "4",
             "--curve-every", "2", "--no-peer", "--work", str(tmp_path / "work"), "--output", str(md),
             "--plot", str(tmp_path / "curve.png")])
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    (run,) = results["shapes_tiny"]
    assert run["epochs"] == 4 and [p["epoch"] for p in run["curve"]] == [2, 4]  # 16 rows / 8 = 2 steps an epoch
    assert set(run["test"]) == {f"{d}_R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)}
    assert run["test"]["t2i_R@10"] == 100.0  # 4 test rows: every one is within the top 10
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert "| shapes_tiny | 0 | 4 |" in md.read_text()
