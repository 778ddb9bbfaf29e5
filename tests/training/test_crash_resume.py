"""Crash-exact resume: a run SIGKILLed (at a random moment mid-training, mid-checkpoint-write) and stopped by SIGTERM,
relaunched each time with the same command and `train.resume=true`, resumes from its last checkpoint (and only
then steps on), and ends with the weights, optimizer and gradient-scaler state of an uninterrupted run, bit for bit."""

import random
import signal
import time

import pytest
import torch

from contrastive.interop.checkpoint import latest_checkpoint, load_state, load_weights
from tests.helpers.crash import assert_resumed, kill, launch, logged_losses, logged_steps, wait_for, write_in_progress

MAX_STEPS = 60  # tiny steps take ~50 ms: enough of them that the kills land mid-run on a fast machine too
# with a moving average of the weights updated every 3 steps: it is resumed from its checkpointed state too
STEPS = [f"train.max_steps={MAX_STEPS}", "train.save_every_n_steps=4", "train.keep_checkpoints=2", "train.resume=true",
         "train.ema_decay=0.9", "train.ema_every_n_steps=3"]


def relaunch(tmp_path, *overrides, delay_s: float = 0.0):
    """(process, checkpoint it must resume from, number of metric rows already logged)."""
    run = tmp_path / "run"
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None
    return launch(tmp_path, "run", *overrides, delay_s=delay_s), ckpt, len(logged_steps(run))


def assert_same_final_state(ref, run, max_steps: int) -> None:
    """Weights, EMA weights (when kept), optimizer moments and scaler state of both runs' last checkpoints are
    bitwise equal."""
    a, b = latest_checkpoint(ref / "checkpoints"), latest_checkpoint(run / "checkpoints")
    assert a.name == b.name == f"step_{max_steps:08d}"
    for weights in ("model", "ema") if (a / "ema.safetensors").exists() else ("model",):
        wa, wb = load_weights(a, weights), load_weights(b, weights)
        assert set(wa) == set(wb)
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (weights, k)
    sa, sb = load_state(a), load_state(b)
    assert sa["scaler"] == sb["scaler"]
    assert sa.get("hooks", {}).get("ema", {}).get("updates") == sb.get("hooks", {}).get("ema", {}).get("updates")
    for i, state in sa["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, sb["optimizer"]["state"][i][key]), (i, key)


def assert_losses_match(ref, rows: list[tuple[int, float]]) -> None:
    """Every (step, loss) row equals the reference run's loss at that step, bitwise."""
    reference = dict(logged_losses(ref))
    assert rows and all(loss == reference[step] for step, loss in rows), rows


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path):
    reference = launch(tmp_path, "ref", *STEPS)
    run = tmp_path / "run"

    # 1. SIGKILL at a random moment while stepping, once the run has a checkpoint to resume from
    proc = launch(tmp_path, "run", *STEPS)
    wait_for(lambda: latest_checkpoint(run / "checkpoints") is not None and len(logged_steps(run)) >= 5, proc,
             what="a checkpoint and 5 steps")
    time.sleep(random.Random(7).uniform(0.0, 1.0))
    assert kill(proc) == -signal.SIGKILL
    assert "resumed from" not in proc.stdout.read()  # the first launch starts fresh
    # the kill landed mid-run: checkpoints written, the last step neither logged nor saved, no summary
    assert max(logged_steps(run)) < MAX_STEPS
    assert int(latest_checkpoint(run / "checkpoints").name.removeprefix("step_")) < MAX_STEPS
    assert not (run / "summary.json").exists()

    # 2. SIGTERM: finishes the step, saves, exits with 128 + 15 (slowed checkpoint writes keep the run from
    # finishing before the signal lands on a fast machine)
    proc, ckpt, seen = relaunch(tmp_path, *STEPS, delay_s=0.5)
    wait_for(lambda: len(logged_steps(run)) >= seen + 2, proc, what="2 more steps")
    assert kill(proc, signal.SIGTERM) == 128 + signal.SIGTERM
    err = proc.stderr.read()
    assert "stopped by SIGTERM after step" in err and "Traceback" not in err
    stopped_at = int(err.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert_resumed(proc.stdout.read(), ckpt, logged_steps(run)[seen:])
    assert logged_steps(run)[-1] == stopped_at < MAX_STEPS
    assert latest_checkpoint(run / "checkpoints").name == f"step_{stopped_at:08d}"

    # 3. SIGKILL while a checkpoint is being written (files written, not yet renamed into place)
    before = latest_checkpoint(run / "checkpoints")
    before_weights = load_weights(before)
    proc, ckpt, seen = relaunch(tmp_path, *STEPS, delay_s=5)
    wait_for(lambda: write_in_progress(run), proc, what="a checkpoint write")
    assert kill(proc) == -signal.SIGKILL
    assert_resumed(proc.stdout.read(), ckpt, logged_steps(run)[seen:])
    assert latest_checkpoint(run / "checkpoints") == before  # the half-written one is invisible
    for k, v in load_weights(before).items():
        assert torch.equal(v, before_weights[k]), k

    # 4. the same command finishes the run
    proc, ckpt, seen = relaunch(tmp_path, *STEPS)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert_resumed(proc.stdout.read(), ckpt, logged_steps(run)[seen:])
    assert logged_steps(run)[-1] == MAX_STEPS
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers cleaned
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]

    assert_losses_match(tmp_path / "ref", logged_losses(run))  # every step of every launch, to the bit
    assert (latest_checkpoint(run / "checkpoints") / "ema.safetensors").is_file()
    assert_same_final_state(tmp_path / "ref", run, MAX_STEPS)  # the EMA included


@pytest.mark.slow
def test_killed_fp16_run_resumes_its_gradient_scaler(tmp_path):
    steps = ["train.max_steps=16", "train.save_every_n_steps=4", "train.keep_checkpoints=2", "train.resume=true",
             "train.precision=fp16"]
    reference = launch(tmp_path, "ref", *steps)
    run = tmp_path / "run"
    proc = launch(tmp_path, "run", *steps)
    wait_for(lambda: latest_checkpoint(run / "checkpoints") is not None, proc, what="a checkpoint")
    assert kill(proc) == -signal.SIGKILL
    assert max(logged_steps(run)) < 16 and not (run / "summary.json").exists()  # killed mid-run
    saved = load_state(latest_checkpoint(run / "checkpoints"))["scaler"]
    # an fp16 run saves a live scaler (an fp32 run's is {}): its scale, and a growth tracker that counts the finite
    # steps since the scale last changed
    assert saved["scale"] > 0 and "_growth_tracker" in saved, saved
    proc, ckpt, seen = relaunch(tmp_path, *steps)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert_resumed(proc.stdout.read(), ckpt, logged_steps(run)[seen:])
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]
    assert_losses_match(tmp_path / "ref", logged_losses(run))
    assert_same_final_state(tmp_path / "ref", run, 16)
    # the tracker carried on from the checkpoint: more finite steps than the relaunch itself ran
    final = load_state(latest_checkpoint(run / "checkpoints"))["scaler"]
    assert final["_growth_tracker"] > 16 - int(ckpt.name.removeprefix("step_")), (final, ckpt.name)
