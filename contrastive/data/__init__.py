"""Training and evaluation data: sources (tables, HF datasets, WebDataset shards), robust image decoding, bad-sample
accounting, and a deterministic, resumable loader. See each module's docstring."""

from .bad import REASONS, BadRecord, BadSample, BadSampleTracker
from .images import PIL_MAX_PIXELS, ImageTransform, build_transform, decode_image, to_rgb
from .loader import ImageTextDataset, ResumableBatchSampler, TrainData, build_train_loader
from .samples import Collate, Sample, load_sample, sample_seed
from .sources import (
    HFSource,
    RawSample,
    Record,
    TableSource,
    detect_format,
    open_hf_dataset,
    open_source,
    pick_caption,
    read_records,
    stable_id,
)

__all__ = [
    "REASONS", "BadRecord", "BadSample", "BadSampleTracker", "PIL_MAX_PIXELS", "ImageTransform",
    "build_transform", "decode_image", "to_rgb", "Collate", "ImageTextDataset", "ResumableBatchSampler", "Sample",
    "TrainData", "build_train_loader", "load_sample", "sample_seed", "HFSource", "RawSample", "Record",
    "TableSource", "detect_format", "open_hf_dataset", "open_source", "pick_caption", "read_records", "stable_id",
]
