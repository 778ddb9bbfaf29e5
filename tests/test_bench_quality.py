"""scripts/bench_quality.py: its recall against a naive count, its markdown and curve helpers, and one real run."""

import json

import pytest
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


def test_validation_holds_out_whole_captions_stably():
    paths = [f"img{i}.png" for i in range(400)]
    captions = [f"name {i // 2}" for i in range(400)]  # two images per name
    parts = bq.split_train(paths, captions, 0.1)
    train_names, val_names = set(parts["train"][1]), set(parts["val"][1])
    assert not train_names & val_names  # an item's images are all on one side
    assert 10 <= len(val_names) <= 30  # about 10% of 200 names
    assert bq.split_train(paths, captions, 0.1) == parts  # the same items every time
    assert "val" not in bq.split_train(paths, captions, 0.0)


def test_time_to_reach_interpolates_and_choose_uses_validation():
    curve = [{"seconds": 10, "test": {"t2i_R@1": 2.0}}, {"seconds": 20, "test": {"t2i_R@1": 6.0}}]
    assert bq.seconds_to_reach(curve, 4.0) == 15.0 and bq.seconds_to_reach(curve, 1.0) == 5.0
    assert bq.seconds_to_reach(curve, 7.0) is None
    runs = [{"val": {"t2i_R@1": 3.0, "t2i_R@10": 9.0}}, {"val": {"t2i_R@1": 3.0, "t2i_R@10": 12.0}},
            {"val": {"t2i_R@1": 2.0, "t2i_R@10": 30.0}}]
    assert bq.choose(runs) is runs[1]


def colour_benchmark(data):
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
    return data


def test_a_toolkit_run_is_trained_scored_and_reported(tmp_path):
    data = colour_benchmark(tmp_path / "bench")
    md = tmp_path / "bench.md"
    bq.main([str(data), "model.image_size=16", "model.image_encoder_args={layers: 1}", "model.text_encoder_args={layers: 1}",
             "train.batch_size=4", "data.num_workers=0", "data.persistent_workers=false", "--epochs", "4",
             "--curve-every", "2", "--no-peer", "--val-fraction", "0.2", "--work", str(tmp_path / "work"),
             "--output", str(md), "--plot", str(tmp_path / "curve.png")])
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    (run,) = results["runs"]["shapes_tiny"]
    fit = (tmp_path / "work" / "train_fit.csv").read_text().splitlines()[1:]
    assert 8 <= len(fit) < 16 and len(run["curve"]) == 2 and run["epochs"] == 4  # some rows held out for validation
    assert set(run["test"]) == {f"{d}_R@{k}" for d in ("t2i", "i2t") for k in (1, 5, 10)} and "val" in run
    assert run["test"]["t2i_R@10"] == 100.0  # 4 test rows: every one is within the top 10
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert "| shapes_tiny | 0.001 / 100 | 0 | 4 |" in md.read_text()


def test_the_tuned_peer_path_trains_openclip_and_compares(tmp_path):
    """A few real steps of OpenCLIP's own entry point beside the toolkit, scored by the same code, with the
    time-to-accuracy lines."""
    data = colour_benchmark(tmp_path / "bench")
    md = tmp_path / "bench.md"
    bq.main([str(data), "model.image_size=16", "model.image_encoder_args={layers: 1}", "model.text_encoder_args={layers: 1}",
             "train.batch_size=4", "data.num_workers=0", "data.persistent_workers=false", "--epochs", "2",
             "--curve-every", "1", "--val-fraction", "0.2", "--peer-warmup", "2", "--work", str(tmp_path / "work"),
             "--output", str(md), "--plot", str(tmp_path / "curve.png")])
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    (peer,) = results["runs"]["OpenCLIP"]
    assert peer["setting"] == {"lr": 5e-4, "warmup": 2} and [p["epoch"] for p in peer["curve"]] == [1, 2]
    assert 0 <= peer["test"]["t2i_R@1"] <= 100 and peer["test"]["t2i_R@10"] == 100.0
    text = md.read_text()
    assert "| OpenCLIP | 0.0005 / 2 | 0 | 2 |" in text and "Ratios to the tuned peer's mean" in text
    assert "(b) the toolkit" in text


def test_recipe_variants_are_scored_on_validation_only(tmp_path):
    """scripts/bench_recipes.py: two variants trained for real on one benchmark, the test split never scored."""
    from scripts import bench_recipes

    data = colour_benchmark(tmp_path / "bench")
    lines = (data / "train.csv").read_text().splitlines()  # a second caption per row, as icon_keywords adds
    (data / "train.csv").write_text("\n".join([lines[0] + ",keywords"] + [f'{r},"{r.split(",")[1].split()[0]}, colour"'
                                                                        for r in lines[1:]]) + "\n")
    md, out = tmp_path / "recipes.md", tmp_path / "recipes.json"
    bench_recipes.main([str(data), "--set", "model.image_size=16", "model.image_encoder_args={layers: 1}",
                        "model.text_encoder_args={layers: 1}", "train.batch_size=4", "data.num_workers=0",
                        "data.persistent_workers=false", "train.epochs=2",
                        "--variant", "base:", "--variant",
                        "longer:train.epochs=4 'model.patch_dropout=0.5' data.caption_key=caption,keywords",
                        "--val-fraction", "0.2", "--work", str(tmp_path / "work"), "--json", str(out), "--output", str(md)])
    rows = json.loads(out.read_text())
    assert list(rows) == ["base", "longer"]
    (base,), (longer,) = rows["base"]["bench"], rows["longer"]["bench"]
    assert (base["epochs"], longer["epochs"]) == (2, 4) and "test" not in base and "val" in longer
    assert "model.patch_dropout=0.5" in longer["command"] and 0 <= longer["val"]["t2i_R@1"] <= 100
    fit = (tmp_path / "work" / "bench" / "longer" / "train_fit.csv").read_text().splitlines()
    assert fit[0] == "image,caption,keywords" and fit[1].endswith(', colour"')  # the extra caption travels along
    (ckpt,) = (tmp_path / "work" / "bench" / "longer" / "toolkit-seed0" / "checkpoints").glob("step_*")
    vocab = (ckpt / "tokenizer.json").read_text()
    assert '"Ġcolour"' in vocab  # and was trained on: the learned vocabulary holds its word
    text = md.read_text()
    assert "| base: `(the config)` |" in text
    assert "| longer: `train.epochs=4 model.patch_dropout=0.5 data.caption_key=caption,keywords` |" in text
    first = text.split("| base:")[1].splitlines()[0]
    assert ("(1.00×)" if base["val"]["t2i_R@1"] else "(–)") in first  # the first row is the denominator


def test_quality_summary_divides_every_row_by_the_peer_mean(tmp_path):
    """scripts/quality_summary.py against hand-made results: ratios, R@1 at the peer's time, time to its R@1."""
    from scripts import quality_summary

    def run(label, seed, epochs, secs, finals):  # finals: test t2i R@1 at each curve point
        metrics = lambda r1: {m: r1 for m in bq.METRICS}
        curve = [{"epoch": i + 1, "seconds": s, "test": metrics(v)} for i, (s, v) in enumerate(zip(secs, finals))]
        return {"contender": label, "seed": seed, "epochs": epochs, "train_s": secs[-1],
                "setting": {"lr": 1e-3, "warmup": 100}, "train": metrics(50.0), "test": metrics(finals[-1]),
                "curve": curve}

    peer = [run("OpenCLIP", 0, 20, [200, 400], [6.0, 10.0]), run("OpenCLIP", 1, 20, [200, 400], [8.0, 12.0])]
    first = {"runs": {"default": [run("default", 0, 20, [100, 200], [11.0, 13.2])], "OpenCLIP": peer}, "search": {}}
    best = {"runs": {"best": [run("best", 0, 40, [200, 400], [11.0, 22.0])], "OpenCLIP": peer}, "search": {}}
    (tmp_path / "a.json").write_text(json.dumps(first))
    best_seed1 = {"runs": {"best": [run("best", 1, 40, [200, 400], [9.0, 18.0])], "OpenCLIP": peer}, "search": {}}
    (tmp_path / "b.json").write_text(json.dumps(best))
    (tmp_path / "c.json").write_text(json.dumps(best_seed1))  # another seed of the same recipe, run on its own
    text = quality_summary.summary([("icons", tmp_path / f"{n}.json") for n in "abc"])
    peer_row, default_row, best_row = text.splitlines()[2:5]
    assert "| icons | OpenCLIP, tuned (0.001 / 100) | 20 | 0, 1 | 400 | 11.00 |" in peer_row
    assert "**13.20** (1.20×)" in default_row and "| 13.20 (1.20×) | 0.25 |" in default_row  # the peer's 11% at 100 s of 400
    assert "| 40 | 0, 1 |" in best_row and "**20.00** (1.82×)" in best_row  # one row: the two seeds' mean
    assert "| 20.00 (1.82×) |" in best_row and "| 0.56 |" in best_row  # 11%: at 200 s and 244 s, median 222 of 400
    assert len(text.splitlines()) == 5
    other_peer = {"runs": {"best": best["runs"]["best"], "OpenCLIP": peer[:1]}, "search": {}}
    (tmp_path / "d.json").write_text(json.dumps(other_peer))  # a recipe measured against another peer run
    with pytest.raises(SystemExit, match="different OpenCLIP runs"):
        quality_summary.summary([("icons", tmp_path / "a.json"), ("icons", tmp_path / "d.json")])


def test_icon_keywords_adds_the_packs_tags_as_a_second_caption(tmp_path):
    """scripts/icon_keywords.py against a real tar.gz laid out like the tabler-icons npm pack."""
    import io
    import tarfile

    from scripts import icon_keywords

    data = tmp_path / "icons"
    (data / "npm").mkdir(parents=True)
    icons = {"alarm-plus": {"tags": ["clock", "wake-up", "clock"]}, "abc": {"tags": []}}
    blob = json.dumps(icons).encode()
    with tarfile.open(data / "npm" / "tabler-icons-9.9.9.tgz", "w:gz") as tar:
        info = tarfile.TarInfo(icon_keywords.MEMBER)
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    (data / "train.csv").write_text("image,caption,in_test\ntabler/alarm-plus.png,alarm plus,1\n"
                                    "tabler/abc.png,abc,0\ntabler/zzz-top.png,zzz top,0\n")
    icon_keywords.main([str(data)])
    icon_keywords.main([str(data)])  # again: the same column, not a second one
    lines = (data / "train.csv").read_text().splitlines()
    assert lines == ["image,caption,in_test,keywords", 'tabler/alarm-plus.png,alarm plus,1,"clock, wake up"',
                     "tabler/abc.png,abc,0,abc", "tabler/zzz-top.png,zzz top,0,zzz top"]
    fit = bq.write_table(tmp_path / "fit.csv", ([str(data / "tabler/abc.png")], ["abc"]), bq.read_columns(data, "train"))
    assert fit.read_text().splitlines()[1] == f"{data / 'tabler/abc.png'},abc,0,abc"
