"""Fixtures of the search tests: small collections of the bundled shapes images."""

from pathlib import Path

import pytest

from tests.search.helpers import shapes_table


@pytest.fixture
def small_table(tmp_path) -> Path:
    """48 held-out shapes images copied beside their table."""
    return shapes_table(tmp_path / "collection", 48, copy=True)


@pytest.fixture(scope="session")
def other_run(tiny_run, tmp_path_factory) -> Path:
    """`tiny_run`'s checkpoint with one weight changed: the same architecture, other weights."""
    import shutil

    from safetensors.torch import load_file, save_file

    from contrastive.interop.checkpoint import resolve_checkpoint

    ckpt = tmp_path_factory.mktemp("other_run") / "checkpoint"
    shutil.copytree(resolve_checkpoint(tiny_run), ckpt)
    weights = load_file(ckpt / "model.safetensors")
    name = next(k for k in weights if k.endswith("image_projection.weight"))
    weights[name] = weights[name] * 1.5
    save_file(weights, ckpt / "model.safetensors")
    return ckpt
