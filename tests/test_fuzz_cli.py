"""Property-based: random settings through `contrastive train` up to its first step, and random options of the other
commands, end in exit code 0 or in one line with exit code 2 — never a traceback, never a run directory left behind
by a run that did not start.

Training stops after its first step with `train.max_steps=1`. Most examples run in-process through `cli.main` (a
traceback there is an exception that escapes it); a few go through the real CLI in a subprocess.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contrastive.cli import main
from tests.conftest import PYTHON, ROOT, subprocess_env

CONFIG = str(ROOT / "configs/shapes_tiny.yaml")

small_ints = st.integers(-3, 96)
numbers = st.one_of(small_ints, st.floats(-2, 100),
                    st.sampled_from([0, 1e-9, 1e9, float("nan"), float("inf")]))
words = st.sampled_from(["", "gelu", "quick_gelu", "relu", "two", "none", "[1, 2]", "{a: 1}", "yes", "null"])
scalars = st.one_of(st.none(), st.booleans(), numbers, words)

# encoder arguments: the built-in towers' names (and some they do not take), with any kind of value
IMAGE_ARG_NAMES = ["layers", "width", "heads", "patch_size", "mlp_ratio", "act", "patch_dropout", "image_size", "depth"]
TEXT_ARG_NAMES = ["layers", "width", "heads", "mlp_ratio", "act", "context_length", "vocab_size", "pad_token_id",
                  "eot_token_id", "patch_size", "pooling"]
ZOO_ARG_NAMES = ["pooling", "pretrained", "weights", "drop_rate", "depth", "global_pool", "embed_dim"]


def encoder_args(names: list[str]) -> st.SearchStrategy[str]:
    return st.dictionaries(st.sampled_from(names), scalars, max_size=3).map(
        lambda d: "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}")


# (key, values): settings a new user might get wrong, with values near and far from what works
TRAIN_KEYS: list[tuple[str, st.SearchStrategy]] = [
    ("model.image_encoder_args", encoder_args(IMAGE_ARG_NAMES + ZOO_ARG_NAMES)),
    ("model.text_encoder_args", encoder_args(TEXT_ARG_NAMES)),
    ("model.image_encoder", st.sampled_from(["vit_tiny", "text_tiny", "vit_nano", "timm:resnet18",
                                             "timm:vit_tiny_patch16_224", "torchvision:resnet18", "hf:/nowhere"])),
    ("model.text_encoder", st.sampled_from(["text_tiny", "vit_tiny", "hf:./missing", "timm:resnet18"])),
    ("model.embed_dim", small_ints),
    ("model.image_size", small_ints),
    ("model.context_length", small_ints),
    ("model.tokenizer", st.sampled_from(["auto", "byte", "bpe:nowhere.json", "hf:/nowhere", "words"])),
    ("model.tokenizer_vocab_size", st.sampled_from([-1, 0, 100, 258, 300, 8192])),
    ("model.patch_dropout", numbers),
    ("model.init_logit_scale", numbers),
    ("model.init_logit_bias", numbers),
    ("model.image_mean", st.sampled_from(["[0.5, 0.5, 0.5]", "[0.5]", "[]", "[a, b, c]"])),
    ("model.image_std", st.sampled_from(["[0.5, 0.5, 0.5]", "[0, 0, 0]", "[-1, 1, 1]"])),
    ("loss.name", st.sampled_from(["clip", "siglip", "triplet"])),
    ("loss.chunk_size", small_ints),
    ("data.max_image_pixels", st.sampled_from([-1, 0, 1, 100, 10**6])),
    ("data.crop_scale", st.sampled_from(["[0.9, 1.0]", "[1.0, 0.5]", "[0, 0]", "[2, 3]", "[0.5]"])),
    ("data.on_bad_sample", st.sampled_from(["skip", "error", "ignore"])),
    ("data.trim_padding", st.booleans()),
    ("optim.lr", numbers),
    ("optim.weight_decay", numbers),
    ("optim.eps", numbers),
    ("optim.betas", st.sampled_from(["[0.9, 0.98]", "[1.5, 0.9]", "[0.9]", "[-1, 0.5]"])),
    ("optim.warmup_steps", small_ints),
    ("optim.grad_clip", numbers),
    ("train.batch_size", st.integers(-1, 9)),
    ("train.micro_batch_size", st.integers(-1, 9)),
    ("train.precision", st.sampled_from(["fp32", "bf16", "fp16", "fp8"])),
    ("train.device", st.sampled_from(["cpu", "auto", "gpu", "cuda:3"])),
    ("model.fused_qkv", st.booleans()),
    ("model.pooled_last_block", st.booleans()),
    ("train.grad_checkpointing", st.booleans()),
    ("train.seed", small_ints),
    ("finetune.image.unlocked_layers", small_ints),
    ("finetune.text.lock", st.booleans()),
    ("finetune.layer_decay", numbers),
]
KEY_NAMES = [k for k, _ in TRAIN_KEYS]
overrides = st.lists(st.sampled_from(range(len(TRAIN_KEYS))), max_size=4, unique=True).flatmap(
    lambda idx: st.tuples(*[TRAIN_KEYS[i][1].map(lambda v, i=i: f"{KEY_NAMES[i]}={v}") for i in idx]))


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> Path:
    """8 training rows of the bundled shapes (absolute image paths)."""
    lines = (ROOT / "data/shapes/train.csv").read_text().splitlines()
    table = tmp_path_factory.mktemp("fuzz_data") / "train.csv"
    table.write_text("\n".join([lines[0], *(str(ROOT / "data/shapes") + "/" + line for line in lines[1:9])]) + "\n")
    return table


def fixed_args(table: Path, out: Path) -> list[str]:
    return [f"data.train={table}", "data.val=", "data.num_workers=0", "train.max_steps=1", "train.progress_bar=false",
            "train.batch_size=4", f"train.output_dir={out}", "train.run_name=run", "train.log_every_n_steps=1"]


def run_in_process(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


def error_lines(err: str) -> list[str]:
    """stderr lines that report the failure (start-up notes such as the vocabulary line come before them)."""
    return [line for line in err.strip().splitlines() if "error" in line.lower() or "Traceback" in line]


def check_train_outcome(rc: int, err: str, out: Path) -> None:
    assert "Traceback" not in err, err
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        lines = error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("contrastive train: error: "), err
        assert err.strip().splitlines()[-1] == lines[0], err  # nothing after the error line
        assert not (out / "run").exists(), f"a run that did not start left {out / 'run'}: {err}"
    else:
        assert (out / "run" / "checkpoints" / "latest").is_file(), err


@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(pairs=overrides)
def test_random_settings_through_train_up_to_the_first_step(tiny_table, pairs):
    out = Path(tempfile.mkdtemp(prefix="fuzz_train_"))
    try:  # the fixed arguments come first, so the random ones override (e.g.) the batch size
        rc, err = run_in_process(["train", "--config", CONFIG, *fixed_args(tiny_table, out), *pairs])
        check_train_outcome(rc, err, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow  # three subprocesses, each importing torch
@settings(max_examples=3, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pairs=overrides)
def test_random_settings_through_the_real_train_cli(tiny_table, pairs):
    out = Path(tempfile.mkdtemp(prefix="fuzz_cli_"))
    try:
        proc = subprocess.run([PYTHON, "-m", "contrastive", "train", "--config", CONFIG,
                               *fixed_args(tiny_table, out), *pairs],
                              env=subprocess_env(), capture_output=True, text=True, timeout=300)
        check_train_outcome(proc.returncode, proc.stderr, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------------
# the other commands: random options over a set of good and bad files


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_table) -> dict[str, str]:
    """Named inputs, good and bad: a checkpoint, tables, images, text files, metrics files, folders."""
    from contrastive.config import load_config
    from contrastive.training import train

    d = tmp_path_factory.mktemp("fuzz_files")
    cfg = load_config(CONFIG, [*fixed_args(tiny_table, d), "model.image_encoder_args={layers: 1}",
                               "model.text_encoder_args={layers: 1}"])
    with contextlib.redirect_stderr(io.StringIO()):
        run = train(cfg)
    image = ROOT / "data/shapes/images/train/00000.jpg"
    (d / "empty.csv").write_bytes(b"")
    (d / "quote.csv").write_text('image,caption\n"a.jpg,a red circle\nb.jpg,x\n')
    (d / "junk.bin").write_bytes(bytes(range(256)) * 3)
    (d / "zero.jpg").write_bytes(b"")
    (d / "folder").mkdir()
    (d / "captions.txt").write_text("a red circle\na blue square\n")
    (d / "cut_metrics").mkdir()
    (d / "cut_metrics" / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    (d / "empty_metrics").mkdir()
    (d / "empty_metrics" / "metrics.jsonl").write_text("")
    return {"run": str(run), "table": str(tiny_table), "empty.csv": str(d / "empty.csv"),
            "quote.csv": str(d / "quote.csv"), "junk": str(d / "junk.bin"), "image": str(image),
            "zero.jpg": str(d / "zero.jpg"), "folder": str(d / "folder"), "missing": str(d / "missing.csv"),
            "captions.txt": str(d / "captions.txt"), "cut_metrics": str(d / "cut_metrics"),
            "empty_metrics": str(d / "empty_metrics")}


names = st.sampled_from(["run", "table", "empty.csv", "quote.csv", "junk", "image", "zero.jpg", "folder", "missing",
                         "captions.txt", "cut_metrics", "empty_metrics"])
option_numbers = st.one_of(st.integers(-3, 600).map(str), st.sampled_from(["1.5", "x", "", "1e3"]))
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def command_argv(draw) -> list[str | tuple[str, str]]:
    """argv of eval, rank, tokenizer, plot or export; ("@", name) marks a file from `files`."""
    command = draw(st.sampled_from(["eval", "rank", "tokenizer", "plot", "export"]))
    f = lambda: ("@", draw(names))  # noqa: E731
    if command == "eval":
        argv = ["eval", "--task", draw(st.sampled_from(["zeroshot", "retrieval", "knn"])), "--checkpoint", f(),
                "--data", f()]
        if draw(st.booleans()):
            argv += ["--class-key", draw(st.sampled_from(["shape", "color", "nope", ""]))]
        if draw(st.booleans()):
            argv += ["--caption-key", draw(st.sampled_from(["caption", "captions", "nope"]))]
        if draw(st.booleans()):
            argv += ["--batch-size", draw(option_numbers)]
        if draw(st.booleans()):
            argv += ["--precision", draw(st.sampled_from(["fp32", "bf16", "fp8"]))]
        return argv
    if command == "rank":
        argv = ["rank", "--checkpoint", f(), "--image", f(), "--captions", *draw(st.lists(texts, min_size=1, max_size=3))]
        if draw(st.booleans()):
            argv += ["--top-k", draw(option_numbers)]
        return argv + (["--json"] if draw(st.booleans()) else [])
    if command == "tokenizer":
        argv = ["tokenizer", "train", "--data", f(), "--vocab-size", draw(option_numbers), "--output", ("out", "tok")]
        if draw(st.booleans()):
            argv += ["--min-frequency", draw(option_numbers)]
        if draw(st.booleans()):
            argv += ["--caption-key", draw(st.sampled_from(["caption", "nope", "image"]))]
        return argv
    if command == "plot":
        return ["plot", f()] + (["--output", ("out", "plots")] if draw(st.booleans()) else [])
    return ["export", "--checkpoint", f(), "--output", draw(st.sampled_from([("out", "export"), ("@", "folder"),
                                                                          ("@", "run")])), "--no-verify"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(spec=command_argv())
def test_random_options_of_the_other_commands(files, spec):
    work = Path(tempfile.mkdtemp(prefix="fuzz_cmd_"))
    try:
        argv = [files[a[1]] if isinstance(a, tuple) and a[0] == "@" else str(work / a[1]) if isinstance(a, tuple)
                else a for a in spec]
        rc, err = run_in_process(argv)
        assert "Traceback" not in err and rc in (0, 2), (argv, rc, err)
        if rc == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"contrastive {argv[0]}"), (argv, err)
    finally:
        shutil.rmtree(work, ignore_errors=True)
