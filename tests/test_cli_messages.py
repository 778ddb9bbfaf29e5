"""Messages that name the right thing, through the real CLI: one line, exit code 2, no traceback, no run directory.

Classes: a file or folder of the wrong kind (a directory where a file is due, a 0-byte or headless table, a quote
never closed), a column hint naming the option or key that chose the column, hub ids without network (at once,
not after retries), WebDataset shards that are not tars, images over `data.max_image_pixels`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from PIL import Image

from contrastive.data.bad import BadSample
from contrastive.data.images import decode_image
from tests.conftest import PYTHON, ROOT, subprocess_env

CONFIG = str(ROOT / "configs/shapes_tiny.yaml")
pytestmark = pytest.mark.slow  # every case is a subprocess importing torch


def cli(*argv: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run([PYTHON, "-m", "contrastive", *argv], cwd=cwd, env={**subprocess_env(), **(env or {})},
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def assert_one_line(rc: int, err: str, command: str, *expected: str) -> str:
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"contrastive {command}: error: "), err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def train(tmp_path: Path, *overrides: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    return cli("train", "--config", CONFIG, f"train.output_dir={tmp_path / 'runs'}", "train.run_name=run",
               f"data.train={ROOT / 'data/shapes/train.csv'}", "data.val=", "data.num_workers=0", *overrides,
               cwd=tmp_path, env=env)


@pytest.fixture
def tables(tmp_path) -> dict[str, Path]:
    image = ROOT / "data/shapes/images/train/00000.jpg"
    files = {"empty": b"", "blank_header": b"\n\nimage,caption\n", "quote": f'image,caption\n{image},ok\n"{image},a red circle\n{image},x\n'.encode(),
             "quote_tsv": f'image\tcaption\n"{image}\tx\n'.encode()}
    out = {}
    for name, data in files.items():
        out[name] = tmp_path / (f"{name}.tsv" if name.endswith("tsv") else f"{name}.csv")
        out[name].write_bytes(data)
    (tmp_path / "a_dir.csv").mkdir()
    out["dir"] = tmp_path / "a_dir.csv"
    return out


@pytest.mark.parametrize("table,expected", [
    ("empty", "is empty (0 bytes)"), ("blank_header", "first line is blank"),
    ("quote", "line 3: a quoted field opens here and is never closed"), ("quote_tsv", "never closed"),
    ("dir", "is a directory, not a table file"),
])
def test_tables_of_the_wrong_kind_are_named_for_what_they_are(tmp_path, tables, table, expected):
    rc, err = train(tmp_path, f"data.train={tables[table]}", "model.tokenizer=byte", "model.context_length=32")
    line = assert_one_line(rc, err, "train", expected)
    assert "batch_size" not in line and "columns: )" not in line
    assert not (tmp_path / "runs" / "run").exists()


def test_a_directory_given_as_a_file_is_called_a_directory(tmp_path, tiny_run):
    (tmp_path / "folder").mkdir()
    assert_one_line(*cli("train", "--config", str(tmp_path / "folder"), cwd=tmp_path), "train", "is a directory")
    assert_one_line(*cli("rank", "--checkpoint", str(tiny_run), "--image", str(tmp_path / "folder"), "--captions", "a",
                         cwd=tmp_path), "rank", "is a directory")
    assert_one_line(*cli("tokenizer", "train", "--data", str(tmp_path / "folder"), "--vocab-size", "300", "--output",
                         str(tmp_path / "tok"), cwd=tmp_path), "tokenizer", "is a directory")
    assert not (tmp_path / "tok").exists()


def test_column_hints_name_the_option_of_the_command(tmp_path, tiny_run):
    val = ROOT / "data/shapes/val.csv"
    line = assert_one_line(*cli("eval", "--task", "zeroshot", "--checkpoint", str(tiny_run), "--data", str(val),
                                "--class-key", "nope", cwd=tmp_path), "eval", "no column 'nope'", "set --class-key")
    assert "data." not in line
    line = assert_one_line(*cli("eval", "--task", "retrieval", "--checkpoint", str(tiny_run), "--data", str(val),
                                "--image-key", "img", cwd=tmp_path), "eval", "no column 'img'", "set --image-key")
    assert "data." not in line
    line = assert_one_line(*cli("tokenizer", "train", "--data", str(val), "--caption-key", "nope", "--vocab-size", "300",
                                "--output", str(tmp_path / "tok"), cwd=tmp_path), "tokenizer", "set --caption-key")
    assert "data." not in line
    # training names its config keys
    assert_one_line(*train(tmp_path, f"data.train={val}", "data.caption_key=nope"), "train", "set data.caption_key")


ONLINE = {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}  # CI runs offline


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {**ONLINE, "HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_hub_ids_without_the_hub_fail_at_once(tmp_path, env):
    """HF_HUB_OFFLINE, or a hub that does not answer (a closed local port here): one line, no retries."""
    cases = [("data.train=hf://nobody/nothing", "hf://nobody/nothing: it is not in the local cache"),
             ("model.text_encoder=hf:nobody/nothing", "hf:nobody/nothing: it is not in the local cache"),
             ("model.tokenizer=hf:nobody/nothing", "not in the local cache")]
    for override, expected in cases:
        rc, err = train(tmp_path, override, env=env)
        reason = "HF_HUB_OFFLINE is set" if env.get("HF_HUB_OFFLINE") == "1" else "cannot reach http://127.0.0.1:9"
        assert_one_line(rc, err, "train", expected, reason)
        assert "Retrying" not in err  # huggingface_hub logs each retry (30-60 s of them before the probe)
        assert not (tmp_path / "runs" / "run").exists()


def test_shards_that_are_not_tar_files_say_so(tmp_path):
    (tmp_path / "junk.tar").write_bytes(bytes(range(256)) * 20)
    (tmp_path / "text.tar").write_text("not a tar\n" * 100)
    for name in ("junk.tar", "text.tar"):
        line = assert_one_line(*train(tmp_path, f"data.train={tmp_path / name}"), "train",
                               f"{name}: not a readable tar file (")
        assert line.endswith(")") and "could not be opened successfully:" not in line
        assert not (tmp_path / "runs" / "run").exists()


def test_decompression_bombs_are_measured_against_max_image_pixels(tmp_path):
    """Over Pillow's own refusal (twice its limit) the message still quotes data.max_image_pixels."""
    big = tmp_path / "big.png"
    Image.new("1", (20_000, 10_000)).save(big)  # 200 M pixels > 2 x 89.5 M: Pillow itself would refuse it
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    for path, limit, size in ((big, 89_478_485, "20000x10000"), (small, 1000, "40x30")):
        with pytest.raises(BadSample) as e:
            decode_image(str(path), limit)
        assert e.value.reason == "decompression_bomb" and f"data.max_image_pixels={limit:,}" in str(e.value)
        assert size in str(e.value) and "178956970" not in str(e.value)
    table = tmp_path / "t.csv"
    table.write_text("image,caption\n" + f"{small},a black box\n" * 4)
    line = assert_one_line(*train(tmp_path, f"data.train={table}", "data.max_image_pixels=1000",
                                  "data.on_bad_sample=error", "train.batch_size=2", "train.max_steps=1"), "train")
    assert "data.max_image_pixels=1,000" in line
