"""Config overrides shared by the end-to-end training tests: two-layer towers, no workers, a log line per step."""

FAST = [
    "model.image_encoder_args={layers: 2}",
    "model.text_encoder_args={layers: 2}",
    "data.num_workers=0",
    "train.progress_bar=false",
    "train.log_every_n_steps=1",
]
