"""Forgetting: reference sets scored at step 0 and at every evaluation, the retained ratios, the weighted best
checkpoint, and a run's step-0 reference scores equal to `eval` of the starting checkpoint."""


import pytest

from contrastive.errors import ConfigError
from contrastive.config import EvalConfig, ReferenceConfig, load_config
from contrastive.model import create_model
from contrastive.training.reference import ReferenceTracker, read_reference_tables, selection_score
from tests.conftest import ROOT
from tests.helpers.towers import BYTE_TEXT, towers

MODEL = [*BYTE_TEXT, *towers(1), "data.num_workers=0"]


def table(tmp_path, name, first, rows):
    """Rows first..first+rows of the held-out shapes, image paths absolute."""
    lines = (ROOT / "data/shapes/val.csv").read_text().splitlines(keepends=True)
    path = tmp_path / name
    path.write_text(lines[0] + "".join(str(ROOT / "data/shapes") + "/" + line for line in lines[1 + first : 1 + first + rows]))
    return path


def tracker_for(tmp_path, n_sets=1):
    refs = [ReferenceConfig(data=str(table(tmp_path, f"r{i}.csv", 10 * i, 8)), name=f"set{i}") for i in range(n_sets)]
    if n_sets > 1:
        refs.append(ReferenceConfig(data=str(table(tmp_path, "zs.csv", 40, 8)), task="zeroshot", class_key="color",
                                    name="colours"))
    return ReferenceTracker(read_reference_tables(refs), EvalConfig(reference=refs))


def test_keys_retained_and_score(tmp_path):
    model, tokenizer = create_model(load_config(None, MODEL).model)
    from contrastive.data import build_transform

    preprocess = build_transform(load_config(None, MODEL).model, None, train=False)
    one = tracker_for(tmp_path)
    measured = one.measure(model, preprocess, tokenizer)
    assert "text_retrieval_recall@1" in measured and not any("/" in k for k in measured)  # one set: no set names
    assert one.retained(measured) == {}  # no baseline yet
    one.baseline = {k: v / 2 for k, v in measured.items()}
    retained = one.retained(measured)
    # higher-is-better metrics only (not ranks, not the chance level), and only those above 0 at the start
    expected = {f"retained_{k}": 2.0 for k, v in measured.items()
                if ("recall@" in k or k == "caption_ranking_acc1") and v > 0}
    assert retained == pytest.approx(expected) and expected
    several = tracker_for(tmp_path, 2)
    measured = several.measure(model, preprocess, tokenizer)
    assert {k.split("/")[0] for k in measured} == {"set0", "set1", "colours"}
    assert "colours/acc1" in measured
    assert several.score(measured) == pytest.approx(
        (measured["set0/text_retrieval_recall@1"] + measured["set1/text_retrieval_recall@1"] + measured["colours/acc1"]) / 3)
    assert several.score({}) is None


def test_selection_score_and_config_checks(tmp_path):
    assert selection_score(0.4, 0.8, 0.0) == 0.4
    assert selection_score(0.4, 0.8, 1.0) == 0.8
    assert selection_score(0.4, 0.8, 0.25) == pytest.approx(0.75 * 0.4 + 0.25 * 0.8)
    assert selection_score(None, 0.8, 0.5) is None
    refs = [ReferenceConfig(data=str(table(tmp_path, "a.csv", 0, 4)), name="x")] * 2
    with pytest.raises(ConfigError, match="two sets are named 'x'"):
        read_reference_tables(refs)
    with pytest.raises(ConfigError, match="reference_metric"):
        load_config(None, ["eval.reference=a.csv", "eval.reference_metric=median_rank"])
    cfg = load_config(None, ["eval.reference=[a.csv, {data: b.csv, task: zeroshot, class_key: color}]"])
    assert [(r.data, r.task) for r in cfg.eval.reference] == [("a.csv", "retrieval"), ("b.csv", "zeroshot")]
