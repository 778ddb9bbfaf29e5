"""transformers formats both ways: load / init_from CLIPModel and VisionTextDualEncoderModel directories, export to
them; embeddings agree with transformers' own to 1e-5 (fp32)."""

import subprocess

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import contrastive
from contrastive.errors import CheckpointError
from contrastive.config import load_config
from contrastive.encoders import TextTransformer, VisionTransformer
from contrastive.interop.hf_export import export_hf
from contrastive.training.recipe import train
from tests.conftest import PYTHON, ROOT, subprocess_env
from tests.helpers.hf_models import save_clip, save_dual_encoder, save_tower
from tests.helpers.overrides import small_run

CAPTIONS = ["a red heart on the right", "two small blue squares", "x"]  # within every context length used


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each (conftest)


def features(out):
    # transformers 5: an output object with the projected features in pooler_output; 4.x: the tensor
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def assert_same_embeddings(model, tokenizer, hf_dir, size=32, atol=1e-5):
    from transformers import AutoModel, AutoProcessor

    hf = AutoModel.from_pretrained(str(hf_dir)).eval()
    processor = AutoProcessor.from_pretrained(str(hf_dir))
    pixels = torch.randn(3, 3, size, size)
    theirs_img = F.normalize(features(hf.get_image_features(pixel_values=pixels)), dim=-1)
    theirs_txt = F.normalize(features(hf.get_text_features(**processor.tokenizer(CAPTIONS, padding=True, return_tensors="pt"))), dim=-1)
    torch.testing.assert_close(model.encode_image(pixels), theirs_img, rtol=0, atol=atol)
    torch.testing.assert_close(model.encode_text(tokenizer(CAPTIONS)), theirs_txt, rtol=0, atol=atol)
    torch.testing.assert_close(model.logit_scale.exp(), hf.logit_scale.exp().reshape(()), rtol=0, atol=1e-6)
    return hf, processor


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_load_clip_dir_matches_transformers(tmp_path, act):
    clip = save_clip(tmp_path / "clip", act=act)
    model, preprocess, tokenizer = contrastive.load(clip)
    assert isinstance(model.image_encoder, VisionTransformer) and isinstance(model.text_encoder, TextTransformer)
    assert model.image_encoder.act == act
    assert_same_embeddings(model, tokenizer, clip)
    with Image.open(ROOT / "data/shapes/images/val/00000.jpg") as img:
        assert preprocess(img).shape == (3, 32, 32)


def test_load_dual_encoder_dir_matches_transformers(tmp_path):
    vtde = save_dual_encoder(tmp_path / "vtde", vision="vit", text="bert")
    model, _, tokenizer = contrastive.load(vtde)
    assert model.image_encoder.pooling == model.text_encoder.pooling == "pooler"
    assert_same_embeddings(model, tokenizer, vtde)


def test_init_from_clip_dir_then_fine_tune(tmp_path):
    clip = save_clip(tmp_path / "clip")
    # learning rate 0: the trained model must still be exactly the CLIP model
    run = small_run(tmp_path, f"model.init_from={clip}", "optim.lr=0", "optim.warmup_steps=0", name="frozen")
    saved = load_config(run / "config.yaml").model
    assert saved.embed_dim == 16 and saved.text_encoder_args["width"] == 32 and saved.tokenizer == f"hf:{clip}"
    model, _, tokenizer = contrastive.load(run)
    assert_same_embeddings(model, tokenizer, clip)
    # a real rate moves the weights away from it
    moved = contrastive.load(small_run(tmp_path, f"model.init_from={clip}", "optim.lr=1e-2", "optim.warmup_steps=0",
                                       name="moved"))[0]
    assert not torch.equal(moved.image_encoder.encoder.layers[0].mlp.fc1.weight, model.image_encoder.encoder.layers[0].mlp.fc1.weight)


def test_recipe_a_fine_tune_clip_dir_and_export_back(tmp_path):
    clip = save_clip(tmp_path / "clip")
    cfg = load_config(ROOT / "configs/finetune_hf_clip.yaml", [
        f"model.init_from={clip}", "train.batch_size=8", "train.max_steps=2", "train.epochs=0", "data.val=",
        "data.num_workers=0", "train.progress_bar=false", f"train.output_dir={tmp_path}", "train.run_name=ft",
        "optim.lr=1e-3", "optim.warmup_steps=0"])
    run = train(cfg)
    model, _, tokenizer = contrastive.load(run)
    out = tmp_path / "export"
    diffs = export_hf(run, out)
    assert max(diffs["image"], diffs["text"]) < 1e-5
    hf, processor = assert_same_embeddings(model, tokenizer, out)
    assert type(hf).__name__ == "CLIPModel" and type(processor).__name__ == "CLIPProcessor"


def test_export_builtin_towers_to_clip_model(tmp_path):
    run = small_run(tmp_path, "optim.lr=1e-2")
    model, preprocess, tokenizer = contrastive.load(run)
    out = tmp_path / "export"
    export_hf(run, out)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    hf, processor = assert_same_embeddings(model, tokenizer, out)
    assert type(hf).__name__ == "CLIPModel"
    # the processor does the toolkit's eval transform (resampling kernels differ slightly)
    with Image.open(ROOT / "data/shapes/images/val/00003.jpg") as img:
        ours = preprocess(img)
        theirs = processor(images=img, return_tensors="pt")["pixel_values"][0]
    assert theirs.shape == ours.shape and (theirs - ours).abs().mean() < 0.05
    ids = processor.tokenizer("a b")["input_ids"]  # start, the words, end: then the toolkit's padding
    assert ids == tokenizer(["a b"])[0, :len(ids)].tolist() and int(tokenizer(["a b"])[0, len(ids)]) == tokenizer.pad_token_id
    # and back: the exported directory loads as the same model
    again, _, tok2 = contrastive.load(out)
    torch.testing.assert_close(again.encode_text(tok2(CAPTIONS)), model.encode_text(tokenizer(CAPTIONS)), rtol=0, atol=1e-6)


def test_export_hf_and_mixed_towers_to_dual_encoder(tmp_path):
    bert = save_tower("bert", tmp_path / "bert")
    vit = save_tower("vit", tmp_path / "vit")
    for name, image in (("hf", f"hf:{vit}"), ("mixed", "vit_tiny")):
        image_args = "{pooling: pooler}" if name == "hf" else "{layers: 1}"
        run = small_run(tmp_path, f"model.image_encoder={image}", f"model.text_encoder=hf:{bert}",
                        f"model.tokenizer=hf:{bert}", "model.context_length=32", f"model.image_encoder_args={image_args}",
                        "model.text_encoder_args={pooling: pooler}", name=name)
        model, _, tokenizer = contrastive.load(run)
        out = tmp_path / f"export-{name}"
        export_hf(run, out)
        hf, processor = assert_same_embeddings(model, tokenizer, out)
        assert type(hf).__name__ == "VisionTextDualEncoderModel"
        assert type(processor).__name__ == "VisionTextDualEncoderProcessor"
        again, _, tok2 = contrastive.load(out)  # the export imports back
        torch.testing.assert_close(again.encode_text(tok2(CAPTIONS)), model.encode_text(tokenizer(CAPTIONS)), rtol=0, atol=1e-6)


def test_export_of_a_mean_pooled_text_tower_adds_a_sentence_transformers_folder(tmp_path):
    """transformers' dual encoder applies BERT's pooler; the mean-pooled text side goes out through
    sentence-transformers with the model's own text embeddings."""
    from sentence_transformers import SentenceTransformer

    bert = save_tower("bert", tmp_path / "bert")
    run = small_run(tmp_path, f"model.text_encoder=hf:{bert}", f"model.tokenizer=hf:{bert}", "model.context_length=32",
                    "model.text_encoder_args={pooling: mean}")
    diffs = export_hf(run, tmp_path / "export")
    assert diffs["text"] < 1e-5 and diffs["image"] < 1e-5
    model, _, tokenizer = contrastive.load(run)
    with torch.no_grad():
        ours = model.encode_text(tokenizer(CAPTIONS))
    theirs = SentenceTransformer(str(tmp_path / "export" / "text_sentence_transformers"), device="cpu").encode(
        CAPTIONS, convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_export_refuses_image_poolings_transformers_cannot_apply(tmp_path):
    vit = save_tower("vit", tmp_path / "vit")
    run = small_run(tmp_path, f"model.image_encoder=hf:{vit}", "model.image_encoder_args={pooling: mean}")
    with pytest.raises(CheckpointError, match="pooling=pooler"):
        export_hf(run, tmp_path / "export")


def test_export_refuses_a_logit_bias(tmp_path):
    run = small_run(tmp_path, "loss.name=siglip", "model.init_logit_bias=-10", "model.init_logit_scale=2.3026")
    with pytest.raises(CheckpointError, match="logit bias"):
        export_hf(run, tmp_path / "export")
    assert not (tmp_path / "export").exists()


@pytest.mark.slow  # a subprocess importing torch and transformers
def test_cli_export(tmp_path, capsys):
    run = small_run(tmp_path)
    ok = subprocess.run([PYTHON, "-m", "contrastive", "export", "--checkpoint", str(run), "--output", str(tmp_path / "out")],
                        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "verified" in ok.stdout and (tmp_path / "out" / "config.json").is_file()
    from contrastive.cli import main

    assert main(["export", "--checkpoint", str(tmp_path / "none"), "--output", str(tmp_path / "out2")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_export_refuses_outputs_that_would_destroy_data(tmp_path, capsys):
    from contrastive.interop.checkpoint import latest_checkpoint
    from contrastive.cli import main

    run = small_run(tmp_path)
    ckpt = latest_checkpoint(run / "checkpoints")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (tmp_path / "a_file").write_text("a file")
    refused = {ckpt: "would replace the checkpoint", run: "would replace the checkpoint",
               run / "checkpoints": "would replace the checkpoint", run / "export": "inside the run",
               ckpt / "export": "inside the run", mine: "not empty", tmp_path / "a_file": "is a file"}
    for output, expected in refused.items():
        assert main(["export", "--checkpoint", str(run), "--output", str(output), "--no-verify"]) == 2, output
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], (output, err)
    # the checkpoint itself as the source, its own folder as the output, even with --overwrite
    assert main(["export", "--checkpoint", str(ckpt), "--output", str(ckpt), "--overwrite"]) == 2
    assert "would replace the checkpoint" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert (mine / "notes.txt").read_text() == "keep me" and not (run / "export").exists()
    # --overwrite replaces the folder as a whole, through a hidden temporary sibling that does not stay
    assert main(["export", "--checkpoint", str(run), "--output", str(mine), "--overwrite", "--no-verify"]) == 0
    assert (mine / "config.json").is_file() and not (mine / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "a_file", "mine", "run"]


def test_failed_export_leaves_the_output_as_it_was(tmp_path, monkeypatch):
    import contrastive.interop.hf_export as hf_export

    run = small_run(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old export")

    def fail(*args, **kwargs):
        raise CheckpointError("exported model disagrees")

    monkeypatch.setattr(hf_export, "compare_embeddings", fail)
    with pytest.raises(CheckpointError, match="disagrees"):
        export_hf(run, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "out", "run"]
