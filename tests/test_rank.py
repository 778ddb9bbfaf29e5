"""Zero-shot caption ranking: probabilities are the model's own softmax, the CLI's outputs, and a trained model."""

import json
import math
import subprocess

import pytest
import torch
from PIL import Image

from contrastive.cli import main
from contrastive.config import ModelConfig
from contrastive.data import build_transform, read_records
from contrastive.model import create_model
from contrastive.interop.loading import load
from contrastive.evaluation.rank import format_rankings, rank_captions, rankings_to_json, score_captions
from tests.conftest import PYTHON, ROOT, subprocess_env

VAL = ROOT / "data/shapes/images/val"
IMAGES = [str(VAL / f"{i:05d}.jpg") for i in (0, 1, 2)]
CAPTIONS = ["a large red diamond at the bottom", "a small purple heart at the top", "a white star in the bottom left",
            "a green triangle", "a black cross in the center"]


def tiny_model(bias: float | None):
    cfg = ModelConfig(image_encoder_args={"layers": 1}, text_encoder_args={"layers": 1}, init_logit_bias=bias,
                      tokenizer="byte", context_length=64)
    model, tokenizer = create_model(cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(37.0))  # not the init value, so a forgotten exp() or scale would show
    return model.eval(), build_transform(cfg, None, train=False), tokenizer


@pytest.mark.parametrize("bias", [None, -3.5])
def test_probabilities_are_softmax_of_the_models_own_logits(bias):
    model, preprocess, tokenizer = tiny_model(bias)
    scores = score_captions(model, preprocess, tokenizer, IMAGES, CAPTIONS, batch_size=2)
    pixels = []
    for p in IMAGES:
        with Image.open(p) as img:
            pixels.append(preprocess(img))
    with torch.no_grad():
        out = model(torch.stack(pixels), tokenizer(CAPTIONS))
    logits = out.logits_per_image  # (3, 5), includes the bias
    torch.testing.assert_close(scores["logit"], logits)
    torch.testing.assert_close(scores["probability"], logits.softmax(dim=-1))
    torch.testing.assert_close(scores["cosine"], out.image_embeds @ out.text_embeds.T)
    torch.testing.assert_close(scores["probability"].sum(dim=1), torch.ones(3))
    if bias is not None:
        torch.testing.assert_close(scores["logit"], 37.0 * scores["cosine"] + bias)


def test_rankings_are_sorted_and_cut_at_top_k():
    model, preprocess, tokenizer = tiny_model(None)
    full = rank_captions(model, preprocess, tokenizer, IMAGES, CAPTIONS)
    top2 = rank_captions(model, preprocess, tokenizer, IMAGES, CAPTIONS, top_k=2)
    for r, r2 in zip(full, top2):
        probs = [c.probability for c in r.captions]
        assert probs == sorted(probs, reverse=True)
        assert sorted(c.caption for c in r.captions) == sorted(CAPTIONS)
        assert math.isclose(sum(probs), 1.0, rel_tol=1e-5)
        assert r2.captions == r.captions[:2]
    text = format_rankings(top2)
    assert text.splitlines()[0] == IMAGES[0] and top2[0].captions[0].caption in text.splitlines()[2]


def test_rank_cli_json_schema_and_heatmap(tiny_run, tmp_path, capsys):
    plot = tmp_path / "heat.png"
    code = main(["rank", "--checkpoint", str(tiny_run), "--image", *IMAGES[:2], "--captions", *CAPTIONS,
                 "--json", "--plot", str(plot)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in result] == IMAGES[:2]
    model, preprocess, tokenizer = load(tiny_run)
    expected = score_captions(model, preprocess, tokenizer, IMAGES[:2], CAPTIONS)
    for i, r in enumerate(result):
        assert len(r["captions"]) == len(CAPTIONS)
        for c in r["captions"]:
            assert set(c) == {"caption", "probability", "cosine", "logit"}
            j = CAPTIONS.index(c["caption"])
            assert c["probability"] == pytest.approx(expected["probability"][i, j].item(), rel=1e-5, abs=1e-7)
            assert c["logit"] == pytest.approx(expected["logit"][i, j].item(), rel=1e-5, abs=1e-6)
        assert sum(c["probability"] for c in r["captions"]) == pytest.approx(1.0, rel=1e-5)
    with Image.open(plot) as img:
        img.load()
        assert img.format == "PNG" and img.width > 400 and img.height > 200


def test_rank_cli_captions_file_top_k_and_errors(tiny_run, tmp_path, capsys):
    captions_file = tmp_path / "captions.txt"
    captions_file.write_text("\n".join(CAPTIONS) + "\n\n")
    assert main(["rank", "--checkpoint", str(tiny_run), "--image", IMAGES[0], "--captions-file", str(captions_file),
                 "--top-k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 1 and len(result[0]["captions"]) == 3
    assert main(["rank", "--checkpoint", str(tiny_run), "--image", str(tmp_path / "missing.jpg"),
                 "--captions", "a"]) == 2
    assert "image not found" in capsys.readouterr().err
    assert main(["rank", "--checkpoint", str(tmp_path / "nowhere"), "--image", IMAGES[0], "--captions", "a"]) == 2


def test_script_matches_the_cli(tiny_run, capsys):
    args = ["--checkpoint", str(tiny_run), "--image", IMAGES[1], "--captions", *CAPTIONS[:3]]
    assert main(["rank", *args]) == 0
    in_process = capsys.readouterr().out
    proc = subprocess.run([PYTHON, str(ROOT / "scripts/rank_captions.py"), *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == in_process


@pytest.mark.slow
def test_trained_model_ranks_held_out_true_captions_first_far_above_chance(trained_run):
    """Each held-out image ranks every distinct held-out caption; its own caption should come first far more
    often than the 1-in-~400 of chance."""
    records = read_records(str(ROOT / "data/shapes/val.csv"), "image", "caption")
    captions = sorted({r.captions[0] for r in records})
    model, preprocess, tokenizer = load(trained_run)
    rankings = rank_captions(model, preprocess, tokenizer, [r.image for r in records], captions, top_k=5)
    top1 = sum(r.captions[0].caption == rec.captions[0] for r, rec in zip(rankings, records)) / len(records)
    top5 = sum(rec.captions[0] in {c.caption for c in r.captions} for r, rec in zip(rankings, records)) / len(records)
    chance = 1 / len(captions)
    assert top1 > 10 * chance, (top1, chance)
    assert top5 > 20 * chance, (top5, chance)
    assert rankings_to_json(rankings)[0]["captions"][0]["probability"] > 1 / len(captions)
