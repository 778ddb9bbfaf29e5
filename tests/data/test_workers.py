"""Persistent DataLoader workers ignore SIGTERM (a scheduler signals the whole group; the main process decides how
to stop), so nothing may leave them running once the data is done with: the process would never exit, because
multiprocessing's exit handler sends its daemonic children SIGTERM and waits for them. And a worker gives the
memory of the batches it has sent back to the system."""

import ctypes.util
import multiprocessing
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, subprocess_env

SMALL = ["model.image_encoder_args={layers: 1, width: 32, heads: 2}",
         "model.text_encoder_args={layers: 1, width: 32, heads: 2}", "model.embed_dim=16", "data.val=",
         "data.num_workers=2", "data.persistent_workers=true"]
TWO_SOURCES = "data.train=[{path: data/shapes/train.csv}, {path: data/shapes/val.csv}]"

OPEN = textwrap.dedent("""
    from contrastive.config import load_config
    from contrastive.data.mixture import open_train_data
    from contrastive.text.tokenizer import build_tokenizer

    def started(overrides):
        cfg = load_config("configs/shapes_tiny.yaml", overrides)
        data = open_train_data(cfg.data, cfg.model, build_tokenizer("byte", 16), 16, 0)
        next(iter(data.batches(0, 0)))
        return data
""")


def test_close_ends_the_workers_of_data_still_referenced(monkeypatch):
    monkeypatch.chdir(ROOT)
    scope = {}
    exec(OPEN, scope)
    for overrides in (SMALL, [*SMALL, TWO_SOURCES]):
        data = scope["started"](overrides)
        assert len(multiprocessing.active_children()) == 2
        data.close()
        assert multiprocessing.active_children() == []
        data.close()  # twice is harmless


EXITS = OPEN + textwrap.dedent("""
    import sys
    data = started(sys.argv[1:])
    data.cycle = data  # kept alive to the end of the script, as a reference cycle would keep it
    print("workers started", flush=True)
""")


def test_an_interpreter_holding_live_persistent_workers_still_exits():
    for overrides in (SMALL, [*SMALL, TWO_SOURCES]):
        proc = subprocess.run([PYTHON, "-c", EXITS, *overrides], cwd=ROOT, env=subprocess_env(), capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0 and "workers started" in proc.stdout, proc.stderr[-2000:]


RETAINED = """
import sys
from contrastive.data.loader import fixed_mmap_threshold

def anonymous_kib():
    with open("/proc/self/smaps_rollup") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Anonymous:")))

if sys.argv[1] == "fixed":
    fixed_mmap_threshold()
before = anonymous_kib()
b = bytearray(20 * 2**20)  # glibc maps a block this size, and when it is freed, by default raises its threshold past it
del b
b = bytearray(16 * 2**20)  # a smaller batch then comes from the heap, which keeps it when freed
del b
print(anonymous_kib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")
def test_workers_give_freed_batches_back_to_the_system():
    """A worker's freed batch leaves its memory (the embed worker that grew 1.2 GiB over 1.5 x 10^5 rows)."""
    if "libc.so" not in (ctypes.util.find_library("c") or ""):
        pytest.skip("glibc's malloc only")
    kept = {mode: int(subprocess.run([PYTHON, "-c", RETAINED, mode], capture_output=True, text=True, check=True,
                                     cwd=ROOT, env=subprocess_env()).stdout.strip().splitlines()[-1])
            for mode in ("default", "fixed")}
    assert kept["default"] >= 12 * 1024, kept  # glibc's default keeps the freed 16 MiB block in its heap
    assert kept["fixed"] < 2 * 1024, kept
