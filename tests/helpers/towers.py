"""The one vocabulary of model-size overrides the tests share (dotted config overrides)."""


def towers(layers: int, width: int | None = None, heads: int | None = None) -> list[str]:
    """Both built-in towers at `layers` blocks (and `width` / `heads` when given)."""
    args = ", ".join(f"{k}: {v}" for k, v in (("layers", layers), ("width", width), ("heads", heads)) if v is not None)
    return [f"model.image_encoder_args={{{args}}}", f"model.text_encoder_args={{{args}}}"]


TINY = [*towers(1, 32, 2), "model.embed_dim=16"]  # one block of width 32 per tower: the smallest that learns
BYTE_TEXT = ["model.tokenizer=byte", "model.context_length=32"]  # no vocabulary to learn at start-up
QUIET = ["data.num_workers=0", "train.progress_bar=false"]  # in-process loading, no bar in the captured output
