import pytest
import math

import torch

from contrastive.encoders import create_encoder
from contrastive.model import MAX_LOG_SCALE, ContrastiveModel, ContrastiveOutput


def tiny_model(**kw) -> ContrastiveModel:
    return ContrastiveModel(create_encoder("vit_tiny", layers=1), create_encoder("text_tiny", layers=1), 32, **kw)


def test_forward_returns_one_type_with_logits():
    m = tiny_model()
    images = torch.randn(3, 3, 64, 64)
    tokens = torch.randint(0, 256, (5, 16))
    tokens[:, -1] = m.text_encoder.eot_token_id
    out = m(images, tokens)
    assert isinstance(out, ContrastiveOutput)
    assert out.image_embeds.shape == (3, 32) and out.text_embeds.shape == (5, 32)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(3))
    assert out.logits_per_image.shape == (3, 5)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    expected = math.exp(math.log(1 / 0.07)) * out.image_embeds @ out.text_embeds.T
    torch.testing.assert_close(out.logits_per_image, expected)
    assert out.logit_bias is None


def test_bias_and_unnormalised():
    m = tiny_model(init_logit_scale=math.log(10), init_logit_bias=-10.0)
    images = torch.randn(2, 3, 64, 64)
    tokens = torch.randint(0, 256, (2, 8))
    out = m(images, tokens)
    torch.testing.assert_close(out.logits_per_image, 10 * out.image_embeds @ out.text_embeds.T - 10)
    raw = m.encode_image(images, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))


def test_logit_scale_init_and_clamp():
    m = tiny_model()
    assert abs(m.logit_scale.item() - math.log(1 / 0.07)) < 1e-6
    with torch.no_grad():
        m.logit_scale.fill_(10.0)
    m.clamp_logit_scale_()
    assert m.logit_scale.item() == pytest.approx(MAX_LOG_SCALE, abs=1e-6)
    with torch.no_grad():
        m.logit_scale.fill_(-3.0)
    m.clamp_logit_scale_()
    assert m.logit_scale.item() == 0.0
