"""A transformers tokenizer behind the toolkit's tokenizer interface (`tokenizer(list[str]) -> batch`).

`HFTokenizer("<dir or id>", context_length)` returns a dict of (B, context_length) LongTensors (`input_ids`,
`attention_mask`), always padded to the context length so that batches stack and compiled graphs see one shape.
Like `TextTokenizer` it counts truncated captions and exposes `vocab_size`, `eot_token_id`, `pad_token_id`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import error_line


class HFTokenizer:
    """Wraps `transformers.AutoTokenizer.from_pretrained(path)` with a fixed length, padding and truncation."""

    def __init__(self, path: str | Path, context_length: int, spec: str | None = None,
                 trust_remote_code: bool = False) -> None:
        # DataLoader workers fork after the tokenizer has run; its thread pool must not be used across the fork
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoTokenizer

        from ..encoders.hf import resolve_hf_path

        self.path = resolve_hf_path(str(path))
        self.spec = spec or f"hf:{path}"
        from ..encoders.hub import HubUnavailable, is_hub_id, load_from_hub

        load = lambda: AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)  # noqa: E731
        try:
            self.hf_tokenizer = load_from_hub(load, f"tokenizer '{self.spec}'") if is_hub_id(self.path) and not Path(self.path).is_dir() else load()
        except HubUnavailable:
            raise
        except (OSError, ValueError) as e:
            if "trust_remote_code" in str(e) and not trust_remote_code:
                raise FileNotFoundError(f"tokenizer '{self.spec}': cannot load without running the code it ships; "
                                        "set model.trust_remote_code=true only if you trust it") from None
            raise FileNotFoundError(f"tokenizer '{self.spec}': cannot load ({error_line(e, 200)})") from None
        tok = self.hf_tokenizer
        max_len = getattr(tok, "model_max_length", None)
        if context_length <= 0:  # not fitted to captions: CLIP's 77, or less where the tokenizer allows less
            context_length = min(77, max_len) if max_len else 77
        if max_len is not None and max_len < context_length:
            raise ValueError(f"context length {context_length} exceeds the tokenizer's limit {max_len} ({self.spec})")
        self.context_length = context_length
        # end of text: CLIP-style tokenizers have an eos token; BERT-style ones end with [SEP]
        eot = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        self.eot_token_id = eot if eot is not None else len(tok) - 1
        self.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else self.eot_token_id
        if tok.pad_token_id is None:
            tok.pad_token = tok.convert_ids_to_tokens(self.pad_token_id)
        self.num_texts = 0
        self.num_truncated = 0

    @property
    def vocab_size(self) -> int:
        return len(self.hf_tokenizer)

    def __call__(self, texts: list[str] | str) -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        full = self.hf_tokenizer(texts, truncation=False, padding=False, verbose=False)["input_ids"]
        self.num_texts += len(texts)
        self.num_truncated += sum(1 for ids in full if len(ids) > self.context_length)
        batch = self.hf_tokenizer(texts, truncation=True, max_length=self.context_length, padding="max_length",
                                  return_tensors="pt")
        return {k: batch[k] for k in ("input_ids", "attention_mask")}  # each (B, context_length)

    def decode(self, ids: torch.Tensor | dict) -> list[str]:
        if isinstance(ids, dict):
            ids = ids["input_ids"]
        return self.hf_tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer's own files (tokenizer.json, tokenizer_config.json, ...) into `directory`."""
        self.hf_tokenizer.save_pretrained(str(directory))
