"""Checkpoints: atomic writes that fail cleanly, safe loading, pruning, leftovers of interrupted writes."""

import os
import resource
import signal
from pathlib import Path

import pytest
import torch

import contrastive
from contrastive.interop import checkpoint as ckpt_mod
from contrastive.errors import CheckpointError, CheckpointWriteError
from contrastive.interop.checkpoint import (
    latest_checkpoint,
    load_state,
    load_weights,
    prune_checkpoints,
    read_meta,
    remove_partial_checkpoints,
    save_checkpoint,
)
from contrastive.cli import main
from contrastive.config import load_config
from contrastive.training.recipe import train
from tests.conftest import ROOT
from tests.helpers.towers import QUIET, TINY

FAST = [*TINY, *QUIET, "data.val=", "train.batch_size=16"]


def write(directory: Path, model: torch.nn.Module, step: int) -> Path:
    return save_checkpoint(directory / f"step_{step:08d}", model.state_dict(), {"opt": {"x": torch.ones(3)}}, {"step": step})


class Payload:
    """Unpickling this runs `touch <path>`: what a malicious state.pt would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_save_load_roundtrip_and_latest(tmp_path):
    model = torch.nn.Linear(4, 3)
    write(tmp_path, model, 1)
    path = write(tmp_path, model, 2)
    assert latest_checkpoint(tmp_path) == path and (tmp_path / "latest").read_text().strip() == "step_00000002"
    for k, v in load_weights(path).items():
        torch.testing.assert_close(v, model.state_dict()[k], rtol=0, atol=0)
    assert read_meta(path) == {"step": 2}
    torch.testing.assert_close(load_state(path)["opt"]["x"], torch.ones(3))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_rewriting_a_step_replaces_it(tmp_path):
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    write(tmp_path, a, 5)
    path = write(tmp_path, b, 5)
    torch.testing.assert_close(load_weights(path)["weight"], b.weight.detach(), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000005"]


def test_real_write_failure_leaves_previous_checkpoint_intact(tmp_path):
    """A file-size limit makes the kernel refuse the writes (EFBIG), as a full disk would (ENOSPC)."""
    model = torch.nn.Linear(64, 64)  # ~16 kB of weights
    good = write(tmp_path, model, 1)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # report EFBIG instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        with torch.no_grad():
            model.weight.add_(1.0)
        with pytest.raises(CheckpointWriteError) as e:
            write(tmp_path, model, 2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "\n" not in str(e.value) and "step_00000002" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"]
    assert latest_checkpoint(tmp_path) == good
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before


def failing_replace(monkeypatch, step_name: str):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == step_name:
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(ckpt_mod.os, "replace", replace)


def run_overrides(tmp_path, *extra):
    return [*FAST, "train.max_steps=4", "train.save_every_n_steps=2", "train.keep_checkpoints=5",
            f"train.output_dir={tmp_path}", "train.run_name=run", *extra]


def test_failed_write_stops_the_run_in_one_line(tmp_path, monkeypatch, capsys):
    failing_replace(monkeypatch, "step_00000004")
    rc = main(["train", "--config", str(ROOT / "configs/shapes_tiny.yaml"), *run_overrides(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "step 4" in err[0] and "No space left on device" in err[0] and "step_00000002 is intact" in err[0]
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step_00000002"]
    assert latest_checkpoint(checkpoints).name == "step_00000002"


def test_failed_write_can_continue(tmp_path, monkeypatch, capsys):
    failing_replace(monkeypatch, "step_00000002")
    run = train(load_config(ROOT / "configs/shapes_tiny.yaml", run_overrides(tmp_path, "train.on_checkpoint_error=continue")))
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "step 2" in warnings[0] and "training continues" in warnings[0]
    assert "no earlier checkpoint" in warnings[0]
    names = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert names == ["step_00000004"]


def test_pickled_payload_is_refused_without_running(tmp_path):
    model = torch.nn.Linear(4, 3)
    path = write(tmp_path, model, 1)
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Payload(marker)}, path / "state.pt")
    # the payload is live: an unsafe load would run it
    live = tmp_path / "live"
    torch.save({"x": Payload(live)}, tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)
    assert live.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_state(path)
    assert not marker.exists()


def test_resume_from_poisoned_checkpoint_exits_2_without_running_it(tmp_path, capsys):
    overrides = [*FAST, "train.max_steps=1", f"train.output_dir={tmp_path}", "train.run_name=run"]
    run = train(load_config(ROOT / "configs/shapes_tiny.yaml", overrides))
    marker = tmp_path / "pwned"
    step = latest_checkpoint(run / "checkpoints")
    torch.save({"optimizer": Payload(marker), "scaler": {}, "rng": {}}, step / "state.pt")
    capsys.readouterr()
    rc = main(["train", "--config", str(ROOT / "configs/shapes_tiny.yaml"), *overrides, "train.max_steps=2",
               "train.resume=true"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "state.pt" in err[0] and not marker.exists()
    # weights come only from safetensors: a pickle in their place is refused too
    torch.save({"w": Payload(marker)}, step / "model.safetensors")
    with pytest.raises(CheckpointError, match="safetensors"):
        contrastive.load(run)
    assert not marker.exists()


def test_prune_keeps_last_k_and_best(tmp_path):
    model = torch.nn.Linear(2, 2)
    for step in range(1, 7):
        write(tmp_path, model, step)
    prune_checkpoints(tmp_path, keep=2, protect={"step_00000002"})
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002", "step_00000005", "step_00000006"]


def test_leftovers_of_interrupted_writes_are_removed(tmp_path):
    model = torch.nn.Linear(2, 2)
    good = write(tmp_path, model, 1)
    for name in (".step_00000002.tmp-abc", ".step_00000001.old-123"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".latest.xyz").write_text("step_00000002\n")
    removed = remove_partial_checkpoints(tmp_path)
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000001"] and latest_checkpoint(tmp_path) == good


@pytest.mark.parametrize("damage", ["truncate model.safetensors", "invalid meta.json", "truncate state.pt",
                                    "empty model.safetensors"])
def test_resume_passes_over_a_corrupt_latest_checkpoint_and_says_so(tmp_path, capsys, damage):
    overrides = [*FAST, "model.tokenizer=byte", "model.context_length=64", "train.max_steps=2",
                 "train.save_every_n_steps=1", f"train.output_dir={tmp_path}", "train.run_name=run"]
    run = train(load_config(ROOT / "configs/shapes_tiny.yaml", overrides))
    newest = run / "checkpoints" / "step_00000002"
    action, name = damage.split(" ", 1)
    target = newest / name
    if action == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    elif action == "empty":
        target.write_bytes(b"")
    else:
        target.write_text('{"step": 2, "conf')
    assert latest_checkpoint(run / "checkpoints") == run / "checkpoints" / "step_00000001"
    ckpt_mod._WARNED.clear()  # a process warns once per checkpoint: let the CLI run below warn again
    capsys.readouterr()
    argv = ["train", "--config", str(ROOT / "configs/shapes_tiny.yaml"), *overrides, "train.max_steps=3",
            "train.resume=true"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "resumed from" in out and "step_00000001 (step 1)" in out
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings and f"{newest} is corrupt ({name} is" in warnings[0] and "using step_00000001" in warnings[0]
    assert "does not fit" not in err and "Errno" not in err
    # with every checkpoint corrupt, resuming is one line naming the problem (never a silent fresh start)
    for step in (run / "checkpoints").glob("step_*"):
        (step / "meta.json").write_text("{")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every checkpoint in" in err[0] and "meta.json is not valid JSON" in err[0]


def test_pickled_state_is_refused_without_the_unsafe_hint(tmp_path):
    path = write(tmp_path, torch.nn.Linear(4, 3), 1)
    torch.save({"optimizer": Payload(tmp_path / "pwned")}, path / "state.pt")
    with pytest.raises(CheckpointError) as e:
        load_state(path)
    message = str(e.value)
    assert "not plain tensors" in message and "weights_only" not in message and "\n" not in message
    assert not (tmp_path / "pwned").exists()
