"""`train.compile=true` through `train()`: the compiled run takes the eager run's steps (losses and weights), at a
learning rate that moves every weight well beyond the comparison's tolerance at each step."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT
from tests.helpers.towers import QUIET, towers
from contrastive.evaluation.plots import read_metrics

TINY = [*towers(1, 64, 2), "model.embed_dim=32", "model.image_size=32", *QUIET, "data.val=", "train.batch_size=4",
        "train.max_steps=3", "train.log_every_n_steps=1", "model.tokenizer=byte",
        "model.context_length=24", "train.run_name=run",
        # full rate from the first step (the config's warm-up would keep it near 1e-5: weights within the tolerance
        # below whether or not a step happened), and a checkpoint per step
        "optim.lr=2e-3", "optim.warmup_steps=0", "train.save_every_n_steps=1", "train.keep_checkpoints=3"]
ATOL = 1e-4


def compiler_available() -> str:
    """'' when torch.compile can build CPU kernels here, else why not."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "torch.compile's CPU backend needs a C compiler (apt-get install build-essential)"
    return ""


def run(tmp: Path, table: Path, *extra: str) -> tuple[list[float], dict[int, dict[str, torch.Tensor]]]:
    """(losses, step -> weights) of a 3-step run."""
    from contrastive.config import load_config
    from contrastive.training import train

    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [*TINY, f"data.train={table}", f"train.output_dir={tmp}", *extra])
    with contextlib.redirect_stderr(io.StringIO()):
        path = train(cfg)
    rows = read_metrics(path)
    losses = [r["loss"] for r in rows if "loss" in r]
    return losses, {step: load_file(str(path / "checkpoints" / f"step_{step:08d}" / "model.safetensors")) for step in (1, 3)}


@pytest.mark.slow  # compiling forward and backward takes a minute or more on a small CPU
@pytest.mark.skipif(bool(compiler_available()), reason=compiler_available() or "-")
def test_compiled_training_takes_the_eager_steps(tmp_path):
    lines = (ROOT / "data/shapes/train.csv").read_text().splitlines()
    table = tmp_path / "train.csv"
    table.write_text("\n".join([lines[0], *(str(ROOT / "data/shapes") + "/" + line for line in lines[1:13])]) + "\n")
    eager_losses, eager = run(tmp_path / "eager", table)
    compiled_losses, compiled = run(tmp_path / "compiled", table, "train.compile=true")
    assert len(eager_losses) == len(compiled_losses) == 3
    torch.testing.assert_close(torch.tensor(compiled_losses), torch.tensor(eager_losses), rtol=1e-4, atol=1e-5)
    # the steps move the weights: nearly every tensor by more than the tolerance between step 1 and step 3, so a
    # compiled run that skipped its updates could not match at both
    moved = [(eager[3][k] - eager[1][k]).abs().max().item() for k in eager[1] if eager[1][k].is_floating_point()]
    assert sum(m > 5 * ATOL for m in moved) >= 0.9 * len(moved), sorted(moved)[:10]
    for step in (1, 3):
        assert eager[step].keys() == compiled[step].keys()
        for name in eager[step]:  # the compiler reorders sums: equal to float tolerance after Adam steps
            torch.testing.assert_close(compiled[step][name], eager[step][name], rtol=1e-3, atol=ATOL,
                                       msg=f"step {step}: {name}")
