"""The earlier import path of `contrastive.interop.hf_export`."""

from .interop.hf_export import compare_embeddings, export_hf, export_summary  # noqa: F401
