"""SIGINT/SIGTERM: the first asks for a stop at the next step boundary, a second exits at once."""

import os
import signal
import time

import pytest

from contrastive.training.signals import GracefulStop, Interrupted
from tests.helpers.crash import kill, launch, logged_steps, wait_for, write_in_progress


def test_first_signal_only_requests_a_stop():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.requested and stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


def test_interrupted_carries_the_shell_exit_code():
    e = Interrupted(signal.SIGTERM, "stopped")
    assert isinstance(e, KeyboardInterrupt) and e.exit_code == 143 and str(e) == "stopped"


@pytest.mark.slow
def test_second_signal_exits_at_once(tmp_path):
    run = tmp_path / "run"
    # the stop's checkpoint write pauses 60 s: a second signal must not wait for it
    proc = launch(tmp_path, "run", "train.max_steps=50", delay_s=60)
    wait_for(lambda: len(logged_steps(run)) >= 1, proc, what="a step")
    os.kill(proc.pid, signal.SIGINT)
    wait_for(lambda: write_in_progress(run), proc, what="the stop's checkpoint write")
    start = time.monotonic()
    rc = kill(proc, signal.SIGINT)
    assert rc == 128 + signal.SIGINT and time.monotonic() - start < 10
    err = proc.stderr.read()
    assert "SIGINT: finishing the current step" in err and "SIGINT again: exiting now" in err
    assert "Traceback" not in err
    assert not (run / "checkpoints" / "latest").exists()  # the interrupted write never became a checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_saves_and_exits(tmp_path, sig):
    """Slurm, `timeout` and Ctrl-C signal the process group, DataLoader workers included: the run still finishes its
    step, saves it and exits 128 + signal, and the relaunch resumes at the next step."""
    import json

    from contrastive.interop.checkpoint import latest_checkpoint
    from tests.helpers.crash import assert_resumed

    run = tmp_path / "run"
    # one worker loading big batches: the main process mostly waits for data when the signal lands, as when a
    # worker killed by it would leave the wait without a batch
    steps = ["train.max_steps=100000", "data.num_workers=1", "data.prefetch_factor=1", "train.batch_size=64",
             "train.resume=true"]
    proc = launch(tmp_path, "run", *steps, own_group=True)
    wait_for(lambda: len(logged_steps(run)) >= 3, proc, what="3 steps")
    os.killpg(proc.pid, sig)
    assert proc.wait(timeout=120) == 128 + sig
    err = proc.stderr.read()
    assert "Traceback" not in err and "DataLoader worker" not in err, err[-2000:]
    assert f"stopped by {sig.name} after step " in err.strip().splitlines()[-1]
    stopped_at = int(err.split("after step ")[1].split(";")[0])
    ckpt = latest_checkpoint(run / "checkpoints")
    meta = json.loads((ckpt / "meta.json").read_text())
    assert ckpt.name == f"step_{stopped_at:08d}" and meta["step"] == stopped_at == logged_steps(run)[-1]
    seen = len(logged_steps(run))
    again = launch(tmp_path, "run", *steps)
    wait_for(lambda: len(logged_steps(run)) >= seen + 1, again, what="a resumed step")
    assert kill(again, signal.SIGTERM) == 128 + signal.SIGTERM
    assert_resumed(again.stdout.read(), ckpt, logged_steps(run)[seen:])
