"""End-to-end: real training steps on the bundled data, checkpoints, exact resume, `contrastive.load`."""

import json
import math

import pytest
import torch
from PIL import Image

import contrastive
from contrastive.config import load_config
from contrastive.train import train
from tests.conftest import ROOT

FAST = [
    "model.image_encoder_args={layers: 2}",
    "model.text_encoder_args={layers: 2}",
    "data.num_workers=0",
    "train.progress_bar=false",
    "train.log_every_n_steps=1",
]


def tiny_cfg(tmp_path, *overrides):
    return load_config(ROOT / "configs/shapes_tiny.yaml",
                       [*FAST, f"train.output_dir={tmp_path}", "train.run_name=run", *overrides])


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_reproduces_next_loss_exactly(tmp_path):
    import shutil

    common = ["train.batch_size=32", "train.max_steps=6", "data.val=", "optim.warmup_steps=2",
              "train.save_every_n_steps=3", "train.keep_checkpoints=5"]
    full = train(tiny_cfg(tmp_path / "a", *common))
    # simulate a crash right after the step-3 checkpoint: drop what came later, then resume the same command
    crashed = tmp_path / "b" / "run"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_00000006")
    (crashed / "checkpoints" / "latest").write_text("step_00000003\n")
    (crashed / "metrics.jsonl").write_text("")
    resumed = train(tiny_cfg(tmp_path / "b", *common, "train.resume=true"))
    assert resumed == crashed
    a = {m["step"]: m["loss"] for m in read_metrics(full) if "loss" in m}
    b = {m["step"]: m["loss"] for m in read_metrics(resumed) if "loss" in m}
    assert sorted(b) == [4, 5, 6]
    assert [b[s] for s in (4, 5, 6)] == [a[s] for s in (4, 5, 6)]
    wa = contrastive.load(full)[0].state_dict()
    wb = contrastive.load(resumed)[0].state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    run = train(tiny_cfg(tmp_path, "train.batch_size=32", "train.max_steps=2", "data.val=", "train.resume=true"))
    assert [m["step"] for m in read_metrics(run) if "loss" in m] == [1, 2]


def test_existing_run_dir_is_refused(tmp_path):
    train(tiny_cfg(tmp_path, "train.batch_size=32", "train.max_steps=1", "data.val="))
    with pytest.raises(contrastive.ConfigError, match="already exists"):
        train(tiny_cfg(tmp_path, "train.batch_size=32", "train.max_steps=1", "data.val="))


def test_load_returns_model_preprocess_tokenizer(tmp_path):
    run = train(tiny_cfg(tmp_path, "train.batch_size=32", "train.max_steps=2", "data.val="))
    assert (run / "config.yaml").is_file()
    ckpt = run / "checkpoints" / "step_00000002"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "state.pt").is_file()
    for path in (run, ckpt, ckpt / "model.safetensors"):
        model, preprocess, tokenizer = contrastive.load(path)
        with Image.open(ROOT / "data/shapes/images/val/00000.jpg") as img:
            pixels = preprocess(img)
        assert pixels.shape == (3, 64, 64)
        with torch.no_grad():
            out = model(pixels[None], tokenizer(["a red circle", "a blue square"]))
        assert out.logits_per_image.shape == (1, 2) and torch.isfinite(out.logits_per_image).all()


@pytest.mark.slow
def test_default_recipe_learns_far_above_chance(tmp_path):
    """The default config, shortened: the loss falls and held-out caption ranking beats chance by a wide margin."""
    run = train(load_config(ROOT / "configs/shapes_tiny.yaml",
                            [f"train.output_dir={tmp_path}", "train.run_name=run", "train.max_steps=150",
                             "train.progress_bar=false", "eval.every_n_steps=0"]))
    metrics = read_metrics(run)
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < 0.6 * losses[0]
    final = json.loads((run / "summary.json").read_text())
    chance = final["val/caption_ranking_chance"]
    assert final["val/text_retrieval_recall@1"] > 10 * chance
    assert final["val/text_retrieval_recall@5"] > 0.1
