"""One sample and one batch: a sample's own seed, its decoding and transform (`load_sample`), and the collation
of samples into a batch (tokenized captions with their padding trimmed, content ids, bad-sample accounting).

The pieces every data backend shares (tables, HF datasets and WebDataset shards alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .bad import BadRecord, BadSample
from .images import ImageTransform, decode_image
from .sources import RawSample, pick_caption, stable_id


@dataclass
class Sample:
    pixels: torch.Tensor | None  # (3, S, S); None when no good sample was found in MAX_TRIES draws
    caption: str
    image_id: str
    bad: list[BadRecord] = field(default_factory=list)  # the samples skipped to get this one


def load_sample(raw: RawSample, transform: Callable, generator: torch.Generator, max_pixels: int) -> tuple[torch.Tensor, str]:
    """(pixels (3, S, S), caption) of one raw sample. Raises BadSample; nothing else escapes for a sample's sake."""
    caption = pick_caption(raw.captions, generator)
    min_side = transform.min_side if isinstance(transform, ImageTransform) else 0
    img = decode_image(raw.image, max_pixels, min_side)
    try:
        if isinstance(transform, ImageTransform):
            return transform(img, generator), caption
        with torch.random.fork_rng(devices=[]):  # a plain callable draws from the global RNG: seed it per sample
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
            return transform(img), caption
    except Exception as e:  # Pillow raises many types on odd files; a sample never stops the run
        raise BadSample("corrupt_image", f"{type(e).__name__}: {str(e)[:120]}") from None


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + position * 0xC2B2AE3D) % (2**63 - 1)


def padded_length(tokens: torch.Tensor | dict, pad_token_id: int | None, multiple: int = 8) -> int:
    """Columns a batch of captions needs: its longest caption rounded up to `multiple` (at most T); T when the
    padding cannot be told (no pad id, a dict without an attention mask, or left padding)."""
    if isinstance(tokens, dict):
        mask = tokens.get("attention_mask")
        if mask is None or mask.ndim != 2 or (mask[:, 0] == 0).any():  # no mask, or left padding: keep all
            return next(iter(tokens.values())).shape[1]
        longest, T = int(mask.sum(1).max()), mask.shape[1]
    else:
        T = tokens.shape[1]
        if pad_token_id is None or tokens.ndim != 2:
            return T
        real = tokens != pad_token_id  # (B, T)
        # each row's length: one past its last non-pad token
        lengths = torch.where(real.any(1), T - real.flip(1).int().argmax(1), torch.zeros_like(tokens[:, 0]))
        longest = int(lengths.max())
    return min(T, -(-max(longest, 1) // multiple) * multiple)


def trim_padding(tokens: torch.Tensor | dict, pad_token_id: int | None, multiple: int = 8) -> torch.Tensor | dict:
    """Drop the padding columns that every caption of a batch shares: (B, T) -> (B, L), L = `padded_length`.

    Text towers give the same features either way: the built-in ones attend causally and pool at end-of-text, so
    no kept token ever saw a dropped one; transformers towers mask padding out of attention and pooling. Token
    dicts (`input_ids`, `attention_mask`) are measured by the mask and trimmed only when padded on the right.
    """
    keep = padded_length(tokens, pad_token_id, multiple)
    if isinstance(tokens, dict):
        T = next(iter(tokens.values())).shape[1]
        return tokens if keep == T else {k: v[:, :keep].contiguous() if v.ndim == 2 else v for k, v in tokens.items()}
    return tokens if keep == tokens.shape[1] else tokens[:, :keep].contiguous()


def text_content_ids(tokens: torch.Tensor | dict, pad_token_id: int | None) -> torch.Tensor:
    """(B,) ids equal for captions that reach the text tower as the same tokens, on every process: what the
    tokenizer normalises away (case, whitespace) or truncation cuts off does not make two captions differ, since the
    model could not tell them apart. Padding is left out, so batches trimmed to other widths agree."""
    if isinstance(tokens, dict):
        ids, mask = tokens["input_ids"], tokens.get("attention_mask")  # (B, T)
        rows = list(ids) if mask is None else [r[m.bool()] for r, m in zip(ids, mask)]
    elif pad_token_id is None:
        rows = list(tokens)
    else:
        # each row up to one past its last non-pad token
        real = tokens != pad_token_id  # (B, T)
        lengths = torch.where(real.any(1), tokens.shape[1] - real.flip(1).int().argmax(1), 0)
        rows = [r[:n] for r, n in zip(tokens, lengths.tolist())]
    return torch.tensor([stable_id(" ".join(map(str, r.tolist()))) for r in rows], dtype=torch.long)


class Collate:
    """Stacks pixels, tokenizes captions (in the worker), trims the padding all captions share (`trim_padding`),
    derives content ids for duplicate-aware targets, and carries the skipped samples and truncation counts to the
    main process."""

    def __init__(self, tokenizer: Callable, trim: bool = True) -> None:
        self.tokenizer = tokenizer
        self.trim = trim

    def __call__(self, samples: list[Sample]) -> dict:
        bad = [b for s in samples for b in s.bad]
        good = [s for s in samples if s.pixels is not None]
        if not good:
            return {"bad": bad, "loads": len(bad), "failed": len(samples)}
        captions = [s.caption for s in good]
        truncated_before = getattr(self.tokenizer, "num_truncated", 0)
        tokens = self.tokenizer(captions)
        pad_token_id = getattr(self.tokenizer, "pad_token_id", None)
        if self.trim:
            tokens = trim_padding(tokens, pad_token_id)
        return {
            "pixels": torch.stack([s.pixels for s in good]),  # (B, 3, S, S)
            "tokens": tokens,  # (B, T) or dict of (B, T)
            "image_ids": torch.tensor([stable_id(s.image_id) for s in good], dtype=torch.long),  # (B,)
            "text_ids": text_content_ids(tokens, pad_token_id),  # (B,)
            "captions": captions,
            "bad": bad,
            "loads": len(good) + len(bad),
            "failed": len(samples) - len(good),
            "num_truncated": getattr(self.tokenizer, "num_truncated", 0) - truncated_before,
        }
