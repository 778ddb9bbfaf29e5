"""Gradient caching against the plain full-batch backward: same loss, same parameter gradients."""

import pytest
import torch
from torch import nn

from contrastive.config import LossConfig, ModelConfig
from contrastive.distributed import DistInfo
from contrastive.model import create_model, ContrastiveModel
from contrastive.losses import LOSSES
from contrastive.losses.batch import global_batch_loss
from contrastive.training.step import gradcache_backward, split_batch
from tests.helpers.grads import assert_grads_close

TINY = {"layers": 1, "width": 32, "heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each (conftest)


def tiny_model(bias: float | None = None) -> ContrastiveModel:
    cfg = ModelConfig(image_encoder_args=TINY, text_encoder_args=TINY, embed_dim=16, image_size=16,
                      context_length=12, init_logit_bias=bias, tokenizer="byte")
    return create_model(cfg)[0]


def inputs(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = torch.randn(b, 3, 16, 16)
    tokens = torch.randint(3, 200, (b, 12))
    tokens[:, -1] = 257  # an end-of-text position the tower can pool at
    return pixels, tokens


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def plain_backward(model, pixels, tokens, loss_fn, autocast=None):
    with autocast() if autocast else torch.autocast("cpu", enabled=False):
        out = model(pixels, tokens)
        loss = loss_fn(out.image_embeds, out.text_embeds, out.logit_scale, out.logit_bias)
    loss.backward()
    return loss.detach()



def assert_gradcache_matches_plain(model, pixels, tokens, loss_fn, micro: int) -> None:
    """Gradient caching in micro-batches of `micro` gives the full batch's loss and gradients."""
    ref_loss = plain_backward(model, pixels, tokens, loss_fn)
    ref = grads(model)
    loss = gradcache_backward(model, pixels, tokens, loss_fn, micro)
    got = grads(model)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert_grads_close(got, ref)

@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("b,micro", [(8, 1), (8, 3), (8, 8), (13, 4), (13, 5)])
def test_equals_full_batch_fp32(name, b, micro):
    model = tiny_model(bias=-10.0 if name == "siglip" else None)
    pixels, tokens = inputs(b)

    def loss_fn(i, t, s, bias):
        return LOSSES[name](i, t, s, bias)

    assert_gradcache_matches_plain(model, pixels, tokens, loss_fn, micro)


def test_duplicate_aware_tiled_loss_through_the_trainer_loss():
    """The trainer's loss (duplicate-aware ids, tiled chunks) is just another loss_fn for gradient caching."""
    model = tiny_model()
    pixels, tokens = inputs(10)
    ids = torch.tensor([0, 1, 2, 1, 3, 4, 5, 6, 2, 7])
    cfg = LossConfig(name="clip", duplicate_aware=True, chunk_size=3)

    def loss_fn(i, t, s, bias):
        return global_batch_loss(i, t, s, bias, ids, ids, cfg, DistInfo())

    assert_gradcache_matches_plain(model, pixels, tokens, loss_fn, 4)


def test_bf16_autocast_close_to_plain():
    model = tiny_model()
    pixels, tokens = inputs(12)

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    ref_loss = plain_backward(model, pixels, tokens, LOSSES["clip"], autocast)
    ref = grads(model)
    loss = gradcache_backward(model, pixels, tokens, LOSSES["clip"], 5, autocast=autocast)
    got = grads(model)
    torch.testing.assert_close(loss.float(), ref_loss.float(), rtol=2e-2, atol=2e-2)
    for k in ref:  # bf16 rounds per micro-batch differently: compare whole tensors by relative error
        err = (got[k] - ref[k]).norm() / ref[k].norm().clamp_min(1e-12)
        assert err < 5e-2, f"{k}: relative error {err:.3g}"
    assert all(g.dtype == torch.float32 for g in got.values())  # fp32 master gradients


def test_scaled_loss_scales_every_gradient():
    """A GradScaler's `scale` applied to the loss reaches every parameter gradient (then `unscale_` undoes it)."""
    model = tiny_model()
    pixels, tokens = inputs(6)
    plain_backward(model, pixels, tokens, LOSSES["clip"])
    ref = grads(model)
    gradcache_backward(model, pixels, tokens, LOSSES["clip"], 4, scale_loss=lambda loss: loss * 1024.0)
    got = grads(model)
    assert_grads_close({k: g / 1024.0 for k, g in got.items()}, ref)


class DropoutTower(nn.Module):
    """A tower whose output depends on dropout masks, to check that re-embedding replays the same masks."""

    def __init__(self, dim_in: int, output_dim: int = 24) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.net = nn.Sequential(nn.Linear(dim_in, 32), nn.GELU(), nn.Dropout(0.5), nn.Linear(32, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1).float())  # (B, output_dim)


def test_dropout_masks_replayed_per_micro_batch():
    model = ContrastiveModel(DropoutTower(3 * 4 * 4), DropoutTower(12), embed_dim=8)
    model.train()
    pixels, tokens = torch.randn(9, 3, 4, 4), torch.randn(9, 12)
    micro = 4

    # reference: the same micro-batch forwards (same RNG stream), kept in one autograd graph
    torch.manual_seed(123)
    outs = [model(px, tk) for px, tk in zip(split_batch(pixels, micro), split_batch(tokens, micro))]
    image = torch.cat([o.image_embeds for o in outs])
    text = torch.cat([o.text_embeds for o in outs])
    ref_loss = LOSSES["clip"](image, text, outs[-1].logit_scale)
    ref_loss.backward()
    ref = grads(model)
    rng_after_ref = torch.get_rng_state()

    torch.manual_seed(123)
    loss = gradcache_backward(model, pixels, tokens, LOSSES["clip"], micro)
    got = grads(model)
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=1e-6)
    assert_grads_close(got, ref)
    # the RNG continues as if the towers had run once
    assert torch.equal(torch.get_rng_state(), rng_after_ref)


def test_split_batch_handles_token_dicts_and_remainders():
    tokens = {"input_ids": torch.arange(14).view(7, 2), "attention_mask": torch.ones(7, 2)}
    parts = split_batch(tokens, 3)
    assert [p["input_ids"].shape[0] for p in parts] == [3, 3, 1]
    torch.testing.assert_close(torch.cat([p["input_ids"] for p in parts]), tokens["input_ids"])
