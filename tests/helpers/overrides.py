"""Config overrides shared by the end-to-end training tests, and the one-step run the export tests start from."""

from contrastive.config import load_config
from tests.conftest import ROOT
from tests.helpers.towers import QUIET, towers


FAST = [*towers(2), *QUIET, "train.log_every_n_steps=1"]


def small_run(tmp_path, *overrides, name="run"):
    """One training step of a one-layer, 32 px shapes model (a checkpoint to export or load), in `tmp_path/name`."""
    from contrastive.training.recipe import train

    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [
        *towers(1), "model.image_size=32", "model.embed_dim=16", "train.batch_size=8", "train.max_steps=1", "data.val=",
        *QUIET, f"train.output_dir={tmp_path}", f"train.run_name={name}", *overrides])
    return train(cfg)
