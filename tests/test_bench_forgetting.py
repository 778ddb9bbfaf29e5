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


def test_markdown_section_is_created_then_extended(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Other\n\ntext\n")
    bf.write_markdown(doc, "### run 1\n")
    bf.write_markdown(doc, "### run 2\n")
    body = doc.read_text()
    assert body.index("## Other") < body.index(bf.SECTION) < body.index("### run 1") < body.index("### run 2")
    assert body.count(bf.SECTION) == 1 and "text" in body
