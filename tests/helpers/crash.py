"""Launch `python -m contrastive train` in a real subprocess and watch its run directory (for kill/signal tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import PYTHON, ROOT, subprocess_env

SMALL = ["model.image_encoder_args={layers: 1, width: 32, heads: 2}",
         "model.text_encoder_args={layers: 1, width: 32, heads: 2}", "model.embed_dim=16",
         "data.num_workers=0", "train.progress_bar=false", "data.val=", "train.batch_size=16",
         "train.log_every_n_steps=1", "optim.warmup_steps=2"]


def launch(out: Path, run_name: str, *overrides: str, delay_s: float = 0.0, own_group: bool = False) -> subprocess.Popen:
    """`own_group`: the process leads a new process group (its DataLoader workers join it), for `os.killpg`."""
    env = subprocess_env()
    if delay_s:
        env["CONTRASTIVE_CHECKPOINT_WRITE_DELAY"] = str(delay_s)
    cmd = [PYTHON, "-m", "contrastive", "train", "--config", "configs/shapes_tiny.yaml", *SMALL,
           f"train.output_dir={out}", f"train.run_name={run_name}", *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=own_group)


def logged_losses(run: Path) -> list[tuple[int, float]]:
    """(step, loss) of every complete training row of metrics.jsonl, in file order (relaunches append)."""
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if "loss" in row:
            rows.append((row["step"], row["loss"]))
    return rows


def logged_steps(run: Path) -> list[int]:
    return [step for step, _ in logged_losses(run)]


def assert_resumed(stdout: str, ckpt: Path, steps: list[int]) -> None:
    """The launch reported resuming from `ckpt` and logged only the steps after it: the next one, then in order."""
    n = int(ckpt.name.removeprefix("step_"))
    assert f"resumed from {ckpt} (step {n})" in stdout, stdout[-2000:]
    assert steps and steps == list(range(n + 1, n + 1 + len(steps))), (n, steps)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 150.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def write_in_progress(run: Path) -> bool:
    """A checkpoint's files are written into its temp dir but it is not renamed yet."""
    folder = run / "checkpoints"
    return folder.is_dir() and any(p.name.startswith(".step_") and (p / "meta.json").is_file() for p in folder.iterdir())


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> int:
    os.kill(proc.pid, sig)
    return proc.wait(timeout=120)
