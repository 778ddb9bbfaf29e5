"""Non-finite steps are skipped exactly (weights and optimizer state as if the batch never came), counted, and a run
of them stops training with a message naming the steps and the last good checkpoint."""

import copy

import pytest
import torch

from contrastive.config import load_config
from contrastive.model import create_model
from contrastive.training.guards import NonFiniteGuard, check_inputs
from contrastive.errors import DataError, RunError
from contrastive.losses.batch import BatchLoss
from contrastive.training.recipe import train
from contrastive.training.optim import build_optimizer, param_groups
from contrastive.training.step import train_step
from tests.conftest import ROOT
from tests.helpers.towers import TINY

SMALL = TINY


def small_setup(fused: bool):
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [*SMALL, f"optim.fused={fused}", "model.tokenizer=byte",
                                                          "model.context_length=64"])
    model, tokenizer = create_model(cfg.model)
    return cfg, model, tokenizer


def make_batch(tokenizer, seed: int, poison: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(4, 3, 64, 64, generator=g)  # (B, 3, S, S)
    if poison:
        pixels[1, 0, 3, 3] = float("nan")
    captions = [f"caption {seed} {i}" for i in range(4)]
    return {"pixels": pixels, "tokens": tokenizer(captions), "image_ids": torch.arange(4), "text_ids": torch.arange(4),
            "captions": captions}


def fused_adamw_on_cpu() -> bool:
    try:
        p = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.ones(2)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except (RuntimeError, TypeError):
        return False


def run_steps(cfg, model, batches, scaler):
    device = torch.device("cpu")
    if cfg.optim.fused:  # build_optimizer fuses only on CUDA; the CPU kernel takes the same device-side skip
        opt = torch.optim.AdamW(param_groups(model, cfg.optim), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                eps=cfg.optim.eps, fused=True)
    else:
        opt = build_optimizer(model, cfg.optim)
    losses = [train_step(model, b, opt, scaler, BatchLoss(cfg.loss), device, precision=cfg.train.precision,
                         grad_clip=cfg.optim.grad_clip, micro_batch_size=cfg.train.micro_batch_size)[0] for b in batches]
    return opt, losses


@pytest.mark.parametrize("mode", ["plain", "fused", "scaler"])
def test_nonfinite_step_is_skipped_exactly(mode):
    if mode == "fused" and not fused_adamw_on_cpu():
        pytest.skip("fused AdamW is not available on this CPU build")
    cfg, model, tokenizer = small_setup(fused=mode == "fused")
    reference = copy.deepcopy(model)
    good1, good2 = make_batch(tokenizer, 1), make_batch(tokenizer, 2)
    bad = make_batch(tokenizer, 3, poison=True)

    def scaler():
        # fp32 loss scaling by powers of two is exact, so the scaler path can be compared bit for bit
        return torch.amp.GradScaler("cpu", enabled=mode == "scaler", init_scale=2.0**8, growth_interval=1000)

    s_ref, s_bad = scaler(), scaler()
    opt_ref, _ = run_steps(cfg, reference, [good1, good2], s_ref)
    opt_bad, losses = run_steps(cfg, model, [good1, bad, good2], s_bad)
    assert not torch.isfinite(losses[1]) and torch.isfinite(losses[2])
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    st_ref, st_bad = opt_ref.state_dict()["state"], opt_bad.state_dict()["state"]
    for i in st_ref:
        for k in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(st_bad[i][k], st_ref[i][k], rtol=0, atol=0)
    if mode == "scaler":  # the overflow halved the scale once, and nothing else changed
        assert s_bad.get_scale() == s_ref.get_scale() / 2 and s_bad.get_scale() > 0


def test_guard_counts_streaks_without_syncing_each_step():
    guard = NonFiniteGuard(max_in_row=3, device=torch.device("cpu"))
    flags = [True, False, False, True, False, False, False, True]
    for step, ok in enumerate(flags, 1):
        guard.record(torch.tensor(ok), step)
    assert guard.counts() == (5, 0)
    message = guard.failure(last_good=None)
    assert message is not None and "steps 5-7" in message and "\n" not in message


def test_guard_quiet_below_limit():
    guard = NonFiniteGuard(max_in_row=3, device=torch.device("cpu"), total=4, streak=1)
    guard.record(torch.tensor(False), 10)
    assert guard.failure(None) is None and guard.counts() == (5, 2)


def test_diverging_run_stops_naming_step_and_last_good_checkpoint(tmp_path):
    # lr 1e30: the first update sends the weights to ~1e30 and every later forward overflows to NaN/inf
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [
        *SMALL, "data.num_workers=0", "train.progress_bar=false", "train.log_every_n_steps=1", "data.val=",
        "train.batch_size=16", "train.max_steps=30", "train.save_every_n_steps=1", "train.keep_checkpoints=50",
        "optim.lr=1e30", "optim.warmup_steps=0", "train.max_nan_steps=3",
        f"train.output_dir={tmp_path}", "train.run_name=run"])
    with pytest.raises(RunError) as e:
        train(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "3 steps in a row" in msg
    first = int(msg.split("(steps ")[1].split("-")[0])
    assert f"step_{first - 1:08d}" in msg  # the checkpoint written just before the streak began
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert checkpoints[-1] == f"step_{first + 1:08d}"  # stopped at the check of the third bad step, before saving it


def test_missing_data_is_reported_before_a_run_dir_exists(tmp_path):
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [f"data.train={tmp_path}/nope.csv",
                                                          f"train.output_dir={tmp_path}/runs", "train.run_name=r"])
    with pytest.raises(DataError, match="nope.csv"):
        check_inputs(cfg)
    with pytest.raises(DataError):
        train(cfg)
    assert not (tmp_path / "runs" / "r").exists()
