"""scripts/bench_forgetting.py: what "kept" and "gain" mean, and that a new table replaces the section's text only."""


import pytest


from scripts import bench_forgetting as bf


def scores(reference: float, target: float) -> dict:
    """Reference kept at R@1, target gained at R@10 (the other metrics set apart, so a mix-up shows)."""
    return {"reference": {bf.METRIC: reference, bf.OTHER: 0.0, bf.GAIN: 0.9},
            "target": {bf.METRIC: 0.5, bf.OTHER: 0.0, bf.GAIN: target}}


def test_kept_and_gain_against_the_start_and_full_fine_tuning():
    start = scores(0.20, 0.01)
    judged = bf.judge({"full": scores(0.05, 0.11), "mild": scores(0.19, 0.10), "timid": scores(0.20, 0.05)}, start)
    assert judged["full"]["kept"] == pytest.approx(0.25) and judged["full"]["gain"] == pytest.approx(1.0)
    assert judged["mild"]["kept"] == pytest.approx(0.95) and judged["mild"]["gain"] == pytest.approx(0.9)
    assert judged["mild"]["goal"] and not judged["full"]["goal"] and not judged["timid"]["goal"]
    assert judged["timid"]["gain"] == pytest.approx(0.4)


def test_best_other_method_is_the_one_with_the_largest_smaller_figure():
    start = scores(0.20, 0.01)
    judged = bf.judge({"full": scores(0.05, 0.11), "keeps": scores(0.20, 0.03), "even": scores(0.16, 0.09)}, start)
    assert bf.best_other(judged, ["keeps", "even"]) == "even"  # min(0.8, 0.8) beats min(1.0, 0.2)


def test_an_ema_row_of_another_method_is_a_wise_ft_candidate_with_its_ema_weights():
    start = scores(0.20, 0.01)
    full = {"model": scores(0.05, 0.11), "ema": scores(0.06, 0.11)}
    runs = {"locked image": {"model": scores(0.10, 0.09), "run": "locked"},
            "rehearsal 30%": {"model": scores(0.16, 0.08), "ema": scores(0.19, 0.10), "run": "rehearsal_0.3"}}
    rows, owner = bf.method_rows(full, runs)
    assert list(rows) == ["full", "EMA", "locked image", "rehearsal 30%", "rehearsal 30% EMA"]
    best = bf.best_other(bf.judge(rows, start), list(owner))
    assert best == "rehearsal 30% EMA" and owner[best] == ("rehearsal_0.3", "ema")
    assert owner["rehearsal 30%"] == ("rehearsal_0.3", "model") and "EMA" not in owner


def test_json_holds_kept_and_gain_of_every_method(tmp_path):
    import json
    from argparse import Namespace

    start = scores(0.20, 0.01)
    judged = bf.judge({"full": scores(0.05, 0.11), "mild": scores(0.19, 0.10)}, start)
    bf.write_json(tmp_path / "f.json", Namespace(), judged, start)
    methods = json.loads((tmp_path / "f.json").read_text())["methods"]
    assert {n: (m["kept"], m["gain"]) for n, m in methods.items()} == {"full": (0.25, 1.0), "mild": (0.95, 0.9)}


def test_markdown_section_is_created_then_extended(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\ntext\n")
    bf.write_markdown(doc, "### run 1\n")
    bf.write_markdown(doc, "### run 2\n")
    body = doc.read_text()
    assert body.index("## Other") < body.index(bf.SECTION) < body.index("### run 1") < body.index("### run 2")
    assert body.count(bf.SECTION) == 1 and "text" in body


def test_rehearsal_mixes_the_start_sources_into_the_target_by_weight(tmp_path):
    from argparse import Namespace

    from contrastive.config import load_config

    a = Namespace(data=str(tmp_path), rehearsal_weights="0.1,0.3", probe_steps=150, reset_scale=2.0, lora_rank=8,
                  lora_lr=2e-3, rehearsal=[("a.csv", 2.0, "rehearsal_a"), ("b.csv", 1.0, "rehearsal_b")],
                  rehearsal_equal_target=False, steps=600, ema_decay=0.995)
    overrides = bf.method_overrides(a)
    sources = load_config(None, overrides["rehearsal_lpft"]).data.train_sources()
    assert [(s.name, round(s.weight, 6)) for s in sources] == [("target", 0.9), ("rehearsal_a", 0.066667),
                                                               ("rehearsal_b", 0.033333)]
    heavier = load_config(None, overrides["rehearsal_0.3"]).data.train_sources()
    assert [round(s.weight, 6) for s in heavier] == [0.7, 0.2, 0.1]
    assert bf.run_names(a, ["lpft", "rehearsal", "rehearsal_lpft"]) == ["lpft", "rehearsal_0.1", "rehearsal_0.3",
                                                                        "rehearsal_lpft"]
    assert [bf.label(a, n) for n in ("rehearsal_0.3", "rehearsal_lpft", "lpft")] == [
        "rehearsal 30%", "rehearsal 10% + LP-FT", "LP-FT"]
    assert load_config(None, overrides["rehearsal_0.3"]).train.max_steps == 0  # the shared --steps
    ema = load_config(None, overrides["rehearsal_0.3"]).train  # rehearsal keeps an EMA from the start's weights
    assert ema.ema_decay == 0.995 and not ema.ema_warmup
    assert load_config(None, overrides["locked"]).train.ema_decay == 0.0
    a.rehearsal_equal_target = True
    equal = bf.method_overrides(a)  # as many target samples as full fine-tuning's 600 steps: 600 / 0.7
    assert load_config(None, equal["rehearsal_0.3"]).train.max_steps == 857
    assert load_config(None, overrides["rehearsal_lpft"]).finetune.probe_steps == 150
    assert load_config(None, overrides["restart"]).finetune.reset_logit_scale == 2.0


def test_broad_reference_is_one_table_of_every_held_out_split(tmp_path):
    import csv

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.csv").write_text(f"image,caption,in_test\nx.png,{name} one,1\ny.png,{name} two,0\n")
    out = bf.reference_table([str(tmp_path / "a/test.csv"), str(tmp_path / "b/test.csv")], tmp_path / "ref.csv")
    rows = list(csv.DictReader(out.open()))
    assert [r["caption"] for r in rows] == ["a one", "a two", "b one", "b two"]
    assert rows[2]["image"] == str(tmp_path / "b" / "x.png")  # absolute: the table lives elsewhere
