"""The text side a run starts with: `model.tokenizer=auto` learns a BPE vocabulary from the training captions, and
`model.context_length=0` fits the context to them; either way the share of captions cut is reported at start-up.

Why a learned vocabulary by default: a byte tokenizer makes the text tower spell every word out of letters, which a
small model trained for a few hundred steps does not manage (on real captions it retrieved a third as well as the
same model with a word vocabulary; see docs/benchmarks.md). A BPE trained on the run's own captions takes seconds,
needs no download and is stored in the run and in every checkpoint, so `load()` and `export` use exactly it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import ConfigError, DataError
from ..config import DataConfig, ModelConfig

MAX_CAPTIONS = 200_000  # captions read to learn the vocabulary and measure lengths (a seeded sample beyond that)
MAX_SHARD_CAPTIONS = 50_000  # of webdataset shards: the first ones (reading a shard reads its images too)
MAX_AUTO_CONTEXT = 77  # CLIP's context; auto never picks more
AUTO_COVERAGE = 0.999  # share of captions the auto context must hold whole
TRUNCATION_WARN = 0.01  # warn when more than this share of the captions is cut


@dataclass
class CaptionReport:
    """What start-up measured of the training captions under the run's tokenizer and context."""

    captions: int  # captions measured (a sample on large sets)
    context_length: int
    truncated: int  # of which longer than the context
    longest: int  # tokens of the longest caption, start/end included
    vocab_size: int

    @property
    def truncated_fraction(self) -> float:
        return self.truncated / max(self.captions, 1)

    def line(self) -> str:
        return (f"text: vocabulary {self.vocab_size}, context {self.context_length}; "
                f"{self.truncated} of {self.captions} training captions cut ({100 * self.truncated_fraction:.1f}%, "
                f"longest {self.longest} tokens)")


def training_captions(data_cfg: DataConfig, limit: int = MAX_CAPTIONS, seed: int = 0) -> list[str]:
    """The training set's captions (every caption of list columns), a seeded sample of `limit` beyond that; of
    several sources, each source's (their share of `limit` by weight)."""
    sources = data_cfg.train_sources()
    if len(sources) == 1:
        return _source_captions(data_cfg.for_source(sources[0]), limit, seed)
    total = sum(s.weight for s in sources)
    return [c for s in sources for c in _source_captions(data_cfg.for_source(s), max(1, int(limit * s.weight / total)), seed)]


def _source_captions(data_cfg: DataConfig, limit: int, seed: int) -> list[str]:
    """The captions of data_cfg.train (one source)."""
    from ..data.sources import iter_captions, open_hf_dataset, detect_format

    fmt = data_cfg.format or detect_format(data_cfg.train)
    if fmt in ("csv", "tsv", "jsonl", "parquet"):  # a table of more rows gives the captions of `limit` rows
        captions = list(iter_captions(data_cfg.train, data_cfg.caption_key, fmt, limit=limit, seed=seed))
    elif fmt == "hf":
        ds = open_hf_dataset(data_cfg.train, data_cfg.split)
        if data_cfg.caption_key not in ds.column_names:
            raise ConfigError(f"{data_cfg.train}: no column '{data_cfg.caption_key}'; set data.caption_key")
        column = ds[data_cfg.caption_key] if len(ds) <= limit else ds.select(
            random.Random(seed).sample(range(len(ds)), limit))[data_cfg.caption_key]
        captions = [c for v in column for c in (v if isinstance(v, (list, tuple)) else [v])
                    if isinstance(c, str) and c.strip()]
    elif fmt == "webdataset":
        captions = _shard_captions(data_cfg, min(limit, MAX_SHARD_CAPTIONS))
    else:
        raise ConfigError(f"data.format={fmt!r}: cannot read its captions")
    if not captions:
        raise ConfigError(f"{data_cfg.train} holds no usable caption (data.caption_key={data_cfg.caption_key!r})")
    if len(captions) > limit:
        captions = random.Random(seed).sample(captions, limit)
    return captions


def _shard_captions(data_cfg: DataConfig, limit: int) -> list[str]:
    """The first `limit` captions of the shards, in shard order (each shard read from its start)."""
    from ..data.shards import DEFAULT_CAPTION_EXTS, _exts, expand_shards, iter_groups

    exts = _exts(data_cfg.caption_key, "caption", DEFAULT_CAPTION_EXTS)
    captions: list[str] = []
    for url in expand_shards(data_cfg.train):
        for n, (key, group) in enumerate(iter_groups(url)):
            if group is None and n == 0:  # not a tar file at all: say so, not "no usable caption"
                raise DataError(f"{url}: not a readable tar file ({key})")
            for ext in exts:
                if group is not None and ext in group:
                    text = group[ext].decode("utf-8", errors="replace").strip()
                    if text:
                        captions.append(text)
                    break
            if len(captions) >= limit:
                return captions
    return captions


def token_lengths(tokenizer: Callable, captions: list[str]) -> list[int]:
    """Tokens of each caption with start/end tokens, before truncation."""
    from .tokenizer import TextTokenizer

    if isinstance(tokenizer, TextTokenizer):
        from tokenizers import Tokenizer

        raw = Tokenizer.from_str(tokenizer.tokenizer.to_str())  # a copy without truncation and padding
        raw.no_truncation()
        raw.no_padding()
        return [len(e.ids) for e in raw.encode_batch(captions)]
    hf = tokenizer.hf_tokenizer
    return [len(ids) for ids in hf(captions, truncation=False, padding=False, verbose=False)["input_ids"]]


def fit_context(lengths: list[int], coverage: float = AUTO_COVERAGE, cap: int = MAX_AUTO_CONTEXT,
                multiple: int = 8) -> int:
    """The smallest multiple of `multiple` that holds `coverage` of the captions whole, at most `cap`."""
    ordered = sorted(lengths)
    need = ordered[min(len(ordered) - 1, math.ceil(coverage * len(ordered)) - 1)]
    return min(cap, -(-need // multiple) * multiple)


def prepare_text(model_cfg: ModelConfig, data_cfg: DataConfig, saved_tokenizer: Path | None = None,
                 captions: list[str] | None = None) -> tuple[ModelConfig, Callable, CaptionReport]:
    """(model config with the context resolved, tokenizer, report) for a run.

    `saved_tokenizer`: the tokenizer.json a resumed run already learned (used instead of learning again).
    """
    from .tokenizer import TextTokenizer, build_tokenizer, load_tokenizer_file, train_bpe

    if captions is None:
        captions = training_captions(data_cfg)
    provisional = model_cfg.context_length or 2  # lengths are measured uncut; the context is set below
    if model_cfg.tokenizer == "auto":
        if saved_tokenizer is not None and saved_tokenizer.is_file():
            tokenizer = load_tokenizer_file(saved_tokenizer, provisional)
        else:
            tokenizer = TextTokenizer(train_bpe(captions, model_cfg.tokenizer_vocab_size, model_cfg.tokenizer_min_frequency), provisional, "auto")
    else:
        try:
            tokenizer = build_tokenizer(model_cfg.tokenizer, provisional, model_cfg.trust_remote_code)
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"model.tokenizer: {e}") from None
    lengths = token_lengths(tokenizer, captions)
    context = model_cfg.context_length
    if context == 0:
        limit = getattr(getattr(tokenizer, "hf_tokenizer", None), "model_max_length", MAX_AUTO_CONTEXT)
        context = fit_context(lengths, cap=min(MAX_AUTO_CONTEXT, limit or MAX_AUTO_CONTEXT))
    tokenizer = _with_context(tokenizer, context)
    report = CaptionReport(len(lengths), context, sum(n > context for n in lengths), max(lengths), tokenizer.vocab_size)
    if report.truncated_fraction > TRUNCATION_WARN:
        print(f"warning: {100 * report.truncated_fraction:.1f}% of the training captions are longer than "
              f"model.context_length={context} tokens and will be cut (longest {report.longest}); raise it or set "
              "model.context_length=0 to fit it to the captions", file=sys.stderr, flush=True)
    return dataclasses.replace(model_cfg, context_length=context), tokenizer, report


def _with_context(tokenizer, context: int):
    """The same tokenizer at context length `context`."""
    from .hf_tokenizer import HFTokenizer
    from .tokenizer import TextTokenizer

    if isinstance(tokenizer, TextTokenizer):
        return TextTokenizer(tokenizer.tokenizer, context, tokenizer.spec)
    if isinstance(tokenizer, HFTokenizer):
        tokenizer.context_length = context
        return tokenizer
    raise TypeError(f"unknown tokenizer type {type(tokenizer).__name__}")
