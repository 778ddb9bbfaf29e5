"""ONNX export: onnxruntime's embeddings against torch's at several batch sizes, the files a user needs beside the
graphs, the CLI's output rules, and a model torch cannot export."""

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import contrastive
from contrastive.errors import CheckpointError
from contrastive.cli import main
from contrastive.config import load_config
from contrastive.model import ContrastiveModel
from contrastive.interop.onnx_export import (
    IMAGE_FILE,
    SETTINGS_FILE,
    TEXT_FILE,
    OnnxEncoders,
    export_onnx,
    write_onnx,
)
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.helpers.hf_models import save_dual_encoder
from tests.helpers.overrides import small_run

CAPTIONS = ["a large green star at the bottom", "a red circle", "x", "two small blue squares on the left", "y z"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A 1+1-layer built-in model trained one step, exported through the CLI over a folder holding a file."""
    tmp = tmp_path_factory.mktemp("onnx")
    run = small_run(tmp)
    out = tmp / "onnx"
    out.mkdir()
    (out / "old.txt").write_text("replaced")
    proc = subprocess.run([PYTHON, "-m", "contrastive", "export", "--format", "onnx", "--checkpoint", str(run),
                           "--output", str(out), "--overwrite"], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    return run, out, proc.stdout


def assert_matches_torch(model, tokenizer, folder, size, batch_sizes=(1, 5)):
    onnx = OnnxEncoders(folder)
    for b in batch_sizes:
        pixels = torch.randn(b, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(onnx.encode_image(pixels), model.encode_image(pixels), rtol=0, atol=1e-4)
            tokens = tokenizer(CAPTIONS[:b])
            torch.testing.assert_close(onnx.encode_text(tokens), model.encode_text(tokens), rtol=0, atol=1e-4)
    return onnx


def test_builtin_model_matches_torch_at_two_batch_sizes(exported):
    run, out, stdout = exported
    assert "verified" in stdout and "max |diff|" in stdout
    model, preprocess, tokenizer = contrastive.load(run)
    onnx = assert_matches_torch(model, tokenizer, out, 32)
    # the folder alone rebuilds the preprocessing and the tokenizer: an image and captions give torch's embeddings
    with Image.open(ROOT / "data/shapes/images/val/00000.jpg") as img:
        pixels = onnx.preprocess(img)[None]
        torch.testing.assert_close(pixels, preprocess(img)[None])
    torch.testing.assert_close(onnx.tokenizer(CAPTIONS), tokenizer(CAPTIONS))
    settings = json.loads((out / SETTINGS_FILE).read_text())
    assert settings["image_size"] == 32 and settings["embed_dim"] == 16 and settings["text_inputs"] == ["input_ids"]
    assert (out / "tokenizer.json").is_file() and not list(out.glob("*.data"))  # small weights stay in the graph


def test_graphs_have_a_dynamic_batch_axis_and_normalised_outputs(exported):
    import onnx

    _, out, _ = exported
    for name, output in ((IMAGE_FILE, "image_embeds"), (TEXT_FILE, "text_embeds")):
        graph = onnx.load(str(out / name)).graph
        onnx.checker.check_model(onnx.load(str(out / name)))
        assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic, not a fixed size
        assert [o.name for o in graph.output] == [output]
    emb = OnnxEncoders(out).encode_image(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))


def test_transformers_towers_take_the_attention_mask(tmp_path):
    dual = save_dual_encoder(tmp_path / "vtde", vision="vit", text="bert")
    out = tmp_path / "onnx"
    diffs = export_onnx(dual, out)
    assert max(diffs.values()) <= 1e-4
    assert json.loads((out / SETTINGS_FILE).read_text())["text_inputs"] == ["input_ids", "attention_mask"]
    model, _, tokenizer = contrastive.load(dual)
    assert_matches_torch(model, tokenizer, out, 32)


class EighTower(nn.Module):
    """An image tower using an op (symmetric eigenvalues) that torch's ONNX exporter has no translation for."""

    output_dim = 4

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels[:, 0, :4, :4]  # (B, 4, 4)
        return torch.linalg.eigvalsh(x @ x.transpose(1, 2))  # (B, 4)


def test_a_model_that_cannot_be_exported_is_one_line(tmp_path):
    run = small_run(tmp_path)
    model, _, tokenizer = contrastive.load(run)
    bad = ContrastiveModel(EighTower(), model.text_encoder, 16)
    cfg = load_config(run / "config.yaml").model
    with pytest.raises(CheckpointError, match="the image encoder cannot be exported to ONNX") as info:
        write_onnx(bad, tokenizer, cfg, tmp_path / "out")
    assert "\n" not in str(info.value) and "eigh" in str(info.value)


def test_output_rules_and_errors_of_the_cli(exported, tmp_path, capsys):
    run, out, _ = exported
    assert sorted(p.name for p in out.iterdir()) == sorted([IMAGE_FILE, TEXT_FILE, SETTINGS_FILE, "tokenizer.json"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    cases = {mine: "not empty", run / "onnx": "inside the run", run / "checkpoints": "would replace the checkpoint",
             tmp_path / "x": None}
    for output, message in cases.items():
        checkpoint = tmp_path / "none" if message is None else run
        assert main(["export", "--format", "onnx", "--checkpoint", str(checkpoint), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and (message or "no such checkpoint") in err, err
    assert (mine / "notes.txt").read_text() == "keep me" and not (run / "onnx").exists()
    # a folder that is not an export, or a damaged one, is one line for the runtime too
    with pytest.raises(CheckpointError, match="holds no image_encoder.onnx"):
        OnnxEncoders(mine)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for p in out.iterdir():
        (damaged / p.name).write_bytes(p.read_bytes())
    (damaged / TEXT_FILE).write_bytes(b"not a graph")
    with pytest.raises(CheckpointError, match="onnxruntime cannot load it"):
        OnnxEncoders(damaged)


def test_embedding_a_collection_with_onnx_gives_torchs_arrays(exported, tmp_path):
    from safetensors.torch import load_file, save_file

    from contrastive.interop.checkpoint import resolve_checkpoint
    from contrastive.interop.onnx_export import with_onnx
    from contrastive.search import embed_collection, torch_encoder
    from contrastive.search.store import load_vectors, read_manifest
    from tests.search.helpers import shapes_table

    run, out, _ = exported
    table = shapes_table(tmp_path / "collection", 12, copy=True)
    encoder = torch_encoder(run, precision="fp32")
    embed_collection(str(table), tmp_path / "torch", encoder, batch_size=5, workers=0, dtype="float32", progress=False)
    proc = subprocess.run([PYTHON, "-m", "contrastive", "embed", "--checkpoint", str(run), "--onnx", str(out),
                           "--data", str(table), "--output", str(tmp_path / "onnx"), "--batch-size", "5",
                           "--workers", "0", "--dtype", "float32", "--no-progress"],
                          capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr
    manifests = {name: read_manifest(tmp_path / name) for name in ("torch", "onnx")}
    assert manifests["onnx"]["counts"]["embedded"] == 12 and manifests["onnx"]["model"] == manifests["torch"]["model"]
    for which in ("images", "texts"):
        np.testing.assert_allclose(load_vectors(tmp_path / "onnx", manifests["onnx"], which),
                                   load_vectors(tmp_path / "torch", manifests["torch"], which), rtol=0, atol=1e-4)
    # with_onnx is what the command plugs in: the same embeddings in Python
    onnx_encoder = with_onnx(encoder, out)
    pixels = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(onnx_encoder.encode_images(pixels), encoder.encode_images(pixels), rtol=0, atol=1e-4)
    # ONNX files of other weights (same architecture and preprocessing) are refused in one line
    other = tmp_path / "other"
    shutil.copytree(resolve_checkpoint(run), other)
    weights = load_file(other / "model.safetensors")
    save_file({k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v for k, v in weights.items()},
              other / "model.safetensors")
    with pytest.raises(CheckpointError, match="holds other encoders than") as info:
        with_onnx(torch_encoder(other, precision="fp32"), out)
    assert "\n" not in str(info.value)


def test_towers_without_a_transformers_counterpart_export_too(tmp_path):
    """A timm tower and a logit bias (both refused by the transformers format) are no obstacle to ONNX."""
    from contrastive.config import ModelConfig
    from contrastive.model import create_model

    cfg = ModelConfig(image_encoder="timm:test_resnet", tokenizer="byte", text_encoder_args={"layers": 1},
                      image_size=32, embed_dim=16, context_length=16, init_logit_bias=-10.0)
    model, tokenizer = create_model(cfg)
    diffs = write_onnx(model, tokenizer, cfg, tmp_path / "onnx")
    assert max(diffs.values()) <= 1e-4
    assert_matches_torch(model.eval(), tokenizer, tmp_path / "onnx", 32, batch_sizes=(2,))


def test_the_written_folder_has_the_usual_permissions(exported):
    import os

    umask = os.umask(0)
    os.umask(umask)
    assert exported[1].stat().st_mode & 0o777 == 0o777 & ~umask  # not the private mode of a temporary folder
