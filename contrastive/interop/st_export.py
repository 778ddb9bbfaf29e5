"""The text side of a model as a sentence-transformers folder: for HF text towers that pool with `mean` or `cls`.

transformers' dual encoders take the text model's `pooler_output` (BERT's dense + tanh head), so a tower trained
with mean pooling, as sentence-transformers models are, has no transformers counterpart with the same embeddings.
sentence-transformers has one: Transformer -> Pooling(mean | cls) -> Dense(the toolkit's projection, no bias, no
activation) -> Normalize. `SentenceTransformer(DIR).encode(captions)` then gives the toolkit's `encode_text`.
Needs `pip install sentence-transformers` (the `export` extra).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError


def write_sentence_transformer(tower, projection: nn.Linear, tokenizer, context_length: int, out: Path) -> None:
    """Save `tower` (an HFTower pooling with mean or cls), `projection` and the HF `tokenizer` to `out`."""
    try:
        from sentence_transformers import SentenceTransformer, models
    except ImportError:
        raise CheckpointError(f"the text tower pools with '{tower.pooling}', which transformers' dual encoder cannot "
                              "express; `pip install sentence-transformers` to export it as a sentence-transformers "
                              "folder") from None
    with tempfile.TemporaryDirectory() as tmp:
        tower.model.save_pretrained(tmp)
        tokenizer.hf_tokenizer.save_pretrained(tmp)
        body = models.Transformer(tmp, max_seq_length=context_length)
        pooling = models.Pooling(body.get_word_embedding_dimension(), pooling_mode=tower.pooling)
        dense = models.Dense(projection.in_features, projection.out_features, bias=False,
                             activation_function=nn.Identity())
        with torch.no_grad():
            dense.linear.weight.copy_(projection.weight)
        SentenceTransformer(modules=[body, pooling, dense, models.Normalize()], device="cpu").save(str(out))


@torch.no_grad()
def compare_text(model, tokenizer, folder: Path, captions: list[str]) -> float:
    """Max |difference| between the toolkit's normalised text embeddings and the folder's `encode`."""
    from sentence_transformers import SentenceTransformer

    theirs = SentenceTransformer(str(folder), device="cpu").encode(captions, convert_to_tensor=True)
    ours = model.encode_text(tokenizer(captions))
    return float((ours - theirs.to(ours.dtype)).abs().max())
