"""LP-FT (`finetune.probe_steps`) and the temperature restart (`finetune.reset_logit_scale`), end to end from a
trained start: the probe phase moves only the head, the switch restarts the warm-up, a resume on either side of the
switch continues bit-exactly, and the restarted scale is the one the first step uses."""

import math
import shutil

import pytest
import torch

import contrastive
from contrastive.config import load_config
from contrastive.errors import ConfigError
from contrastive.evaluation.plots import read_metrics
from contrastive.interop.checkpoint import load_weights, read_meta, resolve_checkpoint
from contrastive.training.finetune import is_head
from contrastive.training.recipe import train
from tests.conftest import ROOT
from tests.helpers.overrides import small_run
from tests.helpers.towers import QUIET, towers

# the model of `small_run`, the start
SMALL = [*towers(1), "model.image_size=32", "model.embed_dim=16", "data.val=", *QUIET, "train.log_every_n_steps=1",
         "train.batch_size=8"]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A one-step checkpoint: the start every fine-tune here begins from."""
    return resolve_checkpoint(small_run(tmp_path_factory.mktemp("start"), name="start"))


def finetune(tmp_path, start, *overrides):
    context = read_meta(start)["config"]["model"]["context_length"]
    return train(load_config(ROOT / "configs/shapes_tiny.yaml", [
        *SMALL, f"model.init_from={start}", f"model.tokenizer=bpe:{start / 'tokenizer.json'}",
        f"model.context_length={context}", f"train.output_dir={tmp_path}", "train.run_name=ft", "optim.lr=1e-3",
        "optim.warmup_steps=2", *overrides]))


def metrics(run):
    return {m["step"]: m for m in read_metrics(run) if "loss" in m}


def test_probe_phase_trains_only_the_head_then_everything_with_a_new_warmup(tmp_path, start):
    run = finetune(tmp_path, start, "finetune.probe_steps=3", "train.max_steps=5", "train.save_every_n_steps=1",
                   "train.keep_checkpoints=10")
    before = load_weights(start)
    probed = load_weights(run / "checkpoints/step_00000003")
    after = load_weights(run / "checkpoints/step_00000005")
    head = [k for k in before if is_head(k)]
    assert sorted(head) == ["image_projection.weight", "logit_scale", "text_projection.weight"]
    for k in before:
        if is_head(k):
            assert not torch.equal(probed[k], before[k]), k  # the head trained in the probe phase
        else:
            assert torch.equal(probed[k], before[k]), k  # everything else bitwise as the start had it
    towers = [k for k in before if not is_head(k) and before[k].is_floating_point()]
    assert all(not torch.equal(after[k], probed[k]) for k in towers if k.endswith("weight") and after[k].ndim == 2)
    lr = {s: m["lr"] for s, m in metrics(run).items()}
    # warm-up of 2 steps, then cosine to 0 over each phase: steps 1-3 probe, 4-5 fine-tune
    assert lr[1] == lr[4] == pytest.approx(5e-4) and lr[2] == lr[5] == pytest.approx(1e-3)


@pytest.mark.parametrize("crash_after", [2, 3])  # mid-probe, and at the switch
def test_lpft_resumes_bit_exactly_across_the_switch(tmp_path, start, crash_after):
    common = ["finetune.probe_steps=3", "train.max_steps=5", "train.save_every_n_steps=1", "train.keep_checkpoints=10"]
    full = finetune(tmp_path / "a", start, *common)
    crashed = tmp_path / "b" / "ft"
    shutil.copytree(full, crashed)
    for step in range(crash_after + 1, 6):
        shutil.rmtree(crashed / f"checkpoints/step_{step:08d}")
    (crashed / "checkpoints/latest").write_text(f"step_{crash_after:08d}\n")
    (crashed / "metrics.jsonl").write_text("")
    resumed = finetune(tmp_path / "b", start, *common, "train.resume=true")
    a, b = metrics(full), metrics(resumed)
    assert sorted(b) == list(range(crash_after + 1, 6))
    assert [b[s]["loss"] for s in b] == [a[s]["loss"] for s in b]
    wa, wb = contrastive.load(full)[0].state_dict(), contrastive.load(resumed)[0].state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0)


def test_reset_logit_scale_is_the_scale_of_the_first_step(tmp_path, start):
    assert load_weights(start)["logit_scale"].exp().item() == pytest.approx(1 / 0.07, rel=0.01)
    run = finetune(tmp_path, start, "finetune.reset_logit_scale=2", "train.max_steps=1", "optim.warmup_steps=0",
                   "optim.lr=1e-4")
    # one AdamW step moves the log scale by about lr: the step started from ln 2, not from the start's ln 14.3
    assert abs(math.log(metrics(run)[1]["logit_scale"]) - math.log(2)) < 2e-4


def test_lpft_and_reset_settings_are_checked():
    for bad, message in (("finetune.probe_steps=-1", "probe_steps must be >= 0"),
                         ("finetune.reset_logit_scale=0.5", r"reset_logit_scale must be a scale in \[1, 100\]"),
                         ("finetune.reset_logit_scale=200", "reset_logit_scale"),
                         ("finetune.probe_steps=10", "leaves none of train.max_steps=10")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [bad, "train.max_steps=10"])
