import torch

from contrastive.tokenizer import build_tokenizer


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
