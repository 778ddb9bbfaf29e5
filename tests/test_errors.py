"""User errors at the boundary: one line, exit code 2, never a traceback — also for random configs and random tables."""

import contextlib
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contrastive.cli import main
from contrastive.config import Config, ConfigError, _all_keys, config_from_dict
from contrastive.data import DataError, read_records
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
