"""The text side of a model: tokenizers (`tokenizer`: the byte tokenizer and BPE vocabularies; `hf_tokenizer`: a
transformers tokenizer behind the same interface) and the vocabulary a run learns from its training captions
(`vocab`)."""
