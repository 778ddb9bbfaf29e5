"""Training with a frozen teacher (`distill.*`): how the teacher sees a batch, and the mixed loss in real runs."""

import json

import pytest
import torch
from PIL import Image

import contrastive
from contrastive.config import ModelConfig, load_config
from contrastive.data.images import ImageTransform
from contrastive.training.recipe import train
from contrastive.training.distill import TeacherView
from tests.conftest import ROOT
from tests.helpers.overrides import small_run

SMALL = ["model.image_encoder_args={layers: 1}", "model.text_encoder_args={layers: 1}", "model.image_size=32",
         "model.embed_dim=16", "train.batch_size=8", "data.val=", "data.num_workers=0", "train.progress_bar=false",
         "train.log_every_n_steps=1"]


def student_run(tmp_path, name, *overrides):
    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [*SMALL, f"train.output_dir={tmp_path}",
                                                          f"train.run_name={name}", *overrides])
    return train(cfg)


def losses(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [m["loss"] for m in lines if "loss" in m]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A one-step run with the student's own settings (32 px, the learned vocabulary)."""
    return small_run(tmp_path_factory.mktemp("teacher"))


def test_a_student_that_is_its_teacher_has_no_distillation_loss(tmp_path, teacher):
    """Started from the teacher's weights, the student's softmax is the teacher's: the first step's loss is 0 with
    weight 1, and half the plain contrastive loss with weight 0.5 (the mix)."""
    start = [f"model.init_from={teacher}", "train.max_steps=1"]
    plain = losses(student_run(tmp_path, "plain", *start))[0]
    alone = losses(student_run(tmp_path, "alone", *start, f"distill.teacher={teacher}", "distill.weight=1"))[0]
    mixed = losses(student_run(tmp_path, "mixed", *start, f"distill.teacher={teacher}", "distill.weight=0.5"))[0]
    assert plain > 1.0
    assert abs(alone) < 1e-5
    assert mixed == pytest.approx(plain / 2, rel=1e-5)


def test_a_teacher_of_another_size_and_tokenizer_teaches(tmp_path, teacher, capsys):
    """Student at 48 px with a byte tokenizer, teacher at 32 px with a learned vocabulary: the teacher sees the
    student's crops resized and its captions tokenized again, and the distillation loss falls."""
    lines = (ROOT / "data/shapes/train.csv").read_text().splitlines(keepends=True)
    table = tmp_path / "eight.csv"  # one batch, seen at every step: its loss can only fall by learning
    table.write_text(lines[0] + "".join(str(ROOT / "data/shapes") + "/" + line for line in lines[1:9]))
    run = student_run(tmp_path, "other", f"data.train={table}", "model.image_size=48", "model.tokenizer=byte",
                      "data.augment=false", "train.max_steps=10", "optim.warmup_steps=0", "optim.lr=2e-3",
                      f"distill.teacher={teacher}", "distill.weight=1", "distill.temperature=2")
    assert "sees the student's crop at 32 px" in capsys.readouterr().out
    values = losses(run)
    assert all(torch.isfinite(torch.tensor(values))) and values[0] > 1e-3
    assert values[-1] < 0.5 * values[0]


def test_a_missing_teacher_fails_in_one_line_before_the_run_directory(tmp_path):
    with pytest.raises(contrastive.ConfigError, match=r"^distill.teacher=\S+nope: ") as e:
        student_run(tmp_path, "run", "train.max_steps=1", f"distill.teacher={tmp_path / 'nope'}")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_teacher_view_renormalises_exactly_at_equal_size():
    """At equal resolution the view equals the teacher's own transform of the same crop (other mean/std)."""
    image = Image.fromarray(torch.randint(0, 256, (40, 52, 3), dtype=torch.uint8).numpy())
    student = ModelConfig(image_size=32)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    ours = ImageTransform(32, student.image_mean, student.image_std, train=False)(image)[None]
    theirs = ImageTransform(32, mean, std, train=False)(image)[None]
    torch.testing.assert_close(TeacherView(student, 32, mean, std)(ours), theirs, rtol=1e-5, atol=1e-5)
    assert TeacherView(student, 32, student.image_mean, student.image_std)(ours) is ours


def test_teacher_view_resizes_to_the_teachers_resolution():
    """At another resolution the view is close to the teacher's own transform (same crop, resized twice)."""
    image = Image.new("RGB", (64, 64), (200, 30, 90))
    image.paste((10, 220, 40), (0, 0, 32, 64))  # two flat halves: resizing keeps the colours away from the edge
    student = ModelConfig(image_size=32)
    ours = ImageTransform(32, student.image_mean, student.image_std, train=False)(image)[None]
    theirs = ImageTransform(48, [0.5] * 3, [0.5] * 3, train=False)(image)[None]
    view = TeacherView(student, 48, [0.5] * 3, [0.5] * 3)(ours)
    assert view.shape == (1, 3, 48, 48)
    torch.testing.assert_close(view[..., 4:20], theirs[..., 4:20], rtol=0, atol=2e-2)
    torch.testing.assert_close(view[..., 28:44], theirs[..., 28:44], rtol=0, atol=2e-2)
