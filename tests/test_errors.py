"""User errors at the boundary: one line, exit code 2, never a traceback — also for random configs and random tables."""

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contrastive.cli import main
from contrastive.config import Config, _all_keys, config_from_dict
from contrastive.errors import ConfigError, DataError
from contrastive.data import read_records
from tests.conftest import ROOT

CONFIG = str(ROOT / "configs/shapes_tiny.yaml")
KEYS = _all_keys() + ["name", "optim.lrr", "trian.seed", "train", "model.image_encoder_args.depth", "x.y.z", ""]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=6), scalars, max_size=3))


def run_cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, err.getvalue()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(st.text(max_size=16), values.map(str))), max_size=4))
def test_random_overrides_never_raise(pairs):
    rc, err = run_cli(["config", "--config", CONFIG, *(f"{k}={v}" for k, v in pairs)])
    assert rc in (0, 2)
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("contrastive config: error:")


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(["model", "loss", "data", "optim", "train", "eval", "name", "other"]),
                       st.one_of(values, st.dictionaries(st.sampled_from([k.split(".")[-1] for k in KEYS if "." in k]),
                                                         values, max_size=4)), max_size=4))
def test_random_config_values_give_config_or_config_error(tree):
    try:
        cfg = config_from_dict(tree)
    except ConfigError as e:
        assert "\n" not in str(e)
    else:
        assert isinstance(cfg, Config)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=300),
                      st.lists(st.lists(st.text(max_size=8), max_size=4), max_size=5).map(
                          lambda rows: "\n".join(",".join(r) for r in [["image", "caption"], *rows]).encode())),
       suffix=st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_random_table_bytes_give_records_or_data_error(tmp_path, data, suffix):
    path = tmp_path / f"table{suffix}"
    path.write_bytes(data)
    try:
        records = read_records(str(path), "image", "caption")
    except DataError as e:
        assert "\n" not in str(e)
    else:
        assert records and all(isinstance(r.captions, list) for r in records)


def train_cli(tmp_path: Path, *overrides: str) -> tuple[int, str]:
    return run_cli(["train", "--config", CONFIG, "data.num_workers=0", "train.progress_bar=false",
                    f"train.output_dir={tmp_path}", "train.run_name=run", *overrides])


@pytest.mark.parametrize("override,expected", [
    ("train.batch_size=many", "expects int"),
    ("optim.lr=[1, 2]", "expects float"),
    ("data.train=nowhere/train.csv", "not found"),
    ("train.micro_batch_size=256", "micro_batch_size"),
    ("loss.chunk_size=-4", "chunk_size"),
    ("train.log_every_n_steps=0", "log_every_n_steps"),
    ("train.on_checkpoint_error=retry", "on_checkpoint_error"),
    ("train.run_name=../elsewhere", "run_name"),
    ("optim.lrr=1", "optim.lr"),
])
def test_cli_user_errors_exit_2_in_one_line(tmp_path, override, expected):
    rc, err = train_cli(tmp_path, override)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and expected in lines[0] and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_existing_run_dir_exits_2(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("an earlier run")
    rc, err = train_cli(tmp_path)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "already exists" in err and "train.resume=true" in err
    assert (tmp_path / "run" / "notes.txt").read_text() == "an earlier run"


BAD_ENCODER_ARGS = [
    ("model.image_encoder_args={depth: 2}", "takes no argument 'depth'"),
    ("model.text_encoder_args={patch_size: 8}", "takes no argument 'patch_size'"),
    ("model.text_encoder_args={layers: two}", "layers expects int, got 'two'"),
    ("model.image_encoder_args={width: 1.5}", "width expects int"),
    ("model.image_encoder_args={act: [gelu]}", "act expects str"),
    ("model.image_encoder_args={layers: true}", "layers expects int"),
    ("model.image_encoder_args={patch_size: 0}", "patch_size must be > 0"),
    ("model.text_encoder_args={heads: -2}", "heads must be > 0"),
    ("model.image_encoder_args={mlp_ratio: 0}", "mlp_ratio must be > 0"),
    ("model.text_encoder_args={pad_token_id: -1}", "pad_token_id must be >= 0"),
    ("model.image_encoder_args={patch_dropout: 1.5}", "patch_dropout must be in [0, 1)"),
    ("model.image_encoder_args={heads: 5}", "not divisible by heads 5"),
    ("model.image_encoder_args={patch_size: 7}", "not divisible by patch_size 7"),
    ("model.text_encoder_args={act: relu}", "act 'relu' is not one of"),
    ("model.text_encoder_args={mlp_ratio: 0.001}", "raise mlp_ratio"),
    ("model.text_encoder_args={context_length: 8}", "below model.context_length=64"),
]


@pytest.mark.parametrize("override,expected", BAD_ENCODER_ARGS)
def test_encoder_args_that_cannot_build_exit_2_before_anything_runs(tmp_path, monkeypatch, override, expected):
    import contrastive.training.recipe as recipe_module

    def unreachable(*args, **kwargs):
        raise AssertionError("the captions were read before the encoder arguments were checked")

    monkeypatch.setattr(recipe_module, "prepare_text", unreachable)
    rc, err = train_cli(tmp_path, "model.tokenizer=byte", "model.context_length=64", override)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("contrastive train: error: model.") and expected in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_encoder_args_are_checked_by_create_encoder_too():
    from contrastive.encoders import create_encoder

    with pytest.raises(ValueError, match="takes no argument 'depth'; did you mean"):
        create_encoder("vit_tiny", depth=2)
    with pytest.raises(ValueError, match="layers must be > 0"):
        create_encoder("text_tiny", layers=0)
    assert create_encoder("vit_tiny", layers=1, mlp_ratio=2).num_layers == 1  # an int where a float is annotated


@pytest.mark.slow  # a subprocess importing torch
def test_bad_encoder_args_through_the_real_cli(tmp_path):
    import subprocess

    from tests.conftest import PYTHON, subprocess_env

    out = subprocess.run([PYTHON, "-m", "contrastive", "train", "--config", CONFIG, f"train.output_dir={tmp_path}",
                          "train.run_name=run", "model.image_encoder_args={depth: 2}"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "'depth'" in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv,expected", [
    (["eval", "--task", "retrieval", "--checkpoint", "c", "--data", "d", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["eval", "--task", "retrieval", "--checkpoint", "c", "--data", "d", "--batch-size", "-3"], "--batch-size: must be >= 1"),
    (["eval", "--task", "retrieval", "--checkpoint", "c", "--data", "d", "--batch-size", "1.5"], "expects an integer"),
    (["eval", "--task", "retrieval", "--checkpoint", "c", "--data", "d", "--device", "banana"], "is not a device"),
    (["eval", "--task", "nothing", "--checkpoint", "c", "--data", "d"], "invalid choice"),
    (["tokenizer", "train", "--data", "x.txt", "--vocab-size", "300", "--output", "o", "--min-frequency", "-5"],
     "--min-frequency: must be >= 1"),
    (["tokenizer", "train", "--data", "x.txt", "--vocab-size", "100", "--output", "o"], "--vocab-size: must be >= 259"),
    (["tokenizer", "train", "--data", "x.txt", "--output", "o"], "required: --vocab-size"),
    (["rank", "--checkpoint", "c", "--image", "i.jpg", "--captions", "a", "--top-k", "0"], "--top-k: must be >= 1"),
    (["rank", "--checkpoint", "c", "--image", "i.jpg", "--captions", "a", "--device", "cpu:7"], "is not a device"),
    (["train", "--no-such-flag"], "unrecognized arguments"),
    (["export", "--checkpoint", "c"], "required: --output"),
])
def test_cli_option_mistakes_are_one_line(tmp_path, monkeypatch, argv, expected):
    monkeypatch.chdir(tmp_path)
    rc, err = run_cli(argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and expected in lines[0] and "usage:" not in err, err
    assert lines[0].startswith(f"contrastive {argv[0]}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device,expected", [("banana", "is not a device"), ("cuda:-1", "is not a device"),
                                             ("meta", "is not a device"), ("cuda:99", "cuda:99")])
def test_bad_train_device_exits_2_at_start_up(tmp_path, device, expected):
    import torch

    if device == "cuda:99" and not torch.cuda.is_available():
        expected = "no GPU is visible"
    rc, err = train_cli(tmp_path, f"train.device={device}")
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and expected in lines[0] and "train.device" in lines[0], err
    assert not (tmp_path / "run").exists()


def test_context_length_one_exits_2_at_start_up(tmp_path):
    rc, err = train_cli(tmp_path, "model.context_length=1")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "model.context_length must be >= 2" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rows,expected", [
    (["missing/a.jpg,a red circle", "missing/b.jpg,a blue square"], "missing_file=" ),
    (["{folder},a red circle", "{folder},a blue square"], "unreadable_file="),
    (["{good},", "{good},   "], "caption"),
])
def test_a_table_with_no_usable_sample_leaves_no_run_directory(tmp_path, rows, expected):
    good = ROOT / "data/shapes/images/train/00000.jpg"
    (tmp_path / "a_folder").mkdir()
    table = tmp_path / "t.csv"
    lines = [r.format(folder=tmp_path / "a_folder", good=good) for r in rows] * 4
    table.write_text("image,caption\n" + "\n".join(lines) + "\n")
    out = tmp_path / "runs"
    args = ["model.tokenizer=byte", "model.context_length=64", f"data.train={table}", "data.val=", "train.batch_size=2",
            "train.max_steps=1"]
    rc, err = train_cli(out, *args)
    lines_ = err.strip().splitlines()
    assert rc == 2 and len(lines_) == 1 and expected in lines_[0], err
    if expected != "caption":  # (captions are read, and refused, before the images)
        assert "none of" in lines_[0] and f"{table} row 2" in lines_[0]
    assert not out.exists() or not any(out.iterdir())
    # the data fixed, the same command runs: nothing is in its way
    table.write_text("image,caption\n" + f"{good},a red circle\n" * 4)
    assert train_cli(out, *args)[0] == 0


def test_silent_mistakes_of_rank_and_tokenizer_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.csv").write_text("image,caption\na.jpg,\nb.jpg,   \n")
    for data in ("empty.txt", "blank.csv"):
        rc, err = run_cli(["tokenizer", "train", "--data", data, "--vocab-size", "300", "--output", "tok"])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "no usable caption" in err, err
    assert not (tmp_path / "tok").exists()
    for captions in ([""], ["a red circle", "  "]):
        rc, err = run_cli(["rank", "--checkpoint", "c", "--image", "i.jpg", "--captions", *captions])
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "is empty" in err, err
