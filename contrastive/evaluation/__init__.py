"""Evaluation: retrieval and zero-shot metrics on embeddings (`metrics`), a model evaluated on a held-out table
(`evaluate`), the embedding loops they share (`embedding`), zero-shot caption ranking (`rank`) and pictures of runs
and rankings (`plots`)."""
