import torch

from contrastive.text.tokenizer import build_tokenizer


def test_byte_tokenizer_fixed_length_and_specials():
    tok = build_tokenizer("byte", 32)
    ids = tok(["a red circle", "Ünïcödé  text"])
    assert ids.shape == (2, 32) and ids.dtype == torch.long
    assert (ids[:, 0] == tok.sot_token_id).all()
    assert (ids == tok.eot_token_id).sum(1).tolist() == [1, 1]
    assert tok.eot_token_id == tok.vocab_size - 1  # highest id, as CLIP's vocabulary
    assert tok.decode(ids) == ["a red circle", "ünïcödé text"]


def test_truncation_keeps_eot_and_is_counted():
    tok = build_tokenizer("byte", 8)
    ids = tok(["short", "a caption much longer than eight tokens"])
    assert ids[1, -1] == tok.eot_token_id
    assert tok.num_truncated == 1 and tok.num_texts == 2


def test_bpe_file_roundtrip(tmp_path):
    tok = build_tokenizer("byte", 12)
    tok.save(tmp_path)
    again = build_tokenizer(f"bpe:{tmp_path / 'tokenizer.json'}", 12)
    assert torch.equal(tok(["hello there"]), again(["hello there"]))


def test_tokenizer_train_cli_makes_a_bpe_the_model_can_use(tmp_path):
    import subprocess

    from tests.conftest import PYTHON, ROOT, subprocess_env

    out = tmp_path / "tok"
    r = subprocess.run([PYTHON, "-m", "contrastive", "tokenizer", "train", "--data", str(ROOT / "data/shapes/train.csv"),
                        "--vocab-size", "400", "--output", str(out)], capture_output=True, text=True, env=subprocess_env(),
                       timeout=120)
    assert r.returncode == 0, r.stderr
    bpe, byte = build_tokenizer(f"bpe:{out}", 48), build_tokenizer("byte", 48)
    assert bpe.vocab_size == 400 and bpe.eot_token_id == 399  # specials last: end-of-text is the highest id
    text = ["A Large  RED circle in the top left", "ünïcödé ✓"]
    ids = bpe(text)
    assert bpe.decode(ids) == byte.decode(byte(text))  # same normalisation as the byte tokenizer
    assert (ids[0] != bpe.pad_token_id).sum() < (byte(text)[0] != byte.pad_token_id).sum() / 2  # merges learned


def test_tokenizer_train_rejects_tiny_vocab(tmp_path):
    from contrastive.cli import main

    assert main(["tokenizer", "train", "--data", "x.txt", "--vocab-size", "100", "--output", str(tmp_path)]) == 2
