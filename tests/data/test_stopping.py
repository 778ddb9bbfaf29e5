"""data.stopping.StopRequest: the first signal is recorded and announced with the caller's words; handlers restored."""

import os
import signal
import time

from contrastive.data.stopping import StopRequest


def test_first_signal_is_recorded_and_says_what_the_loop_finishes(capfd):
    before = signal.getsignal(signal.SIGINT)
    with StopRequest("finishing the current batch", "the shards written are kept") as stop:
        assert not stop.requested and stop.name == ""
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.requested and stop.signum == signal.SIGINT and stop.name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before
    err = capfd.readouterr().err
    assert "SIGINT: finishing the current batch (send it again to exit at once)" in err
