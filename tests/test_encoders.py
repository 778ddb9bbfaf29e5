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
