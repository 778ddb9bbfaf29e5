"""Pretrained towers by name: hf: (vision and text), timm:, torchvision:, their pooling, preprocessing, tokenizers,
and checkpoints that rebuild HF towers without their directories."""

import shutil

import pytest
import torch
from safetensors.torch import save_file

from contrastive.config import ModelConfig, load_config
from contrastive.encoders import create_encoder
from contrastive.model import create_model
from contrastive.text.hf_tokenizer import HFTokenizer
from contrastive.interop.pretrained import resolve_model_config
from tests.conftest import ROOT
from tests.helpers.hf_models import TEXT, VISION, save_clip, save_tower


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each (conftest)


@pytest.fixture(scope="module")
def tower_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    return {kind: save_tower(kind, root / kind) for kind in [*VISION, *TEXT]}


VISION_POOLS = [(k, p) for k in VISION for p in ("pooler", "cls", "mean") if not (k == "convnext" and p == "cls")]
TEXT_POOLS = [(k, p) for k in TEXT for p in ("pooler", "cls", "mean", "eot")]


def reference_model(directory):
    """The saved model loaded by transformers itself, apart from the tower under test."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(directory)).eval()


def naive_pooler(kind: str, ref, h: torch.Tensor, first_eot: torch.Tensor | None = None) -> torch.Tensor:
    """Each architecture's pooled output written out from its last hidden state `h` (B, T, C) or (B, C, H, W):
    a reference for `pooling: pooler` that is not the model's own `pooler_output`."""
    rows = torch.arange(h.shape[0])
    ref = getattr(ref, "vision_model", ref)  # older transformers nest the vision towers one level down
    if kind in ("vit", "bert", "roberta"):  # tanh(dense(first token))
        return torch.tanh(ref.pooler.dense(h[:, 0]))
    if kind == "dinov2":  # the class token (last_hidden_state is already normed)
        return h[:, 0]
    if kind == "clip":  # the class token after the post-layernorm (last_hidden_state is before it)
        return ref.post_layernorm(h[:, 0])
    if kind == "convnext":  # the final norm of the spatial mean
        return ref.layernorm(h.mean(dim=(2, 3)))
    if kind == "siglip":  # one learned probe attends over the (normed) tokens, then a residual MLP
        head = ref.head
        x = head.attention(head.probe.expand(h.shape[0], -1, -1), h, h, need_weights=False)[0]
        return (x + head.mlp(head.layernorm(x)))[:, 0]
    if kind == "clip_text":  # the first end-of-text token (last_hidden_state is after the final norm)
        return h[rows, first_eot]
    raise KeyError(kind)


@pytest.mark.parametrize("kind,pooling", VISION_POOLS)
def test_hf_vision_towers_pool_as_specified(tower_dirs, kind, pooling):
    tower = create_encoder(f"hf:{tower_dirs[kind]}", modality="image", pooling=pooling).eval()
    pixels = torch.randn(2, 3, 32, 32)
    y = tower(pixels)
    assert y.shape == (2, tower.output_dim) and torch.isfinite(y).all()
    ref = reference_model(tower_dirs[kind])
    with torch.no_grad():
        h = ref(pixel_values=pixels).last_hidden_state
        expected = {"pooler": lambda: naive_pooler(kind, ref, h), "cls": lambda: h[:, 0],
                    "mean": lambda: h.mean(dim=1) if h.ndim == 3 else h.mean(dim=(2, 3))}[pooling]()
    torch.testing.assert_close(y.detach(), expected)
    y.square().sum().backward()
    grads = [p.grad for p in tower.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert_no_unused_trainable(tower)


def assert_no_unused_trainable(tower):
    """After `freeze_unused` (as training under torchrun calls it), every trainable parameter gets a gradient
    (DDP without find_unused_parameters fails otherwise); what the pooling skips is frozen instead."""
    grads = {n: p.grad for n, p in tower.named_parameters()}
    tower.zero_grad(set_to_none=True)
    frozen = tower.freeze_unused()
    assert sorted(frozen) == sorted(n for n, g in grads.items() if g is None)  # exactly what the real backward skipped
    assert all(p.grad is None for p in tower.parameters())  # the probe leaves no gradients behind
    unused = [n for n, p in tower.named_parameters() if p.requires_grad and grads[n] is None]
    assert not unused, unused


@pytest.mark.parametrize("kind,pooling", TEXT_POOLS)
def test_hf_text_towers_pool_as_specified(tower_dirs, kind, pooling):
    tok = HFTokenizer(tower_dirs[kind], 16)
    tower = create_encoder(f"hf:{tower_dirs[kind]}", modality="text", pooling=pooling, eot_token_id=tok.eot_token_id).eval()
    batch = tok(["a red circle", "two small blue squares on the left"])
    y = tower(batch)
    assert y.shape == (2, tower.output_dim)
    ref = reference_model(tower_dirs[kind])
    with torch.no_grad():
        h = ref(**batch).last_hidden_state
    mask = batch["attention_mask"]
    first_eot = (batch["input_ids"] == tok.eot_token_id).int().argmax(1)
    with torch.no_grad():
        pooler = naive_pooler(kind, ref, h, first_eot)
    expected = {
        "pooler": pooler,
        "cls": h[:, 0],
        "mean": torch.stack([h[i, : int(mask[i].sum())].mean(0) for i in range(2)]),  # naive: loop over real tokens
        "eot": torch.stack([h[i, int(first_eot[i])] for i in range(2)]),
    }[pooling]
    torch.testing.assert_close(y.detach(), expected)
    y.square().sum().backward()
    assert_no_unused_trainable(tower)


def test_auto_pooling_defaults(tower_dirs):
    assert create_encoder(f"hf:{tower_dirs['bert']}", modality="text").pooling == "mean"
    assert create_encoder(f"hf:{tower_dirs['clip_text']}", modality="text").pooling == "pooler"
    assert create_encoder(f"hf:{tower_dirs['vit']}", modality="image").pooling == "pooler"


def test_parameters_the_pooling_skips_are_frozen_but_kept(tower_dirs):
    bert = create_encoder(f"hf:{tower_dirs['bert']}", modality="text")  # mean pooling: BERT's pooler is unused
    assert bert.model.pooler.dense.weight.requires_grad  # nothing is frozen until training asks
    assert bert.freeze_unused() == ["model.pooler.dense.weight", "model.pooler.dense.bias"]
    assert not bert.model.pooler.dense.weight.requires_grad and "model.pooler.dense.weight" in bert.state_dict()
    assert create_encoder(f"hf:{tower_dirs['bert']}", modality="text", pooling="pooler").freeze_unused() == []


def test_wrong_modality_and_missing_dir_are_config_errors(tower_dirs, tmp_path):
    from contrastive.errors import ConfigError

    with pytest.raises(ConfigError, match="not a image model"):
        create_encoder(f"hf:{tower_dirs['bert']}", modality="image")
    with pytest.raises(ConfigError, match="cannot load"):
        create_encoder(f"hf:{tmp_path / 'nothing'}", modality="image")


def test_dual_encoder_dir_gives_towers_and_reuses_projections(tmp_path):
    from transformers import CLIPModel

    clip_dir = save_clip(tmp_path / "clip")
    ref = CLIPModel.from_pretrained(str(clip_dir))
    cfg = ModelConfig(image_encoder=f"hf:{clip_dir}", text_encoder=f"hf:{clip_dir}", tokenizer=f"hf:{clip_dir}",
                      embed_dim=16, context_length=32)
    model, _ = create_model(cfg)
    assert type(model.image_encoder.model).__name__ == "CLIPVisionModel"
    torch.testing.assert_close(model.image_projection.weight, ref.visual_projection.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.text_projection.weight, ref.text_projection.weight, rtol=0, atol=0)
    # a different embedding width cannot reuse them: fresh projections instead
    other, _ = create_model(ModelConfig(**{**cfg.__dict__, "embed_dim": 8}))
    assert other.image_projection.weight.shape == (8, 32)


def test_timm_tower_pooling_and_local_weights(tmp_path):
    tower = create_encoder("timm:test_vit", modality="image", pooling="cls").eval()
    pixels = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        feats = tower.model.forward_features(pixels)
        torch.testing.assert_close(tower(pixels), feats[:, 0])  # forward_features ends with the final norm
    mean = create_encoder("timm:test_vit", modality="image", pooling="mean").eval()
    assert mean.model.global_pool == "avg"
    save_file({k: v.contiguous() for k, v in tower.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    copy = create_encoder("timm:test_vit", modality="image", pooling="cls", weights=str(tmp_path / "w.safetensors")).eval()
    with torch.no_grad():
        torch.testing.assert_close(copy(pixels), tower(pixels), rtol=0, atol=0)


def test_torchvision_tower_drops_classifier_and_loads_weights(tmp_path):
    tower = create_encoder("torchvision:resnet18", modality="image").eval()
    assert tower.output_dim == 512 and len(tower.blocks()) == 4
    pixels = torch.randn(2, 3, 64, 64)
    torch.save({"state_dict": tower.model.state_dict()}, tmp_path / "w.pth")
    copy = create_encoder("torchvision:resnet18", modality="image", weights=str(tmp_path / "w.pth")).eval()
    with torch.no_grad():
        y = tower(pixels)
        torch.testing.assert_close(copy(pixels), y, rtol=0, atol=0)
        m = tower.model  # naive reference: the ResNet forward up to the pooled features
        x = m.maxpool(m.relu(m.bn1(m.conv1(pixels))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        torch.testing.assert_close(y, x.mean(dim=(2, 3)))


def test_preprocessing_comes_from_the_tower(tower_dirs):
    cfg = resolve_model_config(ModelConfig(image_encoder=f"hf:{tower_dirs['vit']}"))
    assert (cfg.image_size, cfg.image_mean, cfg.image_std) == (32, [0.5] * 3, [0.25] * 3)
    cfg = resolve_model_config(ModelConfig(image_encoder="timm:test_vit"))
    assert cfg.image_size == 160 and cfg.image_mean == [0.5, 0.5, 0.5]
    cfg = resolve_model_config(ModelConfig(image_encoder="torchvision:resnet18"))
    assert cfg.image_size == 224 and cfg.image_mean == pytest.approx([0.485, 0.456, 0.406])
    kept = resolve_model_config(ModelConfig(image_encoder="torchvision:resnet18", preprocess_from_tower=False))
    assert kept.image_size == 64
    assert resolve_model_config(ModelConfig()) == ModelConfig()  # built-in towers: the config decides


def test_hf_tokenizer_pads_truncates_and_counts(tower_dirs):
    tok = HFTokenizer(tower_dirs["bert"], 8)
    out = tok(["ab", "a much longer caption than eight tokens"])
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].shape == (2, 8) and out["input_ids"].dtype == torch.long
    assert out["attention_mask"].tolist()[0] == [1, 1, 1, 1, 0, 0, 0, 0]  # start, a, b, end, then padding
    assert out["input_ids"][0, 4:].tolist() == [tok.pad_token_id] * 4
    assert out["input_ids"][1, -1] == tok.eot_token_id == 258  # truncation keeps the end token
    assert (tok.num_texts, tok.num_truncated) == (2, 1)
    assert tok.vocab_size == 259
    assert tok.decode(out)[0] == "ab"


def test_hf_tower_gradient_checkpointing_same_gradients(tower_dirs):
    tower = create_encoder(f"hf:{tower_dirs['vit']}", modality="image").train()
    tower.model.config.hidden_dropout_prob = tower.model.config.attention_probs_dropout_prob = 0.0
    for m in tower.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    pixels = torch.randn(2, 3, 32, 32)

    def grads():
        tower.zero_grad()
        tower(pixels).square().sum().backward()
        return {n: p.grad.clone() for n, p in tower.named_parameters() if p.grad is not None}

    plain = grads()
    tower.gradient_checkpointing_enable()
    assert getattr(tower.model, "is_activation_checkpointing", None) or tower.model.is_gradient_checkpointing
    for n, g in grads().items():
        torch.testing.assert_close(g, plain[n])


def test_checkpoint_rebuilds_hf_towers_without_their_directories(tmp_path):
    import contrastive
    from contrastive.training.recipe import train

    vit = save_tower("vit", tmp_path / "vit")
    bert = save_tower("bert", tmp_path / "bert")
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [
        f"model.image_encoder=hf:{vit}", f"model.text_encoder=hf:{bert}", f"model.tokenizer=hf:{bert}",
        "model.context_length=32", "model.embed_dim=16", "train.batch_size=8", "train.max_steps=2", "data.val=",
        "data.num_workers=0", "train.progress_bar=false", f"train.output_dir={tmp_path}", "train.run_name=run",
        "finetune.image.unlocked_layers=1", "finetune.text.lock=true"])
    run = train(cfg)
    assert load_config(run / "config.yaml").model.image_size == 32  # from the tower's image processor
    model, preprocess, tokenizer = contrastive.load(run)
    pixels, captions = torch.randn(2, 3, 32, 32), ["a red circle", "a blue star"]
    with torch.no_grad():
        before = model.encode_image(pixels), model.encode_text(tokenizer(captions))
    shutil.rmtree(vit)
    shutil.rmtree(bert)
    again, _, tok2 = contrastive.load(run)
    with torch.no_grad():
        torch.testing.assert_close(again.encode_image(pixels), before[0], rtol=0, atol=0)
        torch.testing.assert_close(again.encode_text(tok2(captions)), before[1], rtol=0, atol=0)


@pytest.mark.parametrize("kind,pooling", [(k, p) for k in TEXT for p in ("pooler", "mean", "eot")])
def test_hf_text_towers_same_features_on_trimmed_padding(tower_dirs, kind, pooling):
    from contrastive.data.samples import trim_padding

    tok = HFTokenizer(tower_dirs[kind], 40)
    tower = create_encoder(f"hf:{tower_dirs[kind]}", modality="text", pooling=pooling, eot_token_id=tok.eot_token_id).eval()
    batch = tok(["a red circle", "two blue squares"])
    trimmed = trim_padding(batch, tok.pad_token_id)
    assert trimmed["input_ids"].shape[1] < batch["input_ids"].shape[1]  # padding really went
    with torch.no_grad():
        torch.testing.assert_close(tower(trimmed), tower(batch), rtol=1e-5, atol=1e-6)
