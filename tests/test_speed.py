"""The speed switches change how the step runs, never what it computes; the benchmark's measurements are sound."""

import copy
import itertools
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from contrastive.encoders.transformer import Attention, Encoder
from contrastive.encoders.text import TextTransformer
from contrastive.encoders.vit import VisionTransformer
from contrastive.losses.batch import BatchLoss
from contrastive.model import create_model
from contrastive.config import ModelConfig, load_config
from contrastive.encoders.linear import Linear
from contrastive.training.step import compute_loss, step_loss_fn
from tests.conftest import ROOT

from scripts import speedbench as B

# a spec small enough for many steps on a busy CPU
MICRO = B.BenchSpec(image_size=16, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2, text_width=32,
                    text_layers=2, text_heads=2, context_length=12, vocab_size=50, embed_dim=16, batch_size=6)


@pytest.mark.parametrize("causal", [False, True])
def test_fused_qkv_matches_separate_projections(causal):
    torch.manual_seed(0)
    unfused = Attention(24, 3, fused_qkv=False)
    fused_attn = Attention(24, 3, fused_qkv=True)
    fused_attn.load_state_dict(unfused.state_dict())
    x = torch.randn(2, 7, 24, requires_grad=True)
    grads = {}
    outs = {}
    for fused, attn in ((False, unfused), (True, fused_attn)):
        attn.zero_grad()
        x.grad = None
        y = attn(x, causal=causal)
        (y * torch.randn_like(y, generator=torch.Generator().manual_seed(1))).sum().backward()
        outs[fused] = y.detach()
        grads[fused] = [x.grad.clone()] + [p.grad.clone() for p in attn.parameters()]
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-5, atol=1e-6)
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_qkv_keeps_state_dict_names():
    before = B.build_toolkit_model(MICRO, fused_qkv=False).state_dict()
    fused = B.build_toolkit_model(MICRO, fused_qkv=True)
    layers = [m for m in fused.modules() if isinstance(m, Attention)]
    assert len(layers) == MICRO.vision_layers + MICRO.text_layers and all(m.fused_qkv for m in layers)
    after = fused.state_dict()
    assert set(before) == set(after) and all(before[k].shape == after[k].shape for k in before)
    assert "image_encoder.encoder.layers.0.self_attn.q_proj.weight" in after
    assert not any("qkv" in k for k in after)
    fused.load_state_dict(before)  # the weights of one load into the other


def test_fused_qkv_runs_unfused_around_replaced_projections():
    class Scaled(nn.Module):  # stands in for an adapter wrapping a projection
        def __init__(self, inner: nn.Linear) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return 2 * self.inner(x)

    plain = Attention(16, 2, fused_qkv=False)
    attn = Attention(16, 2, fused_qkv=True)
    attn.load_state_dict(plain.state_dict())
    x = torch.randn(3, 5, 16)
    plain.v_proj, attn.v_proj = Scaled(plain.v_proj), Scaled(attn.v_proj)
    torch.testing.assert_close(attn(x), plain(x))


def _tower_outputs(tower: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    tower.zero_grad()
    y = tower(inputs)  # (B, C)
    (y * torch.randn(y.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
    return y.detach(), [p.grad.clone() for p in tower.parameters()]


@pytest.mark.parametrize("grad_checkpointing", [False, True])
@pytest.mark.parametrize("fused_qkv", [False, True])
def test_pooled_last_block_equals_full_sequence(fused_qkv, grad_checkpointing):
    def towers(pooled: bool) -> tuple[nn.Module, nn.Module]:
        torch.manual_seed(0)  # the same weights either way: the switch builds no parameter
        switches = dict(fused_qkv=fused_qkv, pooled_last_block=pooled)
        return (VisionTransformer(image_size=32, patch_size=8, width=48, layers=3, heads=4, **switches),
                TextTransformer(vocab_size=40, context_length=10, width=48, layers=3, heads=4, **switches))

    tokens = torch.randint(1, 39, (6, 10))
    tokens[0, 3] = tokens[1, 9] = tokens[2, 0] = 39  # end-of-text early, last, first
    tokens[3, 5] = tokens[3, 7] = 39  # two: pooled at the first
    # row 4 and 5 have none: pooled at the last token
    pixels = torch.randn(6, 3, 32, 32)
    for full_tower, tower, inputs in zip(towers(False), towers(True), (pixels, tokens)):
        assert not full_tower.encoder.pooled_last_block and tower.encoder.pooled_last_block
        torch.testing.assert_close(full_tower.state_dict(), tower.state_dict(), rtol=0, atol=0)
        full_tower.encoder.grad_checkpointing = tower.encoder.grad_checkpointing = grad_checkpointing
        y_full, g_full = _tower_outputs(full_tower, inputs)
        y_pooled, g_pooled = _tower_outputs(tower, inputs)
        torch.testing.assert_close(y_pooled, y_full, rtol=1e-5, atol=1e-6)
        for (name, p), a, b in zip(tower.named_parameters(), g_pooled, g_full):
            if name.endswith("k_proj.bias"):  # its true gradient is 0 (softmax ignores a shift shared by all keys)
                assert a.abs().max() < 1e-5 and b.abs().max() < 1e-5
                continue
            # relative to the largest entry: sums over many rows come out in another order
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item(), msg=name)
            assert b.abs().max() > 0, name  # every parameter (the last block's too) gets a gradient


def test_switches_reach_the_towers_through_the_builder():
    cfg = load_config(None, ["model.fused_qkv=false", "model.pooled_last_block=false", "model.onednn_linear=false",
                             "model.tokenizer=byte", "model.context_length=16"])
    assert cfg.model.fused_qkv is False and cfg.model.pooled_last_block is False and cfg.model.onednn_linear is False
    torch.manual_seed(0)
    plain, tokenizer = create_model(cfg.model)
    torch.manual_seed(0)
    fast, _ = create_model(ModelConfig(tokenizer="byte", context_length=16))
    for model, on in ((plain, False), (fast, True)):
        attention = [m.fused_qkv for m in model.modules() if isinstance(m, Attention)]
        encoders = [m.pooled_last_block for m in model.modules() if isinstance(m, Encoder)]
        linears = [m.onednn for m in model.modules() if isinstance(m, Linear)]
        assert len(attention) == 8 and len(encoders) == 2  # vit_tiny and text_tiny: 4 blocks each
        assert len(linears) == 8 * 6  # q, k, v, out, fc1, fc2 of each block
        assert set(attention) == set(encoders) == set(linears) == {on}
    # same parameters, same names, same features
    torch.testing.assert_close(fast.state_dict(), plain.state_dict(), rtol=0, atol=0)
    pixels = torch.randn(4, 3, cfg.model.image_size, cfg.model.image_size)
    tokens = tokenizer(["a red square", "two blue circles", "", "a green triangle on the left"])
    with torch.no_grad():
        torch.testing.assert_close(fast.encode_image(pixels), plain.encode_image(pixels), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fast.encode_text(tokens), plain.encode_text(tokens), rtol=1e-5, atol=1e-6)


def test_encoder_arguments_set_a_switch_for_one_tower():
    cfg = ModelConfig(tokenizer="byte", context_length=16, image_encoder_args={"pooled_last_block": False})
    model, _ = create_model(cfg)
    assert model.image_encoder.encoder.pooled_last_block is False
    assert model.text_encoder.encoder.pooled_last_block is True


def test_switches_live_in_the_model_section_only():
    from contrastive.config import config_from_dict
    from contrastive.errors import ConfigError

    assert config_from_dict({"model": {"fused_qkv": False}}).model.fused_qkv is False
    with pytest.raises(ConfigError, match="unknown config key 'train.fused_qkv'"):
        config_from_dict({"train": {"fused_qkv": True}})


def test_pooled_last_block_skips_work():
    batch = B.synthetic_batch(MICRO, torch.device("cpu"))
    full = B.step_flops(B.toolkit_contender("x", MICRO, torch.device("cpu"), "fp32", B.VARIANTS["plain"]), batch,
                        torch.device("cpu"))
    pooled = B.step_flops(B.toolkit_contender("x", MICRO, torch.device("cpu"), "fp32", B.VARIANTS["+pooled_last_block"]),
                          batch, torch.device("cpu"))
    # most of one block of each tower's two is skipped: 20-50% of the step here (1/layers of each tower at most)
    assert 0.5 * full < pooled < 0.8 * full


def test_trim_padding_skips_work_only_when_captions_are_short():
    cpu = torch.device("cpu")
    short = B.synthetic_batch(MICRO, cpu, caption_lengths=(2, 6))
    full_length = B.synthetic_batch(MICRO, cpu)
    assert full_length["trim_length"] == MICRO.context_length
    counts = {}
    for name in ("plain", "+trim_padding"):
        for label, batch in (("short", short), ("full", full_length)):
            counts[name, label] = B.step_flops(B.toolkit_contender("x", MICRO, cpu, "fp32", B.VARIANTS[name]), batch, cpu)
    assert counts["+trim_padding", "full"] == counts["plain", "full"] == counts["plain", "short"]
    assert counts["+trim_padding", "short"] < counts["plain", "short"]


def _run_steps(options: B.StepOptions, batches: list[dict], steps: int = 3):
    torch.manual_seed(0)
    c = B.toolkit_contender("x", MICRO, torch.device("cpu"), "fp32", options)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [c.step(b, scaler) for b in batches[:steps]]
    return torch.stack(losses), c.model.state_dict(), c.optimizer


def test_optimised_step_equals_plain_step():
    # captions of 2-6 tokens in a context of 12: trimmed variants see 8 columns, the others 12
    batches = [B.synthetic_batch(MICRO, torch.device("cpu"), seed=s, caption_lengths=(2, 6)) for s in range(3)]
    assert all(b["trim_length"] == 8 for b in batches)
    plain_losses, plain_weights, plain_opt = _run_steps(B.VARIANTS["plain"], batches)
    assert not plain_opt.defaults["fused"] and not plain_opt.defaults["foreach"]
    for name in ("+foreach_adamw", "+fused_adamw", "+fused_qkv", "+pooled_last_block", "+trim_padding",
                 "+onednn_linear", "default-onednn_linear", "default+grad_ckpt", "default"):
        losses, weights, opt = _run_steps(B.VARIANTS[name], batches)
        torch.testing.assert_close(losses, plain_losses, rtol=1e-5, atol=1e-6)
        for k in plain_weights:
            if k.endswith("k_proj.bias"):
                # its true gradient is 0 and the computed one rounding noise (~1e-8), which Adam's m / sqrt(v)
                # scales up to a full lr-sized step of arbitrary sign in every variant: no equality to check
                continue
            torch.testing.assert_close(weights[k], plain_weights[k], rtol=1e-4, atol=1e-6, msg=f"{name}: {k}")
    assert opt.defaults["fused"]  # the default step really uses the fused kernel on CPU
    # the steps moved the weights: equality above is not equality of untouched initialisations
    torch.manual_seed(0)
    init = B.build_toolkit_model(MICRO).state_dict()
    assert (weights["image_encoder.encoder.layers.0.mlp.fc1.weight"] - init["image_encoder.encoder.layers.0.mlp.fc1.weight"]).abs().max() > 1e-4


@pytest.mark.slow
def test_compiled_loss_equals_eager():
    cfg = B.bench_config(MICRO, "fp32", B.StepOptions())
    torch.manual_seed(0)
    model = B.build_toolkit_model(MICRO)
    twin = copy.deepcopy(model)
    batch = B.synthetic_batch(MICRO, torch.device("cpu"))
    compiled = step_loss_fn(compute_loss, True)
    loss_c = compiled(model, batch, BatchLoss(cfg.loss))
    loss_c.backward()
    loss_e = compute_loss(twin, batch, BatchLoss(cfg.loss))
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        # fused kernels sum in another order: embedding gradients (sums over many rows, up to ~10) differ by ~1e-5
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4, msg=n)


def _forward_flops(spec: B.BenchSpec) -> tuple[int, int, int]:
    """(all, patch convolution, attention) matmul FLOPs of one forward pass of the toolkit model, by hand."""
    Bn, E = spec.batch_size, spec.embed_dim
    attention = 0

    def tower(T, C, L):
        nonlocal attention
        attention += L * 2 * 2 * Bn * T * T * C  # q k^T and p v
        return L * (2 * Bn * T * C * C * 4 + 2 * Bn * T * C * 4 * C * 2) + 2 * Bn * C * E  # qkvo, mlp; projection

    N = (spec.image_size // spec.patch_size) ** 2
    conv = 2 * Bn * N * spec.vision_width * 3 * spec.patch_size**2
    total = tower(N + 1, spec.vision_width, spec.vision_layers) + tower(spec.context_length, spec.text_width, spec.text_layers)
    return total + attention + conv + 2 * Bn * Bn * E, conv, attention


@pytest.mark.parametrize("onednn_linear", [False, True])
@pytest.mark.parametrize("fused_qkv", [False, True])
def test_step_flops_count_cpu_attention(fused_qkv, onednn_linear):
    fwd, conv, attention = _forward_flops(MICRO)
    options = B.StepOptions(fused_qkv=fused_qkv, pooled_last_block=False, onednn_linear=onednn_linear)
    c = B.toolkit_contender("x", MICRO, torch.device("cpu"), "fp32", options)
    # backward = two forwards, except the patch convolution (its input needs no gradient) and attention, whose
    # backward also recomputes the scores (the counter's convention for fused attention kernels)
    expected = 3 * fwd - conv + attention // 2
    assert B.step_flops(c, B.synthetic_batch(MICRO, torch.device("cpu")), torch.device("cpu")) == expected


def test_toolkit_contender_runs_the_default_loss():
    # the step `contrastive train` runs with the shipped recipe: duplicate-aware CLIP loss
    shipped = load_config(str(ROOT / "configs/shapes_tiny.yaml")).loss
    bench = B.bench_config(MICRO, "fp32", B.StepOptions()).loss
    assert (bench.name, bench.duplicate_aware) == (shipped.name, shipped.duplicate_aware) == ("clip", True)


def test_openclip_contender_optimizer_settings():
    pytest.importorskip("open_clip")
    cpu = torch.device("cpu")
    as_its_script = B.openclip_contender("openclip", MICRO, cpu, "fp32").optimizer
    fused = B.openclip_contender("openclip+fused_adamw", MICRO, cpu, "fp32", fused_adamw=True).optimizer
    assert not as_its_script.defaults["fused"] and not as_its_script.defaults["foreach"]  # the per-tensor loop
    assert fused.defaults["fused"]
    assert [g["weight_decay"] for g in fused.param_groups] == [g["weight_decay"] for g in as_its_script.param_groups]


def test_openclip_reads_data_through_its_own_pipeline(repo_root, tmp_path):
    pytest.importorskip("open_clip_train")
    import pandas as pd
    from open_clip_train.data import CsvDataset

    spec = B.dataclasses.replace(MICRO, vocab_size=259, context_length=16, batch_size=4)
    table = repo_root / "data/shapes/train.csv"
    batches = B.openclip_batches(str(table), spec, torch.device("cpu"), num_workers=0, folder=str(tmp_path))
    batch = next(batches)
    assert batch["pixels"].shape == (4, 3, 16, 16) and batch["tokens"].shape == (4, 16)
    assert batch["pixels"].dtype == torch.float32 and "trim_length" not in batch
    # OpenCLIP's dataset over a copy of the table: every row, absolute paths, the same captions
    copy_ = pd.read_csv(tmp_path / "openclip_train.tsv", sep="\t")
    source = pd.read_csv(table)
    assert len(copy_) == len(source) and all(Path(f).is_absolute() and Path(f).is_file() for f in copy_["filepath"][:5])
    assert copy_["title"].tolist() == source["caption"].tolist()
    dataset = CsvDataset(str(tmp_path / "openclip_train.tsv"), lambda im: im, "filepath", "title", sep="\t",
                         tokenizer=lambda texts: texts)
    assert len(dataset) == len(source)
    # the captions are tokenized for the shared vocabulary: each row is one caption of the table
    from contrastive.text.tokenizer import build_tokenizer

    tokenized = {tuple(t.tolist()) for t in build_tokenizer("byte", 16)(source["caption"].tolist())}
    assert all(tuple(row.tolist()) in tokenized for row in batch["tokens"])


def test_grad_checkpointing_contenders_recompute_the_forward():
    pytest.importorskip("open_clip")
    cpu = torch.device("cpu")
    batch = B.synthetic_batch(MICRO, cpu)
    theirs = B.openclip_contender("openclip+fused_adamw+grad_ckpt", MICRO, cpu, "fp32", fused_adamw=True,
                                  grad_checkpointing=True)
    assert theirs.model.transformer.grad_checkpointing and theirs.model.visual.transformer.grad_checkpointing
    ours = B.toolkit_contender("default+grad_ckpt", MICRO, cpu, "fp32", B.VARIANTS["default+grad_ckpt"])
    assert ours.model.image_encoder.encoder.grad_checkpointing and ours.model.text_encoder.encoder.grad_checkpointing
    for ckpt, plain_name in ((theirs, None), (ours, "default")):
        plain = (B.openclip_contender("openclip", MICRO, cpu, "fp32") if plain_name is None
                 else B.toolkit_contender(plain_name, MICRO, cpu, "fp32", B.VARIANTS[plain_name]))
        # the recomputed forward is executed work: a backward with checkpointing costs one more forward
        assert B.step_flops(ckpt, batch, cpu) > B.step_flops(plain, batch, cpu)


def test_openclip_contender_counts_the_same_flops():
    pytest.importorskip("open_clip")
    batch = B.synthetic_batch(MICRO, torch.device("cpu"))
    ours = B.toolkit_contender("x", MICRO, torch.device("cpu"), "fp32", B.VARIANTS["plain"])
    theirs = B.openclip_contender("openclip", MICRO, torch.device("cpu"), "fp32")
    n_ours = sum(p.numel() for p in ours.model.parameters())
    n_theirs = sum(p.numel() for p in theirs.model.parameters())
    assert n_ours == n_theirs  # same architecture sizes
    # OpenCLIP multiplies out the (B, B) logits twice, once per direction; everything else costs the same
    second_logits = 3 * 2 * MICRO.batch_size**2 * MICRO.embed_dim
    assert B.step_flops(theirs, batch, torch.device("cpu")) == B.step_flops(ours, batch, torch.device("cpu")) + second_logits


def test_measurements_are_consistent():
    device = torch.device("cpu")
    contenders = [B.toolkit_contender(n, MICRO, device, "fp32", B.VARIANTS[n]) for n in ("plain", "default")]
    batches = itertools.repeat(B.synthetic_batch(MICRO, device))
    cpu_times = {}
    times = B.run_alternating(contenders, batches, device, "fp32", rounds=2, steps_per_round=1, cpu_times=cpu_times)
    assert {k: len(v) for k, v in times.items()} == {k: len(v) for k, v in cpu_times.items()} == {"plain": 2, "default": 2}
    results = B.summarise(contenders, times, MICRO.batch_size, "plain", cpu_times=cpu_times)
    assert results[0].speedup_vs_reference == 1.0 and results[0].cpu_speedup_vs_reference == 1.0
    assert results[1].samples_per_s == MICRO.batch_size / statistics.median(times["default"])
    assert results[1].cpu_step_s == statistics.median(cpu_times["default"]) > 0
    split = B.phase_split(contenders[1], batches, device, "fp32", steps=2)
    assert set(split) == {"data", "forward", "backward", "optimizer"}
    weights = sum(p.numel() * 4 for p in contenders[1].model.parameters())
    peak = B.peak_memory(contenders[1], B.synthetic_batch(MICRO, device), device, "fp32")
    assert peak > 3 * weights  # weights + Adam's two moments, plus gradients and activations on top
    table = B.markdown_table(results, "plain").splitlines()
    assert "| CPU ms | × plain in CPU time |" in table[0] and table[3].startswith("| default |")
    assert all(row.count("|") == table[0].count("|") for row in table)


def test_cpu_clock_counts_work_not_waiting():
    # the CPU clock of the steps and of the peak-rate probe: time this process is not running (as when other
    # processes hold the cores) is not counted, so the MFU does not move with the load
    cpu = torch.device("cpu")
    t0 = B.clock(cpu)
    time.sleep(0.3)
    assert B.clock(cpu) - t0 < 0.1
    t0 = B.clock(cpu)
    x = torch.randn(256, 256)
    while B.clock(cpu) - t0 < 0.05:
        x @ x
    assert B.clock(cpu) - t0 >= 0.05


def test_peak_rate_probe_runs_the_towers_gemms():
    spec = B.SPECS["b32"]  # 50 tokens an image, 77 a caption
    shapes = B.gemm_shapes(B.dataclasses.replace(spec, batch_size=8))
    assert (8 * 50, 768, 3 * 768) in shapes and (8 * 50, 4 * 768, 768) in shapes and (8 * 77, 512, 4 * 512) in shapes
    # against the best kernel: oneDNN's fp32 GEMM is among those it times (the towers use it by default)
    seen = []
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rate = B.matmul_rate(torch.device("cpu"), torch.float32, [(16, 32, 48)], repeats=1)
    seen = {e.key for e in prof.key_averages()}
    assert rate > 0 and "mkldnn::_linear_pointwise" in seen and ("aten::mm" in seen or "aten::addmm" in seen)


def test_summary_speedup_is_reference_time_over_own_time():
    # a contender twice as fast as the reference in each round reports 2.0x and twice the samples/s, not 0.5x
    named = [SimpleNamespace(name=n) for n in ("ref", "fast", "slow")]
    times = {"ref": [2.0, 4.0, 3.0], "fast": [1.0, 2.0, 1.5], "slow": [4.0, 8.0, 6.0]}
    ref, fast, slow = B.summarise(named, times, 12, "ref")
    assert (ref.speedup_vs_reference, fast.speedup_vs_reference, slow.speedup_vs_reference) == (1.0, 2.0, 0.5)
    assert (ref.step_s, fast.step_s, slow.step_s) == (3.0, 1.5, 6.0)  # medians over rounds
    assert fast.samples_per_s == 2 * ref.samples_per_s == 8.0
    # the ratio is a median over rounds, not a ratio of medians: a round where both slowed down together cancels
    ref2, noisy = B.summarise(named[:2], {"ref": [1.0, 1.0, 9.0], "fast": [0.5, 3.0, 4.5]}, 12, "ref")
    assert noisy.speedup_vs_reference == 2.0 and ref2.step_s / noisy.step_s == 1 / 3
    # a second reference (plain beside OpenCLIP): ratios over each, each its own column
    ref, fast, slow = B.summarise(named, times, 12, "ref", also=("slow",))
    assert fast.speedups == {"ref": 2.0, "slow": 4.0} and slow.speedups == {"ref": 0.5, "slow": 1.0}
    table = B.markdown_table([ref, fast, slow], "ref").splitlines()
    assert "| × ref | × slow |" in table[0] and "| fast | 8.0 | 2.00 | 4.00 |" in table[3]
    assert all(row.count("|") == table[0].count("|") for row in table)


def test_end_to_end_mode_steps_on_real_batches(repo_root):
    spec = B.dataclasses.replace(MICRO, vocab_size=259, context_length=16, batch_size=4)
    device = torch.device("cpu")
    batches = B.loader_batches(str(repo_root / "data/shapes/train.csv"), spec, device, num_workers=0, pin_memory=False)
    batch = next(batches)
    assert batch["pixels"].shape == (4, 3, 16, 16) and batch["tokens"].shape == (4, 16)
    c = B.toolkit_contender("default", spec, device, "fp32", B.StepOptions())
    before = {n: p.detach().clone() for n, p in c.model.named_parameters()}
    fetched = []
    counted = (fetched.append(b) or b for b in batches)
    times = B.run_end_to_end([c], {"default": counted}, device, "fp32", rounds=2, steps_per_round=2)
    assert {k: len(v) for k, v in times.items()} == {"default": 2}
    assert len(fetched) == 4  # each timed step fetched its own batch from the loader
    assert len({b["pixels"].data_ptr() for b in fetched}) == 4 and not torch.equal(fetched[0]["pixels"], fetched[1]["pixels"])
    assert not torch.equal(c.model.logit_scale, before["logit_scale"])  # and stepped on it
    # decoding real images takes time that the synthetic mode (one batch repeated) does not have
    real = B.phase_split(c, batches, device, "fp32", steps=2)
    synthetic = B.phase_split(c, itertools.repeat(batch), device, "fp32", steps=2)
    assert real["data"] > 10 * synthetic["data"], (real, synthetic)


@pytest.mark.parametrize("name", ["plain", "default", "openclip"])
def test_phase_split_attributes_each_phase_to_its_own_work(name):
    """Each phase boundary falls between the work it closes and the next: the towers' forward runs inside
    "forward", every gradient is produced inside "backward", the optimizer steps inside "optimizer"."""
    device = torch.device("cpu")
    if name == "openclip":
        pytest.importorskip("open_clip")
        c = B.openclip_contender(name, MICRO, device, "fp32")
    else:
        c = B.toolkit_contender(name, MICRO, device, "fp32", B.VARIANTS[name])
    scaler = B.PhaseScaler(device, enabled=False)
    seen: list[tuple[str, str]] = []  # (work, the last phase mark when it ran)
    last = lambda: scaler.marks[-1][0]  # noqa: E731
    towers = [m for m in c.model.modules() if m is not c.model and sum(1 for _ in m.parameters()) > 10][:2]
    for m in towers:
        m.register_forward_hook(lambda *_: seen.append(("forward", last())))
    for p in c.model.parameters():
        p.register_hook(lambda g: seen.append(("grad", last())) or g)
    c.optimizer.register_step_pre_hook(lambda *_: seen.append(("optimizer", last())))
    batches = itertools.repeat(B.synthetic_batch(MICRO, device))
    scaler.mark("start")
    next(batches)
    scaler.mark("data")
    c.step(next(batches), scaler)
    scaler.mark("optimizer")
    assert [n for n, _ in scaler.marks] == ["start", "data", "forward", "backward", "optimizer"]
    assert {w for w, _ in seen} == {"forward", "grad", "optimizer"}
    assert all(mark == {"forward": "data", "grad": "forward", "optimizer": "backward"}[w] for w, mark in seen), seen
