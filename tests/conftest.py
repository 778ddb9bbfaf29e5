import os
import random
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings as _hypothesis_settings
from tests.helpers.towers import towers

# CI runs the property tests on a fixed seed (HYPOTHESIS_PROFILE=ci in .ci/run): the same examples every time, so a
# landing never hangs on a newly drawn one; here they draw anew and find new cases.
_hypothesis_settings.register_profile("ci", derandomize=True)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def seed():
    random.seed(0)
    torch.manual_seed(0)
    yield 0


@pytest.fixture
def one_thread():
    """Tiny models on shared cores: intra-op threads only contend, so a test module can ask for one thread
    (`pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def repo_root() -> Path:
    return ROOT


def subprocess_env() -> dict[str, str]:
    """Environment for child processes that import this checkout's package."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


# ----------------------------------------------------------------------------------------------------------------------
# trained models shared by the evaluation, ranking and plotting tests (trained once per session)

TINY_TOWERS = [*towers(2), "data.num_workers=0"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Two steps of a 2+2-layer model, evaluated (retrieval and zero-shot on `shape`) after each: a run directory
    with a checkpoint, eval rows in metrics.jsonl and TensorBoard events, and the progress bar's text in
    `progress_bar.txt`. Untrained: good for schemas and plumbing, not for accuracy."""
    import contextlib
    import io

    from contrastive.config import load_config
    from contrastive.training.recipe import train

    out = tmp_path_factory.mktemp("tiny_run")
    # the first 64 held-out images (absolute paths) keep the two evaluations cheap
    lines = (ROOT / "data/shapes/val.csv").read_text().splitlines(keepends=True)
    (out / "val64.csv").write_text(lines[0] + "".join(str(ROOT / "data/shapes") + "/" + line for line in lines[1:65]))
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [
        *TINY_TOWERS, f"train.output_dir={out}", "train.run_name=run", "train.batch_size=32", "train.max_steps=2",
        f"data.val={out / 'val64.csv'}",
        "train.log_every_n_steps=1", "eval.every_n_steps=1", "eval.tasks=[retrieval, zeroshot]",
        "eval.zeroshot_class_key=shape", "train.progress_bar=true",
    ])
    bar = io.StringIO()
    with contextlib.redirect_stderr(bar):
        run = train(cfg)
    (run / "progress_bar.txt").write_text(bar.getvalue())
    return run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A 2+2-layer model trained long enough on the bundled shapes to rank held-out captions far above chance."""
    from contrastive.config import load_config
    from contrastive.training.recipe import train

    out = tmp_path_factory.mktemp("trained_run")
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [
        *TINY_TOWERS, f"train.output_dir={out}", "train.run_name=run", "train.max_steps=100",
        "train.progress_bar=false", "data.val=",
    ])
    return train(cfg)
