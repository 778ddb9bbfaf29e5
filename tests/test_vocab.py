"""model.tokenizer=auto and model.context_length=0: the vocabulary and context a run learns from its captions."""

import json

import pytest
import torch

from contrastive.errors import ConfigError
from contrastive.config import DataConfig, ModelConfig, load_config
from contrastive.text.vocab import fit_context, prepare_text, token_lengths, training_captions


def write_table(tmp_path, captions):
    rows = ["image,caption"] + [f"{i}.png,\"{c}\"" for i, c in enumerate(captions)]
    path = tmp_path / "train.csv"
    path.write_text("\n".join(rows) + "\n")
    return DataConfig(train=str(path), num_workers=0)


def test_fit_context_covers_the_share_asked_and_rounds_to_8():
    lengths = [5] * 998 + [30, 200]
    assert fit_context(lengths, coverage=0.998) == 8  # the two long ones may be cut
    assert fit_context(lengths, coverage=0.999) == 32
    assert fit_context(lengths, coverage=1.0) == 77  # capped at CLIP's context
    assert fit_context([9]) == 16


def test_auto_learns_whole_words_and_fits_the_context(tmp_path):
    words = ["alarm", "database", "scooter", "anchor", "arrow", "plus", "minus", "down"]
    captions = [f"{a} {b}" for a in words for b in words if a != b] * 3
    data = write_table(tmp_path, captions)
    model_cfg, tok, report = prepare_text(ModelConfig(tokenizer="auto", context_length=0), data)
    ids = tok(["alarm plus"])[0].tolist()
    # start, 'alarm', ' plus', end, then padding: two words, two tokens (a byte tokenizer takes 10)
    assert ids[0] == tok.sot_token_id and ids[3] == tok.eot_token_id and ids[4] == tok.pad_token_id
    assert model_cfg.context_length == report.context_length == 8
    assert report.truncated == 0 and report.captions == len(captions)
    assert tok.vocab_size < 8192  # stops when the captions hold no more merges
    assert tok.eot_token_id == tok.vocab_size - 1


def test_fixed_context_reports_and_warns_when_over_1_percent_are_cut(tmp_path, capsys):
    captions = ["a cat"] * 90 + ["a very long caption that the small context cannot hold at all"] * 10
    data = write_table(tmp_path, captions)
    _, _, report = prepare_text(ModelConfig(tokenizer="byte", context_length=16), data)
    warning = capsys.readouterr().err
    assert warning.startswith("warning: 10.0% of the training captions") and warning.count("\n") == 1
    assert report.truncated == 10 and report.context_length == 16
    _, _, report = prepare_text(ModelConfig(tokenizer="byte", context_length=0), data)
    assert capsys.readouterr().err == ""
    assert report.truncated == 0 and report.context_length == 64  # 61 bytes + start + end, rounded up to 8


def test_token_lengths_count_before_truncation(tmp_path):
    data = write_table(tmp_path, ["abc", "abcdefgh"])
    _, tok, _ = prepare_text(ModelConfig(tokenizer="byte", context_length=4), data)
    assert token_lengths(tok, ["abc", "abcdefgh"]) == [5, 10]
    assert tok(["abcdefgh"]).shape == (1, 4)  # the tokenizer itself still cuts


def test_training_captions_flatten_lists_and_sample(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"image": f"{i}.png", "caption": [f"x{i}", f"y{i}"]}) + "\n" for i in range(50)))
    data = DataConfig(train=str(path), num_workers=0)
    assert len(training_captions(data)) == 100
    sample = training_captions(data, limit=10)
    assert len(sample) == 10 and sample == training_captions(data, limit=10)  # seeded


def test_auto_without_data_is_a_config_error():
    from contrastive.model import create_model

    with pytest.raises(ConfigError, match="tokenizer=auto is learned from the training captions"):
        create_model(ModelConfig(tokenizer="auto"))


@pytest.mark.parametrize("override, match", [("model.context_length=1", "context_length"),
                                             ("model.context_length=-3", "context_length"),
                                             ("model.tokenizer_vocab_size=100", "tokenizer_vocab_size")])
def test_bad_text_settings_are_one_line_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_run_stores_the_learned_vocabulary_and_resume_keeps_it(tmp_path, repo_root):
    """The checkpoint holds the tokenizer the run learned; load() gives back the same ids; the resumed run uses it
    even when the training captions have changed since."""
    from contrastive import load
    from contrastive.training.recipe import train

    captions = [f"{c} {s}" for c in ("red", "green", "blue", "black") for s in ("circle", "square", "star", "heart")]
    from PIL import Image

    rows = ["image,caption"]
    for i, c in enumerate(captions * 2):
        Image.new("RGB", (16, 16), (i * 7 % 255, i * 13 % 255, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{c}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    common = ["model.image_encoder_args={layers: 1}", "model.text_encoder_args={layers: 1}", "model.image_size=16",
              f"data.train={tmp_path / 'train.csv'}", "data.val=", "data.num_workers=0", "train.batch_size=8",
              "train.progress_bar=false", f"train.output_dir={tmp_path / 'runs'}", "train.run_name=r",
              "train.save_every_n_steps=2"]
    run = train(load_config(repo_root / "configs/shapes_tiny.yaml", common + ["train.max_steps=2"]))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["text"]["context_length"] == 8 and summary["text"]["truncated"] == 0
    model, _, tok = load(run)
    assert tok(["red circle"])[0, :4].tolist() == [tok.sot_token_id, tok.tokenizer.token_to_id("red"),
                                                   tok.tokenizer.token_to_id("Ġcircle"), tok.eot_token_id]
    saved_vocab = tok.tokenizer.to_str()
    # other captions now: a fresh vocabulary would differ, a resumed run must not change it
    (tmp_path / "train.csv").write_text("\n".join(["image,caption"] + [f"{i}.png,zebra crossing number {i}"
                                                                       for i in range(16)]) + "\n")
    run = train(load_config(repo_root / "configs/shapes_tiny.yaml", common + ["train.max_steps=4", "train.resume=true"]))
    _, _, tok2 = load(run)
    assert tok2.tokenizer.to_str() == saved_vocab
