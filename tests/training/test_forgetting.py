"""Fine-tuning without forgetting through real runs: the reference scores at step 0 equal `eval` of the starting
checkpoint; the EMA is evaluated, checkpointed, resumed bit for bit and used by `load` / `export` when asked; LoRA
runs resume and report their trainable parameters; the best checkpoint weighs target and reference."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from contrastive.interop.checkpoint import latest_checkpoint, load_state, save_checkpoint
from contrastive.cli import main
from contrastive.evaluation.evaluate import evaluate_dataset
from contrastive.config import config_to_dict, load_config
from contrastive.model import create_model
from contrastive.interop.loading import load
from contrastive.training import train
from tests.conftest import ROOT
from tests.helpers.crash import assert_resumed, logged_steps
from tests.helpers.towers import BYTE_TEXT, QUIET, TINY
from contrastive.evaluation.plots import read_metrics

SMALL = [*BYTE_TEXT, *TINY, *QUIET, "train.batch_size=16", "train.log_every_n_steps=1", "optim.warmup_steps=2",
         "train.precision=fp32"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each (conftest)


def table(tmp_path, name, first, rows):
    """Rows first..first+rows of the held-out shapes, image paths absolute."""
    lines = (ROOT / "data/shapes/val.csv").read_text().splitlines(keepends=True)
    path = tmp_path / name
    path.write_text(lines[0] + "".join(str(ROOT / "data/shapes") + "/" + line for line in lines[1 + first : 1 + first + rows]))
    return path


def run(tmp_path, name, *overrides):
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [*SMALL, f"train.output_dir={tmp_path}",
                                                           f"train.run_name={name}", *overrides])
    return train(cfg)


def rows(run_dir):
    return read_metrics(run_dir)


@pytest.fixture
def start(tmp_path):
    """A starting checkpoint (untrained weights are enough: the test compares two ways of scoring them)."""
    cfg = load_config(None, [*SMALL])
    model, _ = create_model(cfg.model)
    return save_checkpoint(tmp_path / "start" / "checkpoints" / "step_00000005", model.state_dict(), {},
                           {"step": 5, "config": config_to_dict(cfg)})


def test_reference_at_step_zero_equals_eval_of_the_start(tmp_path, start, capsys):
    ref, val = table(tmp_path, "ref.csv", 0, 24), table(tmp_path, "val.csv", 100, 16)
    run_dir = run(tmp_path, "ft", f"model.init_from={start}", f"eval.reference={ref}", f"data.val={val}",
                  "train.max_steps=4", "eval.every_n_steps=2")
    logged = rows(run_dir)
    first = next(r for r in logged if r["step"] == 0)
    expected = evaluate_dataset(start, ref, "retrieval")["metrics"]
    assert {k.removeprefix("ref/"): v for k, v in first.items() if k.startswith("ref/") and "retained" not in k} == expected
    assert first["ref/retained_text_retrieval_recall@1"] == 1.0
    # every evaluation scores the reference again, relative to step 0
    later = [r for r in logged if r["step"] in (2, 4) and "ref/text_retrieval_recall@1" in r]
    assert [r["step"] for r in later] == [2, 4]
    for r in later:
        now, then = r["ref/image_retrieval_recall@5"], first["ref/image_retrieval_recall@5"]
        assert r["ref/retained_image_retrieval_recall@5"] == pytest.approx(now / then)
        assert "val/text_retrieval_recall@1" in r
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ref/text_retrieval_recall@1"] == round(later[-1]["ref/text_retrieval_recall@1"], 4)
    tags = tensorboard_tags(run_dir)
    assert "ref/retained_text_retrieval_recall@1" in tags and "ref/text_retrieval_recall@1" in tags
    assert "trainable parameters: image tower" in capsys.readouterr().out


def tensorboard_tags(run_dir) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return set(acc.Tags()["scalars"])


EMA = ["train.ema_decay=0.8", "train.ema_every_n_steps=2", "train.max_steps=6", "train.save_every_n_steps=3",
       "data.val=", "train.keep_checkpoints=5"]


def test_ema_resumes_exactly_and_load_export_use_it(tmp_path, capsys):
    whole = run(tmp_path, "whole", *EMA)
    cut = run(tmp_path, "cut", *EMA)
    # as if killed after the checkpoint of step 3: drop what came later, resume
    shutil.rmtree(cut / "checkpoints" / "step_00000006")
    (cut / "checkpoints" / "latest").write_text("step_00000003\n")
    seen = len(logged_steps(cut))
    capsys.readouterr()
    run(tmp_path, "cut", *EMA, "train.resume=true")
    # a resume, not a restart (on the CPU in fp32 both would end with the same weights): it said so and logged
    # steps 4 to 6 only
    assert_resumed(capsys.readouterr().out, cut / "checkpoints" / "step_00000003", logged_steps(cut)[seen:])
    a, b = latest_checkpoint(whole / "checkpoints"), latest_checkpoint(cut / "checkpoints")
    ema_a, ema_b = load_file(str(a / "ema.safetensors")), load_file(str(b / "ema.safetensors"))
    weights = load_file(str(a / "model.safetensors"))
    assert ema_a.keys() == weights.keys()
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    assert any(not torch.equal(ema_a[k], weights[k]) for k in weights if weights[k].is_floating_point())
    assert load_state(b)["hooks"]["ema"]["updates"] == 3  # steps 2, 4, 6
    model, _, _ = load(whole, weights="ema")
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema_a[k]), k
    # export of the EMA: transformers holds the averaged projection
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(whole), "--output", str(tmp_path / "hf"), "--weights", "ema"]) == 0
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert torch.equal(exported["text_projection.weight"], ema_a["text_projection.weight"])
    assert main(["eval", "--task", "retrieval", "--checkpoint", str(whole), "--data", str(table(tmp_path, "v.csv", 0, 8)),
                 "--weights", "ema"]) == 0


def test_ema_is_evaluated_beside_the_weights(tmp_path, start):
    ref, val = table(tmp_path, "ref.csv", 0, 12), table(tmp_path, "val.csv", 100, 12)
    run_dir = run(tmp_path, "ema_eval", f"model.init_from={start}", f"eval.reference={ref}", f"data.val={val}",
                  "train.max_steps=2", "train.ema_decay=0.5")
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("val_ema/text_retrieval_recall@1", "ref_ema/text_retrieval_recall@1", "ref_ema/retained_text_retrieval_recall@1"):
        assert key in summary, sorted(summary)
    model, preprocess, tokenizer = load(run_dir, weights="ema")
    expected = evaluate_dataset(run_dir, val, "retrieval", weights="ema")["metrics"]
    assert summary["val_ema/image_retrieval_recall@5"] == round(expected["image_retrieval_recall@5"], 4)


def test_lora_run_resumes_and_trains_only_adapters(tmp_path, start, capsys):
    lora = [f"model.init_from={start}", "finetune.text.lora.rank=2", "finetune.image.lora.rank=2", "data.val=",
            "train.max_steps=4", "train.save_every_n_steps=2", "optim.lr=1e-2"]
    run_dir = run(tmp_path, "lora", *lora)
    out = capsys.readouterr().out
    assert "image tower 512 of" in out and "(LoRA)" in out, out  # 4 projections * rank 2 * (32 + 32)
    first = load_file(str(start / "model.safetensors"))
    final = load_file(str(latest_checkpoint(run_dir / "checkpoints") / "model.safetensors"))
    for k, v in final.items():
        base = k.replace(".base_layer", "")
        if "lora_" in k or base.endswith(("projection.weight", "logit_scale")):
            continue
        assert torch.equal(v, first[base]), k  # the towers' own weights never moved
    # resumed from step 2, it ends where the uninterrupted run ended
    again = run_dir.parent / "lora_cut"
    shutil.copytree(run_dir, again)
    shutil.rmtree(again / "checkpoints" / "step_00000004")
    (again / "checkpoints" / "latest").write_text("step_00000002\n")
    seen = len(logged_steps(again))
    capsys.readouterr()
    run(tmp_path, "lora_cut", *lora, "train.resume=true")
    # a resume, not a deterministic restart: it said so and logged steps 3 and 4 only
    assert_resumed(capsys.readouterr().out, again / "checkpoints" / "step_00000002", logged_steps(again)[seen:])
    resumed = load_file(str(latest_checkpoint(again / "checkpoints") / "model.safetensors"))
    for k in final:
        assert torch.equal(final[k], resumed[k]), k


def test_best_checkpoint_weighs_reference(tmp_path, start):
    ref, val = table(tmp_path, "ref.csv", 0, 12), table(tmp_path, "val.csv", 100, 12)
    run_dir = run(tmp_path, "best", f"model.init_from={start}", f"eval.reference={ref}", f"data.val={val}",
                  "train.max_steps=4", "eval.every_n_steps=1", "train.save_every_n_steps=1", "eval.reference_weight=1",
                  "train.keep_checkpoints=1", "optim.lr=5e-2")
    logged = [r for r in rows(run_dir) if "ref/text_retrieval_recall@1" in r and r["step"] > 0]
    best = max(logged, key=lambda r: r["ref/text_retrieval_recall@1"])  # the first of the best, as `>` keeps it
    meta = json.loads((latest_checkpoint(run_dir / "checkpoints") / "meta.json").read_text())
    assert meta["best_checkpoint"] == f"step_{best['step']:08d}"
    assert meta["best_metric"] == best["ref/text_retrieval_recall@1"]
