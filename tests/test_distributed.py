"""Real multi-process runs (`torchrun --nproc_per_node=2`, gloo on CPU) against one process with the same global batch."""

import shutil
import socket
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.helpers.grads import ZERO_GRADIENT
from contrastive.evaluation.plots import read_metrics

TINY = "{layers: 1, width: 32, heads: 2}"
COMMON = [
    f"model.image_encoder_args={TINY}", f"model.text_encoder_args={TINY}", "model.embed_dim=16",
    "model.image_size=32", "model.context_length=32", "data.val=", "data.num_workers=0", "train.progress_bar=false",
    "train.log_every_n_steps=1", "optim.grad_clip=0", "optim.warmup_steps=1", "train.batch_size=8",
    "train.max_steps=3",
    # attention key biases have gradients that are zero up to rounding; Adam's default eps would turn that noise
    # into full-size steps that differ between runs, so weights are compared with a larger eps
    "optim.eps=1e-3",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", *args]


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def train_cmd(out, *overrides: str) -> list[str]:
    return ["-m", "contrastive", "train", "-c", str(ROOT / "configs/shapes_tiny.yaml"), *COMMON,
            f"train.output_dir={out}", "train.run_name=run", *overrides]


def metrics(run_dir) -> dict[int, dict]:
    return {m["step"]: m for m in read_metrics(run_dir) if "loss" in m}


def weights(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:08d}" / "model.safetensors"))


def assert_same_run(got_dir, ref_dir, steps: list[int], final: int, noise_step: float = 0.0) -> None:
    """Same loss, gradient norm and temperature at every step, same final weights. `noise_step` > 0: Adam moves the
    attention key biases (true gradient zero) by rounding noise of up to that much per step, which differs between
    runs: those are checked against that bound instead."""
    got, ref = metrics(got_dir), metrics(ref_dir)
    assert sorted(got) == steps
    for s in steps:
        for key in ("loss", "grad_norm", "logit_scale"):  # grad_norm catches a gradient off by the world size
            assert got[s][key] == pytest.approx(ref[s][key], rel=1e-5), (s, key, got[s][key], ref[s][key])
    w, r = weights(got_dir, final), weights(ref_dir, final)
    assert set(w) == set(r)
    for k in r:
        if noise_step and k.endswith(ZERO_GRADIENT):
            assert (w[k] - r[k]).abs().max() <= 2 * noise_step * final, k
            continue
        torch.testing.assert_close(w[k], r[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_gathered_loss_and_gradients_match_single_process():
    """DDP and FSDP2, local (tiled) and global loss, CLIP and SigLIP, with or without gradient caching: mean loss
    over ranks and synchronised gradients equal one process on the whole batch; and CLIP mixed with distillation
    from a teacher's features gathered across ranks, under DDP."""
    proc = run(torchrun(str(ROOT / "tests" / "helpers" / "dist_worker.py")))
    assert "checks passed: 20" in proc.stdout


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    run([PYTHON, *train_cmd(out)])
    return out / "run"


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["loss.local_loss=true"],
    ["loss.local_loss=false"],
    ["loss.local_loss=true", "train.micro_batch_size=3", "loss.chunk_size=3"],
    ["train.fsdp=true", "train.micro_batch_size=2"],
], ids=["local", "global", "gradcache-tiled", "fsdp-gradcache"])
def test_torchrun_training_equals_single_process(tmp_path, single_run, overrides):
    run(torchrun(*train_cmd(tmp_path, *overrides)))
    assert_same_run(tmp_path / "run", single_run, [1, 2, 3], 3)


# OptimConfig's own clipping and eps, in place of COMMON's: clipping at 1.0 engages at every step of this run
DEFAULT_OPTIM = ["optim.grad_clip=1.0", "optim.eps=1e-6"]
LR = 1e-3  # configs/shapes_tiny.yaml: the most one Adam step moves a parameter


@pytest.fixture(scope="module")
def single_run_default_optim(tmp_path_factory):
    out = tmp_path_factory.mktemp("single_default_optim")
    run([PYTHON, *train_cmd(out, *DEFAULT_OPTIM)])
    return out / "run"


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [[], ["train.fsdp=true"]], ids=["ddp", "fsdp"])
def test_torchrun_with_default_clipping_equals_single_process(tmp_path, single_run_default_optim, overrides):
    """DDP (torch's clip_grad_norm_ on replicated gradients) and FSDP (`clip_sharded_grad_norm_` over shards)
    clip like one process does."""
    ref = metrics(single_run_default_optim)
    assert all(ref[s]["grad_norm"] > 1.0 for s in (1, 2, 3)), ref  # the clipping branch runs at every step
    run(torchrun(*train_cmd(tmp_path, *DEFAULT_OPTIM, *overrides)))
    assert_same_run(tmp_path / "run", single_run_default_optim, [1, 2, 3], 3, noise_step=LR)


@pytest.mark.slow
def test_torchrun_resume_continues_exactly(tmp_path, single_run):
    """Kill-and-resume under torchrun (FSDP, so sharded state is gathered and re-sharded) ends where one
    uninterrupted single process ends."""
    partial = ["train.fsdp=true", "train.save_every_n_steps=1", "train.keep_checkpoints=5"]
    run(torchrun(*train_cmd(tmp_path, *partial)))
    crashed = tmp_path / "run"
    shutil.rmtree(crashed / "checkpoints" / "step_00000003")
    (crashed / "checkpoints" / "latest").write_text("step_00000001\n")
    shutil.rmtree(crashed / "checkpoints" / "step_00000002")
    (crashed / "metrics.jsonl").write_text("")
    proc = run(torchrun(*train_cmd(tmp_path, *partial, "train.resume=true")))
    assert "resumed from" in proc.stdout and "(step 1)" in proc.stdout
    assert_same_run(crashed, single_run, [2, 3], 3)


@pytest.mark.slow
def test_torchrun_fsdp_evaluates_every_rank_together(tmp_path):
    """Evaluation calls encode_image / encode_text, not forward: a sharded model must gather its weights for them."""
    lines = (ROOT / "data/shapes/val.csv").read_text().splitlines(keepends=True)
    val = tmp_path / "val.csv"
    val.write_text(lines[0] + "".join(str(ROOT / "data/shapes") + "/" + line for line in lines[1:17]))
    proc = run(torchrun(*train_cmd(tmp_path, "train.fsdp=true", "train.max_steps=2", f"data.val={val}",
                                   "eval.every_n_steps=1")))
    assert "failed" not in proc.stdout
    evals = [m for m in read_metrics(tmp_path / "run") if "val/text_retrieval_recall@1" in m]
    assert [m["step"] for m in evals] == [1, 2]
    assert all(0.0 <= m["val/text_retrieval_recall@1"] <= 1.0 for m in evals)


@pytest.mark.slow
def test_torchrun_ddp_with_a_mean_pooled_bert_tower(tmp_path):
    """BERT's pooler gets no gradient under mean pooling; DDP (no find_unused_parameters) would fail at step 2
    unless training freezes it first."""
    from tests.helpers.hf_models import save_tower

    bert = save_tower("bert", tmp_path / "bert")
    proc = run(torchrun(*train_cmd(tmp_path, f"model.text_encoder=hf:{bert}", f"model.tokenizer=hf:{bert}",
                                   "model.text_encoder_args={pooling: mean}")))
    assert "froze 2 parameters its pooling does not use" in proc.stdout
    assert sorted(metrics(tmp_path / "run")) == [1, 2, 3]


def test_fsdp_with_fp16_is_refused():
    from contrastive.errors import ConfigError
    from contrastive.config import load_config

    with pytest.raises(ConfigError, match="train.fsdp"):
        load_config(None, ["train.fsdp=true", "train.precision=fp16"])
    assert load_config(None, ["train.fsdp=true", "train.precision=bf16"]).train.fsdp


def test_single_process_gather_is_identity():
    from contrastive.distributed import DistInfo, all_gather_tensor, all_gather_with_grad

    x = torch.randn(3, 4, requires_grad=True)
    assert all_gather_with_grad(x, DistInfo()) is x
    assert all_gather_tensor(x, DistInfo()) is x


@pytest.mark.slow
def test_torchrun_shard_resume_keeps_every_ranks_cursor(tmp_path):
    """Each rank's shard stream reports its own cursor; the checkpoint (written by rank 0) gathers all of them, and a
    resume from it continues both ranks exactly (the losses of the uninterrupted run)."""
    from contrastive.interop.checkpoint import load_state
    from tests.helpers.shards import write_shards

    pattern = write_shards(tmp_path / "shards", 4, 11, bad_in_first=True)
    shards = [f"data.train={pattern}", "data.shuffle_buffer=5", "data.bad_check_after=0", "train.max_steps=4",
              "train.save_every_n_steps=2", "train.keep_checkpoints=5"]
    run(torchrun(*train_cmd(tmp_path / "a", *shards)))
    full = tmp_path / "a" / "run"
    cursors = load_state(full / "checkpoints" / "step_00000002")["data"]["stream_cursors"]
    assert sorted(cursors) == [0, 1]  # rank 1's stream too
    crashed = tmp_path / "b" / "run"
    shutil.copytree(full, crashed)
    for step in (3, 4):
        shutil.rmtree(crashed / "checkpoints" / f"step_{step:08d}", ignore_errors=True)
    (crashed / "checkpoints" / "latest").write_text("step_00000002\n")
    (crashed / "metrics.jsonl").write_text("")
    run(torchrun(*train_cmd(tmp_path / "b", *shards, "train.resume=true")))
    got, ref = metrics(crashed), metrics(full)
    assert sorted(got) == [3, 4] and all(got[s]["loss"] == ref[s]["loss"] for s in (3, 4))
