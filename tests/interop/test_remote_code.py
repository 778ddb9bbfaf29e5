"""`model.trust_remote_code`: a model directory that ships its own modelling code (transformers' `auto_map`) is
refused without running that code unless the config allows it; `contrastive.load` never runs it on its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from contrastive.errors import ConfigError
from contrastive.config import load_config
from contrastive.model import create_model
from tests.conftest import ROOT
from tests.helpers.hf_models import byte_hf_tokenizer

CONFIG_CODE = '''
from transformers import PretrainedConfig


class ToyTowerConfig(PretrainedConfig):
    model_type = "toy_remote_tower"

    def __init__(self, vocab_size=259, hidden_size=16, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        super().__init__(**kwargs)
'''

MODEL_CODE = '''
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_toy import ToyTowerConfig

Path(os.environ["TOY_REMOTE_MARKER"]).write_text("imported")  # proof that this file's code ran


class ToyTowerModel(PreTrainedModel):
    config_class = ToyTowerConfig
    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return BaseModelOutput(last_hidden_state=self.embed(input_ids))
'''


@pytest.fixture
def remote_code_dir(tmp_path, monkeypatch):
    """A text tower directory whose config and model classes live in .py files next to the weights."""
    folder = tmp_path / "toy_tower"
    folder.mkdir()
    (folder / "configuration_toy.py").write_text(textwrap.dedent(CONFIG_CODE))
    (folder / "modeling_toy.py").write_text(textwrap.dedent(MODEL_CODE))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "toy_remote_tower", "vocab_size": 259, "hidden_size": 16,
        "auto_map": {"AutoConfig": "configuration_toy.ToyTowerConfig", "AutoModel": "modeling_toy.ToyTowerModel"},
    }))
    byte_hf_tokenizer().save_pretrained(str(folder))
    save_file({"embed.weight": torch.randn(259, 16)}, str(folder / "model.safetensors"))
    marker = tmp_path / "marker.txt"
    monkeypatch.setenv("TOY_REMOTE_MARKER", str(marker))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "hf_modules"))
    return folder, marker


def _config(folder, trust: bool, *extra: str):
    return load_config(ROOT / "configs/shapes_tiny.yaml", [*extra,
        f"model.text_encoder=hf:{folder}", f"model.tokenizer=hf:{folder}", "model.text_encoder_args={pooling: mean}", f"model.trust_remote_code={trust}",
    ])


def test_remote_code_is_refused_by_default_and_never_runs(remote_code_dir):
    folder, marker = remote_code_dir
    with pytest.raises(ConfigError, match="toy_tower: cannot load without running .* model.trust_remote_code=true"):
        create_model(_config(folder, trust=False).model)
    assert not marker.exists()


def test_remote_code_runs_when_the_config_trusts_it(remote_code_dir):
    folder, marker = remote_code_dir
    model, tokenizer = create_model(_config(folder, trust=True).model)
    assert marker.read_text() == "imported"
    assert type(model.text_encoder.model).__name__ == "ToyTowerModel"
    out = model.encode_text(tokenizer(["a red circle", "a blue square"]))
    assert out.shape == (2, 128) and torch.isfinite(out).all()


def test_loading_a_checkpoint_never_imports_model_code(remote_code_dir, tmp_path):
    from contrastive.training.recipe import train

    folder, marker = remote_code_dir
    run = train(_config(folder, True, "model.embed_dim=16", "train.batch_size=8", "train.max_steps=1", "data.val=",
                        "data.num_workers=0", "train.progress_bar=false", f"train.output_dir={tmp_path}",
                        "train.run_name=run"))
    assert load_config(run / "config.yaml").model.trust_remote_code is True
    marker.unlink(missing_ok=True)  # (the module may have been imported by an earlier test of this process)
    # a fresh process: the saved config says trust_remote_code=true, the tower directory is still there
    code = f"import contrastive; contrastive.load({str(run)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert "is not rebuilt from a checkpoint (loading never imports model code)" in proc.stderr
    assert not marker.exists()
