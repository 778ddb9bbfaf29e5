"""LoRA through peft: only the adapters (and the projections / temperature) train, checkpoints rebuild through
`load()`, and the export merges them into plain weights that transformers loads with the same embeddings."""

import pytest
import torch
from torch import nn

from contrastive.interop.checkpoint import save_checkpoint
from contrastive.errors import ConfigError
from contrastive.config import config_to_dict, load_config
from contrastive.model import create_model
from contrastive.interop.loading import load
from contrastive.encoders.lora import apply_lora, apply_lora_to_model, has_lora, merge_lora
from tests.helpers.hf_models import save_tower
from tests.helpers.towers import BYTE_TEXT, towers

TOWERS = [*towers(2), *BYTE_TEXT]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each (conftest)


def lora_config(*overrides: str):
    return load_config(None, [*TOWERS, *overrides])


def inputs(model, tokenizer, n=4):
    size = getattr(model.image_encoder, "image_size", 64)
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), tokenizer([f"caption {i} of {n}" for i in range(n)])


def train_steps(model, cfg, tokenizer, steps=3):
    from contrastive.training.finetune import finetune_param_groups
    from contrastive.training.optim import build_optimizer

    optim_cfg = dict(cfg.optim.__dict__, lr=1e-2, weight_decay=0.5, fused=False)
    optim_cfg = type(cfg.optim)(**optim_cfg)
    opt = build_optimizer(model, optim_cfg, finetune_param_groups(model, optim_cfg, cfg.finetune))
    model.train()
    for _ in range(steps):
        out = model(*inputs(model, tokenizer))
        loss = -(out.logits_per_image.log_softmax(-1).diagonal().mean())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt


def randomise_adapters(model: nn.Module) -> None:
    """lora_B starts at zero (the adapted model equals the start); give it values so merging has work to do."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_only_adapters_change_builtin_towers():
    cfg = lora_config("finetune.image.lora.rank=2", "finetune.text.lora.rank=4")
    model, tokenizer = create_model(cfg.model)
    counts = apply_lora_to_model(model, cfg.finetune)
    # 4 attention projections per block, 2 blocks: rank * (in + out) each
    assert counts == {"image": 2 * 4 * 2 * (192 + 192), "text": 2 * 4 * 4 * (192 + 192)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = train_steps(model, cfg, tokenizer)
    in_optimizer = {id(p) for group in opt.param_groups for p in group["params"]}
    adapters = {n for n, _ in model.named_parameters() if "lora_" in n}
    trainable_outside = {"image_projection.weight", "text_projection.weight", "logit_scale"}
    assert {n for n, p in model.named_parameters() if id(p) in in_optimizer} == adapters | trainable_outside
    assert {n for n, p in model.named_parameters() if p.requires_grad} == adapters | trainable_outside
    after = model.state_dict()
    for name, value in after.items():
        if name in adapters or name in trainable_outside:
            assert not torch.equal(value, before[name]), f"{name} did not train"
        else:
            assert torch.equal(value, before[name]), f"{name} changed"


def test_only_adapters_change_hf_tower(tmp_path):
    bert = save_tower("bert", tmp_path / "bert")
    cfg = lora_config(f"model.text_encoder=hf:{bert}", f"model.tokenizer=hf:{bert}", "finetune.text.lora.rank=2")
    model, tokenizer = create_model(cfg.model)
    apply_lora_to_model(model, cfg.finetune)
    adapted = {n.rsplit(".lora_", 1)[0].rsplit(".", 1)[-1] for n, _ in model.text_encoder.named_parameters() if "lora_" in n}
    assert adapted == {"query", "key", "value"}  # the default targets found by name
    before = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    train_steps(model, cfg, tokenizer)
    for name, value in model.text_encoder.state_dict().items():
        assert torch.equal(value, before[name]) != ("lora_" in name), name
    # the image tower has no adapters and trains as usual
    assert all(p.requires_grad for p in model.image_encoder.parameters())


def test_merge_matches_unmerged_and_restores_plain_names():
    cfg = lora_config("finetune.image.lora.rank=2", "finetune.text.lora.rank=2")
    plain, tokenizer = create_model(cfg.model)
    model, _ = create_model(cfg.model)
    apply_lora_to_model(model, cfg.finetune)
    randomise_adapters(model)
    model.eval()
    pixels, tokens = inputs(model, tokenizer)
    with torch.no_grad():
        image, text = model.encode_image(pixels), model.encode_text(tokens)
        merge_lora(model)
        assert not has_lora(model)
        assert list(model.state_dict()) == list(plain.state_dict())
        torch.testing.assert_close(model.encode_image(pixels), image, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), text, rtol=0, atol=1e-5)


def lora_checkpoint(tmp_path, *overrides: str):
    cfg = lora_config(*overrides)
    model, tokenizer = create_model(cfg.model)
    apply_lora_to_model(model, cfg.finetune)
    randomise_adapters(model)
    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000001", model.state_dict(), {},
                           {"step": 1, "config": config_to_dict(cfg)})
    return ckpt, model.eval(), tokenizer


def test_load_rebuilds_adapters(tmp_path):
    ckpt, model, tokenizer = lora_checkpoint(tmp_path, "finetune.text.lora.rank=3")
    loaded, _, loaded_tok = load(tmp_path / "run")
    assert has_lora(loaded)
    pixels, tokens = inputs(model, tokenizer)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(loaded_tok(["caption 1 of 4"])), model.encode_text(tokenizer(["caption 1 of 4"])))
        assert torch.equal(loaded.encode_image(pixels), model.encode_image(pixels))


def test_export_merges_into_weights_transformers_loads(tmp_path):
    from transformers import AutoModel, AutoProcessor

    from contrastive.interop.hf_export import compare_embeddings, export_hf

    ckpt, model, tokenizer = lora_checkpoint(tmp_path, "finetune.image.lora.rank=2", "finetune.text.lora.rank=2")
    export_hf(ckpt, tmp_path / "hf")
    hf_model = AutoModel.from_pretrained(str(tmp_path / "hf")).eval()
    names = [k for k in hf_model.state_dict() if "lora" in k or "base_layer" in k]
    assert not names
    diffs = compare_embeddings(model, tokenizer, hf_model, AutoProcessor.from_pretrained(str(tmp_path / "hf")), 64)
    assert has_lora(model)  # compared with the unmerged model
    assert diffs["image"] <= 1e-5 and diffs["text"] <= 1e-5, diffs


def test_bad_targets_and_combinations():
    cfg = lora_config("finetune.text.lora.rank=2", "finetune.text.lora.target_modules=[nope]")
    model, _ = create_model(cfg.model)
    with pytest.raises(ConfigError, match="no module named 'nope'.*fc1"):
        apply_lora(model.text_encoder, cfg.finetune.text.lora)
    with pytest.raises(ConfigError, match="LoRA already freezes"):
        lora_config("finetune.image.lora.rank=2", "finetune.image.lock=true")
    with pytest.raises(ConfigError, match="rank must be >= 0"):
        lora_config("finetune.image.lora.rank=-1")
