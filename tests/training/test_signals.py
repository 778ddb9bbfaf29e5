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
