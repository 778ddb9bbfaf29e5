"""Every command that writes follows export's rules: a new path, or `--overwrite` for a file of its own kind; never
into a checkpoint or a run's `checkpoints/` folder. A refusal is one line, exit code 2, and changes nothing."""

import pytest

from contrastive.interop.checkpoint import latest_checkpoint
from contrastive.cli import main
from tests.conftest import ROOT

IMAGE = str(ROOT / "data/shapes/images/val/00000.jpg")


def snapshot(folder):
    """Every path under `folder`, with the bytes of the files."""
    return {p: p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


@pytest.mark.parametrize("case", ["eval onto a CSV", "eval onto its JSON", "rank onto a PNG", "wise-ft into checkpoints",
                                  "wise-ft sweep into a checkpoint", "tokenizer into checkpoints",
                                  "plot into a full folder", "plot into a checkpoint"])
def test_writing_commands_refuse_what_is_not_theirs(case, tiny_run, tmp_path, capsys):
    val = tiny_run.parent / "val64.csv"
    table = tmp_path / "table.csv"
    table.write_bytes(val.read_bytes())
    (tmp_path / "old.json").write_text("{}")
    (tmp_path / "heatmap.png").write_bytes(b"an older plot")
    ckpt = latest_checkpoint(tiny_run / "checkpoints")
    evaluate = ["eval", "--task", "retrieval", "--checkpoint", tiny_run, "--data", val]
    args, expected = {
        "eval onto a CSV": ([*evaluate, "--output", table, "--overwrite"], "is not a JSON file"),
        "eval onto its JSON": ([*evaluate, "--output", tmp_path / "old.json"], "exists; choose a new path, or pass --overwrite"),
        "rank onto a PNG": (["rank", "--checkpoint", tiny_run, "--image", IMAGE, "--captions", "a", "b", "--plot",
                             tmp_path / "heatmap.png"], "exists; choose a new path"),
        # the run's rotation would delete its own checkpoints and keep this one; resume would start from it
        "wise-ft into checkpoints": (["wise-ft", "--start", tiny_run, "--finetuned", tiny_run, "--alpha", "0.5",
                                      "--output", tiny_run / "checkpoints" / "step_99999999", "--overwrite"],
                                     "which only its run writes"),
        "wise-ft sweep into a checkpoint": (["wise-ft", "--start", tiny_run, "--finetuned", tiny_run, "--alphas", "0,1",
                                             "--eval-target", val, "--eval-reference", val, "--output", ckpt / "sweep"],
                                            "which only its run writes"),
        "tokenizer into checkpoints": (["tokenizer", "train", "--data", val, "--vocab-size", "300", "--output",
                                        tiny_run / "checkpoints"], "which only its run writes"),
        "plot into a full folder": (["plot", tiny_run, "--output", tmp_path], "is not empty; choose a new folder"),
        "plot into a checkpoint": (["plot", tiny_run, "--output", ckpt, "--overwrite"], "which only its run writes"),
    }[case]
    before, mine = snapshot(tiny_run), snapshot(tmp_path)
    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert snapshot(tiny_run) == before and snapshot(tmp_path) == mine  # nothing written, not even a lock file


def test_overwrite_replaces_a_file_of_the_command_s_own_kind(tiny_run, tmp_path, capsys):
    old = tmp_path / "result.json"
    old.write_text("{}")
    assert main(["eval", "--task", "retrieval", "--checkpoint", str(tiny_run), "--data",
                 str(tiny_run.parent / "val64.csv"), "--output", str(old), "--overwrite"]) == 0
    assert "metrics" in old.read_text()


def test_plot_writes_a_new_folder_and_rewrites_its_own(tiny_run, tmp_path):
    assert main(["plot", str(tiny_run), "--output", str(tmp_path / "pictures")]) == 0
    assert (tmp_path / "pictures" / "loss.png").is_file()
    assert main(["plot", str(tiny_run), "--output", str(tmp_path / "pictures"), "--overwrite"]) == 0
