"""Tokenizers that need no download: byte-level by default, or a BPE file; HF tokenizers by name.

Every tokenizer is called as `tokenizer(list[str])` and returns exactly what `ContrastiveModel.encode_text` takes:
a (B, context_length) LongTensor for the built-in text tower (a dict of tensors for HF towers).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typing import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

PAD, SOT, EOT = "<|pad|>", "<|startoftext|>", "<|endoftext|>"


def byte_level_tokenizer() -> Tokenizer:
    """A byte-level tokenizer (every UTF-8 byte is one token; pad, start, end follow at 256, 257, 258).

    End-of-text is the highest id, as in CLIP's vocabulary. Text is NFC-normalised, lowercased and its whitespace
    collapsed, as CLIP's tokenizer does.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = sorted(alphabet, key=lambda c: _char_byte(c))
    vocab = {c: i for i, c in enumerate(byte_to_char)}
    vocab.update({PAD: 256, SOT: 257, EOT: 258})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    _finish(tok)
    return tok


def _char_byte(c: str) -> int:
    """Inverse of the GPT-2 byte->unicode table used by tokenizers' ByteLevel."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(map(chr, cs), bs))[c]


def _pipeline(tok: Tokenizer) -> None:
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Lowercase(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    )
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()


def _finish(tok: Tokenizer) -> None:
    _pipeline(tok)
    tok.add_special_tokens([PAD, SOT, EOT])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SOT} $A {EOT}", special_tokens=[(SOT, tok.token_to_id(SOT)), (EOT, tok.token_to_id(EOT))]
    )


def train_bpe(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE on `texts` with the byte tokenizer's normalisation and pre-tokenisation.

    Every byte stays a token (any text encodes); the special tokens take the last three ids, so end-of-text is the
    highest id and the vocabulary holds exactly `vocab_size` tokens.
    """
    if vocab_size < 256 + 3:
        raise ValueError(f"vocab size {vocab_size} is below the 256 bytes + 3 special tokens")
    tok = Tokenizer(models.BPE())
    _pipeline(tok)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 3, min_frequency=min_frequency, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer)
    _finish(tok)
    return tok


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer` with a fixed context length, padding and truncation (counted)."""

    def __init__(self, tokenizer: Tokenizer, context_length: int, spec: str = "byte") -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.spec = spec
        self.pad_token_id = tokenizer.token_to_id(PAD)
        self.sot_token_id = tokenizer.token_to_id(SOT)
        self.eot_token_id = tokenizer.token_to_id(EOT)
        if None in (self.pad_token_id, self.sot_token_id, self.eot_token_id):
            raise ValueError(f"tokenizer '{spec}' lacks the special tokens {PAD}, {SOT}, {EOT}")
        tokenizer.enable_truncation(max_length=context_length)
        tokenizer.enable_padding(length=context_length, pad_id=self.pad_token_id, pad_token=PAD)
        self.num_texts = 0
        self.num_truncated = 0

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        encodings = self.tokenizer.encode_batch(list(texts))
        self.num_texts += len(encodings)
        self.num_truncated += sum(1 for e in encodings if e.overflowing)
        # keep end-of-text on truncated rows so pooling sees it
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)  # (B, context_length)
        return ids

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.tokenizer.decode_batch([[i for i in row.tolist()] for row in ids], skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        Path(directory, "tokenizer.json").write_text(self.tokenizer.to_str())


def build_tokenizer(spec: str, context_length: int, trust_remote_code: bool = False):
    """`byte` | `bpe:<tokenizer.json>` | `hf:<dir or id>` -> a callable tokenizer. `trust_remote_code` lets an HF
    tokenizer run code shipped with it."""
    if context_length <= 0 and not spec.startswith("hf:"):
        context_length = 77
    if spec == "byte":
        return TextTokenizer(byte_level_tokenizer(), context_length, spec)
    if spec.startswith("bpe:"):
        path = Path(spec[4:])
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return TextTokenizer(Tokenizer.from_str(path.read_text()), context_length, f"bpe:{path}")
    if spec.startswith("hf:"):
        from .hf_tokenizer import HFTokenizer  # transformers is only needed for HF tokenizers

        return HFTokenizer(spec[3:], context_length, trust_remote_code=trust_remote_code)
    raise ValueError(f"unknown tokenizer '{spec}' (use byte, bpe:<tokenizer.json> or hf:<dir or id>)")


def load_tokenizer_file(path: str | Path, context_length: int) -> TextTokenizer:
    """A tokenizer saved with a checkpoint (tokenizer.json)."""
    return TextTokenizer(Tokenizer.from_str(Path(path).read_text()), context_length, "bpe:" + json.dumps(str(path)))
