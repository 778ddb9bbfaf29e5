"""A run directory belongs to its run: one process at a time (a second one, overwriting or resuming, stops in one
line naming the first and touches nothing; a SIGKILLed holder leaves no stale lock), and checkpoint rotation deletes
only the checkpoints the run wrote."""

import json
import shutil
import signal

import pytest

from contrastive.interop.checkpoint import latest_checkpoint
from contrastive.training.wise_ft import wise_ft
from tests.helpers.crash import assert_resumed, kill, launch, logged_steps, wait_for
from tests.helpers.overrides import small_run

LONG = ["train.max_steps=100000", "train.save_every_n_steps=5", "train.keep_checkpoints=100"]


@pytest.mark.slow
def test_a_second_process_on_a_live_run_is_refused(tmp_path):
    run = tmp_path / "run"
    first = launch(tmp_path, "run", *LONG, "train.overwrite=true")
    wait_for(lambda: latest_checkpoint(run / "checkpoints") is not None, first, what="a checkpoint")
    inode = run.stat().st_ino
    # at once: one would move the live run aside (and put back "the earlier run"), the other write its step names
    seconds = [launch(tmp_path, "run", *LONG, "train.overwrite=true"), launch(tmp_path, "run", *LONG, "train.resume=true")]
    for proc in seconds:
        assert proc.wait(timeout=300) == 2
        err = proc.stderr.read().strip().splitlines()
        assert len(err) == 1 and f"is in use by process {first.pid} (train)" in err[0], err
        assert "resumed from" not in proc.stdout.read()
    assert first.poll() is None, first.stderr.read()[-2000:]  # the first run trains on, in the same directory
    assert run.stat().st_ino == inode and not (tmp_path / ".run.replaced").exists()
    seen = len(logged_steps(run))
    wait_for(lambda: len(logged_steps(run)) >= seen + 3, first, what="more steps")
    steps = logged_steps(run)
    assert steps == list(range(1, len(steps) + 1))  # one writer: no rows from another process in metrics.jsonl

    assert kill(first) == -signal.SIGKILL  # no stale lock after SIGKILL: the same command resumes
    ckpt, seen = latest_checkpoint(run / "checkpoints"), len(logged_steps(run))
    again = launch(tmp_path, "run", *LONG, "train.resume=true")
    wait_for(lambda: len(logged_steps(run)) >= seen + 1, again, what="a resumed step")
    assert kill(again, signal.SIGTERM) == 128 + signal.SIGTERM
    assert_resumed(again.stdout.read(), ckpt, logged_steps(run)[seen:])


def test_rotation_deletes_only_the_run_s_own_checkpoints(tmp_path):
    run = small_run(tmp_path, "train.max_steps=2", "train.save_every_n_steps=2")
    other = small_run(tmp_path, "train.max_steps=1", name="other")
    checkpoints = run / "checkpoints"
    # strangers sorting before the run's own: a WiSE-FT soup and another run's checkpoint, as older versions let
    # `wise-ft --output` and a copy put them there
    soup = wise_ft(run, other, 0.5, tmp_path / "soup")
    shutil.move(soup, checkpoints / "step_00000000")
    shutil.copytree(latest_checkpoint(other / "checkpoints"), checkpoints / "step_00000001")
    small_run(tmp_path, "train.max_steps=8", "train.save_every_n_steps=2", "train.keep_checkpoints=2",
              "train.resume=true")
    assert sorted(p.name for p in checkpoints.glob("step_*")) == [
        "step_00000000", "step_00000001", "step_00000006", "step_00000008"]
    ids = {json.loads((checkpoints / name / "meta.json").read_text()).get("run_id")
           for name in ("step_00000006", "step_00000008")}
    assert len(ids) == 1 and "" not in ids  # the resumed run kept its id
