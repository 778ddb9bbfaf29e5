"""Search an image collection with a trained model: embed it, index it with faiss, query it by text or image.

    contrastive embed --checkpoint runs/<run> --data images.csv --output emb/     # shards + metadata.parquet
    contrastive index emb/                                                        # exact or approximate (faiss)
    contrastive search --index emb/ --text "a red circle" --k 10 --grid hits.png

    from contrastive.search import Index
    hits = Index.load("emb/").search_text("a red circle", k=10)   # [Hit(rank, id, row, path, caption, score)]

Modules: `collection` (what can be embedded), `store` (the on-disk format), `embed` (the embedding job and the
`Encoder` it runs), `index` (faiss indexes and their recall), `query` (`Index`), `grid` (contact sheets).
"""

from .embed import Encoder, embed_collection, model_encoder, torch_encoder
from .index import IndexReport, build_collection_index, build_index, recall_at_k
from .query import Hit, Index

__all__ = ["Encoder", "Hit", "Index", "IndexReport", "build_collection_index", "build_index", "embed_collection",
           "model_encoder", "recall_at_k", "torch_encoder"]
