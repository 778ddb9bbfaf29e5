import pytest
import torch

from contrastive.encoders import create_encoder, encoder_modality, list_encoders

BIG = {"vit_b32", "vit_b16", "vit_l14", "vit_small_p16", "text_small", "text_b", "text_l"}


def small_overrides(name: str) -> dict:
    # the large presets are checked at full structure but reduced depth, so the test stays fast on CPU
    return {"layers": 1} if name in BIG else {}


@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_shapes_and_gradients(name):
    enc = create_encoder(name, **small_overrides(name))
    B = 2
    if encoder_modality(name) == "image":
        x = torch.randn(B, 3, enc.image_size, enc.image_size)
    else:
        x = torch.randint(0, enc.vocab_size - 1, (B, enc.context_length))
        x[:, 5] = enc.eot_token_id
    y = enc(x)
    assert y.shape == (B, enc.output_dim)
    assert torch.isfinite(y).all()
    y.square().sum().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_presets_have_clip_sizes():
    b32 = create_encoder("vit_b32", layers=1)
    assert (b32.width, b32.patch_size, b32.image_size) == (768, 32, 224)
    l14 = create_encoder("vit_l14", layers=1)
    assert (l14.width, l14.patch_size, l14.heads) == (1024, 14, 16)
    assert create_encoder("vit_b16").num_layers == 12


def test_text_pools_at_first_eot_and_ignores_padding():
    enc = create_encoder("text_tiny").eval()
    eot, pad = enc.eot_token_id, enc.pad_token_id
    a = torch.tensor([[257, 10, 11, eot, pad, pad, pad, pad]])
    b = torch.tensor([[257, 10, 11, eot, 40, 41, 42, 43]])  # different tokens after EOT: causal mask hides them
    torch.testing.assert_close(enc(a), enc(b))
    c = torch.tensor([[257, 10, 12, eot, pad, pad, pad, pad]])
    assert not torch.allclose(enc(a), enc(c))


def test_unknown_encoder_suggests():
    with pytest.raises(KeyError, match="vit_tiny"):
        create_encoder("vit_tiyn")
    with pytest.raises(KeyError, match="not a text encoder"):
        create_encoder("vit_tiny", modality="text")


def test_state_dict_uses_transformers_clip_names():
    keys = set(create_encoder("vit_tiny").state_dict())
    assert {"embeddings.patch_embedding.weight", "embeddings.class_embedding", "embeddings.position_embedding.weight",
            "pre_layrnorm.weight", "encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.0.mlp.fc1.bias",
            "encoder.layers.0.layer_norm1.weight", "post_layernorm.bias"} <= keys
    tkeys = set(create_encoder("text_tiny").state_dict())
    assert {"embeddings.token_embedding.weight", "embeddings.position_embedding.weight",
            "encoder.layers.3.layer_norm2.weight", "final_layer_norm.weight"} <= tkeys


def test_patch_dropout_keeps_the_share_asked_in_training_only():
    from contrastive.encoders.vit import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=2, patch_dropout=0.5)  # 16 patches
    x = torch.randn(3, 17, 32)  # (B, 1 + N, C)
    vit.train()
    kept = vit.keep_patches(x)
    assert kept.shape == (3, 9, 32)  # the class token and 8 of 16 patches
    assert torch.equal(kept[:, 0], x[:, 0])
    for b in range(3):  # every kept row is one of that sample's own patches, none twice
        idx = [int((x[b, 1:] == row).all(-1).nonzero()) for row in kept[b, 1:]]
        assert len(set(idx)) == 8
    assert not torch.equal(vit.keep_patches(x)[:, 1:], kept[:, 1:])  # a new draw each call
    vit.eval()
    assert torch.equal(vit.keep_patches(x), x)
    pixels = torch.randn(2, 3, 32, 32)
    full = VisionTransformer(image_size=32, patch_size=8, width=32, layers=1, heads=2)
    full.load_state_dict(vit.state_dict())
    torch.testing.assert_close(vit(pixels), full.eval()(pixels))  # evaluation untouched


def test_patch_dropout_out_of_range_and_on_other_towers_is_refused():
    from contrastive.errors import ConfigError
    from contrastive.config import ModelConfig, load_config
    from contrastive.model import create_model

    with pytest.raises(ConfigError, match="patch_dropout"):
        load_config(None, ["model.patch_dropout=1.0"])
    with pytest.raises(ConfigError, match="built-in ViTs"):
        create_model(ModelConfig(image_encoder="torchvision:resnet18", patch_dropout=0.5, tokenizer="byte",
                                 context_length=16))
