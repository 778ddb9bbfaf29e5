"""The moving average of the weights against a plain per-element reference; its state continues exactly."""

import pytest
import torch
from torch import nn

from contrastive.training.ema import EMA, warmup_decay


def small_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Linear(7, 3))
    return model


def perturb(model: nn.Module, generator: torch.Generator) -> None:
    """What an optimizer step and a BatchNorm forward would do: move every weight, advance the statistics."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator))
        bn = model[1]
        bn.running_mean.add_(torch.randn(bn.running_mean.shape, generator=generator))
        bn.num_batches_tracked += 1


def naive_ema(history: list[dict[str, torch.Tensor]], decay: float, every: int, warmup: bool) -> dict[str, list[float]]:
    """Element by element in Python floats: start from the initial weights; at every `every`-th step n-th update
    uses d = min(decay, (1 + n) / (10 + n)) (or decay): shadow = d * shadow + (1 - d) * weight."""
    shadow = {k: v.flatten().tolist() for k, v in history[0].items()}
    n = 0
    for step, weights in enumerate(history[1:], start=1):
        if step % every:
            continue
        d = min(decay, (1 + n) / (10 + n)) if warmup else decay
        for k, v in weights.items():
            values = v.flatten().tolist()
            if v.is_floating_point():
                shadow[k] = [d * s + (1 - d) * w for s, w in zip(shadow[k], values)]
            else:
                shadow[k] = values
        n += 1
    return shadow


@pytest.mark.parametrize("decay,every,warmup", [(0.9, 1, True), (0.99, 2, True), (0.5, 1, False), (0.0, 3, False)])
def test_matches_naive_reference(decay, every, warmup):
    g = torch.Generator().manual_seed(1)
    model = small_model()
    ema = EMA(model, decay, every=every, warmup=warmup)
    history = [{k: v.clone() for k, v in model.state_dict().items()}]
    for step in range(1, 13):
        perturb(model, g)
        ema.update(model, step)
        history.append({k: v.clone() for k, v in model.state_dict().items()})
    expected = naive_ema(history, decay, every, warmup)
    assert ema.updates == 12 // every
    for k, v in ema.state_dict_for_model().items():
        ref = torch.tensor(expected[k], dtype=torch.float64).reshape(v.shape)
        if v.is_floating_point():
            torch.testing.assert_close(v.double(), ref, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(v, ref.to(v.dtype)), k  # integer buffers follow the model
    # the average lags the weights: it is neither the first nor the last weights
    w = ema.state_dict_for_model()["0.weight"]
    if decay > 0:
        assert not torch.allclose(w, model.state_dict()["0.weight"])


def test_warmup_schedule():
    assert [round(warmup_decay(0.999, n), 4) for n in range(3)] == [round(1 / 10, 4), round(2 / 11, 4), round(3 / 12, 4)]
    assert warmup_decay(0.9, 10_000) == 0.9  # the configured decay takes over
    assert warmup_decay(0.9, 0, warmup=False) == 0.9


def test_state_dict_continues_bitwise():
    """An EMA saved after 5 updates and restored into a fresh one ends, after 5 more, bit for bit where an
    uninterrupted one ends (the crash-resume guarantee for the EMA)."""
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a_model, b_model = small_model(), small_model()
    b_model.load_state_dict(a_model.state_dict())
    a = EMA(a_model, 0.95)
    b = EMA(b_model, 0.95)
    for step in range(1, 6):
        perturb(a_model, g1)
        a.update(a_model, step)
        perturb(b_model, g2)
        b.update(b_model, step)
    saved = {"shadow": {k: v.clone() for k, v in b.state_dict()["shadow"].items()}, "updates": b.state_dict()["updates"]}
    torch.manual_seed(123)
    c = EMA(small_model(), 0.95)  # fresh weights: everything must come from the saved state
    c.load_state_dict(saved)
    for step in range(6, 11):
        perturb(a_model, g1)
        a.update(a_model, step)
        perturb(b_model, g2)
        c.update(b_model, step)
    assert c.updates == a.updates == 10
    for k, v in a.state_dict_for_model().items():
        assert torch.equal(v, c.state_dict_for_model()[k]), k


def test_applied_to_restores_trained_weights():
    g = torch.Generator().manual_seed(0)
    model = small_model()
    ema = EMA(model, 0.9)
    for step in range(1, 4):
        perturb(model, g)
        ema.update(model, step)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.applied_to(model):
        for k, v in model.state_dict().items():
            assert torch.equal(v, ema.state_dict_for_model()[k]), k
    for k, v in model.state_dict().items():
        assert torch.equal(v, trained[k]), k


def test_bad_settings():
    with pytest.raises(ValueError, match="decay"):
        EMA(small_model(), 1.0)
    with pytest.raises(ValueError, match="period"):
        EMA(small_model(), 0.9, every=0)
    with pytest.raises(KeyError):
        EMA(small_model(), 0.9).load_state_dict({"shadow": {"x": torch.zeros(1)}, "updates": 0})
