"""One writer per output (a kernel lock that dies with its process) and the rules of where commands may write."""

import os
import signal
import subprocess
import textwrap
import time

import pytest

from contrastive.errors import ConfigError, RunError
from contrastive.interop.outputs import check_file_output, check_folder_output, hold, lock_path, release
from tests.conftest import PYTHON, ROOT, subprocess_env

HOLDER = textwrap.dedent("""
    import sys, time
    from contrastive.interop.outputs import hold
    hold(sys.argv[1], "test")
    print("held", flush=True)
    time.sleep(120)
""")


def start_holder(output) -> subprocess.Popen:
    proc = subprocess.Popen([PYTHON, "-c", HOLDER, str(output)], cwd=ROOT, env=subprocess_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_output_is_refused_naming_the_holder_and_freed_by_sigkill(tmp_path):
    out = tmp_path / "run"
    proc = start_holder(out)
    try:
        with pytest.raises(RunError, match=f"in use by process {proc.pid} "):
            hold(out, "train")
    finally:
        proc.kill()
        proc.wait()
    hold(out, "train")  # the kernel dropped the killed process's lock: nothing stale to clean up
    try:
        assert lock_path(out).read_text().strip() == str(os.getpid())
    finally:
        release(out)


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    out = tmp_path / "run"
    hold(out, "train")
    child = os.fork()
    if child == 0:  # a DataLoader worker, say: outlives its parent's hold for a while
        time.sleep(60)
        os._exit(0)
    try:
        release(out)
        holder = start_holder(out)  # free although the child still lives
        holder.kill()
        holder.wait()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_file_outputs_are_new_or_their_own_kind_on_overwrite(tmp_path):
    table = tmp_path / "table.csv"
    table.write_text("image,caption\n")
    old = tmp_path / "old.json"
    old.write_text("{}")
    assert check_file_output(tmp_path / "new.json", "--output", (".json",), "JSON") == tmp_path / "new.json"
    with pytest.raises(ConfigError, match="exists; choose a new path, or pass --overwrite"):
        check_file_output(old, "--output", (".json",), "JSON")
    check_file_output(old, "--output", (".json",), "JSON", overwrite=True)
    with pytest.raises(ConfigError, match="not a JSON file"):  # --overwrite never turns a CSV into JSON
        check_file_output(table, "--output", (".json",), "JSON", overwrite=True)
    with pytest.raises(ConfigError, match="is a folder"):
        check_file_output(tmp_path, "--output", (".json",), "JSON", overwrite=True)
    assert table.read_text() == "image,caption\n" and old.read_text() == "{}"


def fake_run(root):
    """A run directory as training leaves it: config.yaml and a checkpoint in checkpoints/."""
    run = root / "run"
    ckpt = run / "checkpoints" / "step_00000002"
    ckpt.mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\n")
    (ckpt / "model.safetensors").write_bytes(b"")
    (ckpt / "meta.json").write_text("{}")
    return run, ckpt


def test_nothing_is_written_into_a_run_s_checkpoints(tmp_path):
    run, ckpt = fake_run(tmp_path)
    never = [run / "checkpoints" / "step_99999999", ckpt / "x", run / "checkpoints"]
    for output in never:  # not even with --overwrite: rotation and resume read these folders
        with pytest.raises(ConfigError, match="which only its run writes"):
            check_folder_output(output, overwrite=True)
        with pytest.raises(ConfigError, match="which only its run writes"):
            check_file_output(output / "r.json", "--output", (".json",), "JSON", overwrite=True)
    with pytest.raises(ConfigError, match="inside the run .* or pass --overwrite"):
        check_folder_output(run / "souped")
    check_folder_output(run / "souped", overwrite=True)
    with pytest.raises(ConfigError, match="would replace the checkpoint being read"):
        check_folder_output(tmp_path, overwrite=True, sources=[ckpt.resolve()])
