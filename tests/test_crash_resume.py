"""Crash-exact resume: a run SIGKILLed (at a random moment mid-training, mid-checkpoint-write) and stopped by SIGTERM,
relaunched each time with the same command and `train.resume=true`, ends with the weights of an uninterrupted run."""

import random
import signal
import time

import pytest
import torch

import contrastive
from contrastive.checkpoint import latest_checkpoint, load_weights
from tests.crash_helpers import kill, launch, logged_steps, wait_for, write_in_progress

MAX_STEPS = 60  # tiny steps take ~50 ms: enough of them that the kills land mid-run on a fast machine too
STEPS = [f"train.max_steps={MAX_STEPS}", "train.save_every_n_steps=4", "train.keep_checkpoints=2", "train.resume=true"]


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted_run(tmp_path):
    reference = launch(tmp_path, "ref", *STEPS)
    run = tmp_path / "run"

    # 1. SIGKILL at a random moment while stepping (after the third step is logged)
    proc = launch(tmp_path, "run", *STEPS)
    wait_for(lambda: len(logged_steps(run)) >= 3, proc, what="3 steps")
    time.sleep(random.Random(7).uniform(0.0, 1.0))
    assert kill(proc) == -signal.SIGKILL
    assert max(logged_steps(run)) < MAX_STEPS

    # 2. SIGTERM: finishes the step, saves, exits with 128 + 15 (slowed checkpoint writes keep the run from
    # finishing before the signal lands on a fast machine)
    proc = launch(tmp_path, "run", *STEPS, delay_s=0.5)
    seen = len(logged_steps(run))
    wait_for(lambda: len(logged_steps(run)) >= seen + 2, proc, what="2 more steps")
    assert kill(proc, signal.SIGTERM) == 128 + signal.SIGTERM
    err = proc.stderr.read()
    assert "stopped by SIGTERM after step" in err and "Traceback" not in err
    stopped_at = int(err.split("stopped by SIGTERM after step ")[1].split(";")[0])
    assert latest_checkpoint(run / "checkpoints").name == f"step_{stopped_at:08d}"

    # 3. SIGKILL while a checkpoint is being written (files written, not yet renamed into place)
    before = latest_checkpoint(run / "checkpoints")
    before_weights = load_weights(before)
    proc = launch(tmp_path, "run", *STEPS, delay_s=5)
    wait_for(lambda: write_in_progress(run), proc, what="a checkpoint write")
    assert kill(proc) == -signal.SIGKILL
    assert latest_checkpoint(run / "checkpoints") == before  # the half-written one is invisible
    for k, v in load_weights(before).items():
        torch.testing.assert_close(v, before_weights[k], rtol=0, atol=0)

    # 4. the same command finishes the run
    proc = launch(tmp_path, "run", *STEPS)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # leftovers cleaned
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-2000:]

    a, b = contrastive.load(tmp_path / "ref")[0].state_dict(), contrastive.load(run)[0].state_dict()
    assert latest_checkpoint(run / "checkpoints").name == f"step_{MAX_STEPS:08d}"
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
