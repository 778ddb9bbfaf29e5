"""WiSE-FT: the interpolation's ends are the inputs bit for bit, its middle is their mean, its checkpoint works with
load / eval / rank / export, a sweep scores each alpha as `eval` would, and two different models are one line."""

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from contrastive.interop.checkpoint import save_checkpoint
from contrastive.cli import main
from contrastive.evaluation.evaluate import evaluate_dataset
from contrastive.config import config_to_dict, load_config
from contrastive.model import create_model
from contrastive.interop.loading import load
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.helpers.towers import BYTE_TEXT, towers

MODEL = [*BYTE_TEXT, *towers(1)]


def save(tmp_path, name, *overrides, noise=0.0, seed=0):
    torch.manual_seed(seed)
    cfg = load_config(None, [*MODEL, *overrides])
    model, _ = create_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():  # a "fine-tuned" model: every tensor moved, the logit scale included
            p.add_(noise * torch.randn_like(p))
    return save_checkpoint(tmp_path / name / "checkpoints" / "step_00000010", model.state_dict(), {},
                           {"step": 10, "config": config_to_dict(cfg)})


@pytest.fixture
def pair(tmp_path):
    return save(tmp_path, "start"), save(tmp_path, "finetuned", noise=0.05, seed=1)


def table(tmp_path, rows=12, name="val.csv"):
    """The first `rows` held-out shapes, with absolute image paths."""
    lines = (ROOT / "data/shapes/val.csv").read_text().splitlines(keepends=True)
    path = tmp_path / name
    path.write_text(lines[0] + "".join(str(ROOT / "data/shapes") + "/" + line for line in lines[1 : rows + 1]))
    return path


def cli(*args):
    return subprocess.run([PYTHON, "-m", "contrastive", *args], capture_output=True, text=True, env=subprocess_env(),
                          cwd=ROOT, timeout=300)


def test_ends_are_the_inputs_and_the_middle_is_the_mean(tmp_path, pair):
    from contrastive.training.wise_ft import wise_ft

    start, finetuned = pair
    a, b = load_file(str(start / "model.safetensors")), load_file(str(finetuned / "model.safetensors"))
    assert "logit_scale" in a and not torch.equal(a["logit_scale"], b["logit_scale"])
    for alpha, expected in ((0.0, a), (1.0, b)):
        out = load_file(str(wise_ft(start, finetuned, alpha, tmp_path / f"alpha{alpha}") / "model.safetensors"))
        assert out.keys() == expected.keys()
        for k, v in out.items():
            assert torch.equal(v, expected[k]), (alpha, k)
    mid = load_file(str(wise_ft(start, finetuned, 0.5, tmp_path / "mid") / "model.safetensors"))
    for k, v in mid.items():
        # halving is exact in binary floating point, so 0.5 a + 0.5 b rounds exactly as (a + b) / 2
        assert torch.equal(v, (a[k] + b[k]) / 2), k
    meta = json.loads((tmp_path / "mid" / "meta.json").read_text())
    assert meta["wise_ft"]["alpha"] == 0.5


def test_cli_checkpoint_works_with_load_eval_rank_export(tmp_path, pair, capsys):
    start, finetuned = pair
    out = tmp_path / "wise"
    assert main(["wise-ft", "--start", str(start.parents[1]), "--finetuned", str(finetuned), "--alpha", "0.3",
                 "--output", str(out)]) == 0
    model, _, _ = load(out)
    a, b = load_file(str(start / "model.safetensors")), load_file(str(finetuned / "model.safetensors"))
    w = model.state_dict()["text_projection.weight"]
    torch.testing.assert_close(w, 0.7 * a["text_projection.weight"] + 0.3 * b["text_projection.weight"])
    val = table(tmp_path)
    assert main(["eval", "--task", "retrieval", "--checkpoint", str(out), "--data", str(val)]) == 0
    image = str(ROOT / "data/shapes/images/val/00000.jpg")
    assert main(["rank", "--checkpoint", str(out), "--image", image, "--captions", "a red circle", "a blue star"]) == 0
    assert main(["export", "--checkpoint", str(out), "--output", str(tmp_path / "hf")]) == 0
    assert "verified" in capsys.readouterr().out


def test_different_models_are_one_line(tmp_path, pair):
    start, _ = pair
    other = save(tmp_path, "wider", "model.embed_dim=64")
    proc = cli("wise-ft", "--start", str(start), "--finetuned", str(other), "--alpha", "0.5", "--output",
               str(tmp_path / "x"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "different models" in lines[0] and "projection" in lines[0], proc.stderr
    assert not (tmp_path / "x").exists()
    assert main(["wise-ft", "--start", str(start), "--finetuned", str(start), "--alpha", "1.5", "--output",
                 str(tmp_path / "y")]) == 2


def test_sweep_scores_each_alpha_as_eval_does(tmp_path, pair):
    start, finetuned = pair
    target, reference = table(tmp_path, 10, "target.csv"), table(tmp_path, 14, "reference.csv")
    out = tmp_path / "sweep"
    assert main(["wise-ft", "--start", str(start), "--finetuned", str(finetuned), "--alphas", "1,0,0.5",
                 "--eval-target", str(target), "--eval-reference", str(reference), "--output", str(out)]) == 0
    result = json.loads((out / "wise_ft.json").read_text())
    assert [p["alpha"] for p in result["points"]] == [0.0, 0.5, 1.0]
    assert (out / "wise_ft.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for point, ckpt in ((result["points"][0], start), (result["points"][2], finetuned)):
        assert point["target"] == evaluate_dataset(ckpt, target, "retrieval")["metrics"]
        assert point["reference"] == evaluate_dataset(ckpt, reference, "retrieval")["metrics"]
    assert result["points"][1]["reference"] != result["points"][0]["reference"]
