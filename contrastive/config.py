"""Typed run configuration: nested dataclasses loaded from YAML, then `key.sub=value` overrides.

Every field has a default and a one-line doc (the comment after it). Unknown keys and values of the wrong type are
user errors: they raise `ConfigError` with one line naming the key (and the closest valid key), which the CLI turns
into exit code 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


from .errors import ConfigError, error_line


@dataclass
class ModelConfig:
    image_encoder: str = "vit_tiny"  # registry name (see `contrastive.list_encoders()`), or hf:/timm:/torchvision: spec
    text_encoder: str = "text_tiny"  # registry name, or hf:<dir or id>
    embed_dim: int = 128  # width of the shared embedding space
    image_size: int = 64  # input resolution of the image tower
    tokenizer: str = "auto"  # "auto" (a BPE learned from the training captions), "byte", "bpe:<tokenizer.json>", "hf:<dir or id>"
    tokenizer_vocab_size: int = 8192  # tokenizer=auto: most tokens in the learned vocabulary (fewer when the captions hold fewer)
    tokenizer_min_frequency: int = 1  # tokenizer=auto: fewest occurrences of a pair for it to merge (1: every training word whole)
    context_length: int = 0  # tokens per caption incl. start/end (longer ones are cut); 0 = fit to 99.9% of the training captions
    patch_dropout: float = 0.0  # built-in ViTs: share of patch tokens dropped at random in training (FLIP); 0 = off
    init_logit_scale: float = math.log(1 / 0.07)  # log of the initial temperature scale
    init_logit_bias: float | None = None  # initial logit bias; None = no bias parameter (set for siglip)
    image_encoder_args: dict[str, Any] = field(default_factory=dict)  # overrides passed to the image encoder builder
    text_encoder_args: dict[str, Any] = field(default_factory=dict)  # overrides passed to the text encoder builder
    image_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])  # pixel mean
    image_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])  # pixel std
    init_from: str = ""  # checkpoint, run directory or HF directory whose weights initialise the model
    trust_remote_code: bool = False  # let HF loaders run code shipped with a model/tokenizer (only for sources you trust)
    preprocess_from_tower: bool = True  # pretrained hf:/timm:/torchvision: image towers set image_size/mean/std
    fused_qkv: bool = True  # built-in towers compute q/k/v in one GEMM (same parameters and state-dict names)
    pooled_last_block: bool = True  # built-in towers' last block computes only the pooled token (same features)
    onednn_linear: bool = True  # built-in towers' fp32 CPU linear layers run on oneDNN (MKL is slower on AMD CPUs)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _at_least("model", {"embed_dim": (self.embed_dim, 1), "image_size": (self.image_size, 1),
                            "tokenizer_min_frequency": (self.tokenizer_min_frequency, 1)})
        if self.context_length < 0 or self.context_length == 1:
            raise ConfigError(f"model.context_length must be >= 2 (start and end tokens) or 0 (fit to the captions), "
                              f"got {self.context_length}")
        if self.tokenizer == "auto" and self.tokenizer_vocab_size < 259:
            raise ConfigError(f"model.tokenizer_vocab_size must be >= 259 (256 bytes + 3 special tokens), got "
                              f"{self.tokenizer_vocab_size}")
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ConfigError(f"model.patch_dropout must be in [0, 1), got {self.patch_dropout}")
        for n in ("image_mean", "image_std"):
            if len(getattr(self, n)) != 3:
                raise ConfigError(f"model.{n} must have 3 values")
        _no_nul({"model.init_from": self.init_from})


@dataclass
class LossConfig:
    name: Literal["clip", "siglip"] = "clip"  # "clip" (softmax, symmetric CE) or "siglip" (pairwise sigmoid)
    duplicate_aware: bool = True  # identical captions/images in a batch count as positives, not negatives
    chunk_size: int = 0  # > 0: exact tiled loss that never holds the B x B logits
    local_loss: bool = True  # distributed: each rank scores its rows against all gathered columns

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_choices(self, "loss")
        if self.chunk_size < 0:
            raise ConfigError(f"loss.chunk_size must be > 0 (or 0 for the plain loss), got {self.chunk_size}")


@dataclass
class SourceConfig:
    """One source of training (or validation) data with its own columns. On the command line or in a YAML list a
    plain path is a source of weight 1 with the data section's columns and format."""

    path: str = ""  # CSV/TSV/JSONL file, HF dataset dir, or shard pattern
    weight: float = 1.0  # share of each batch, relative to the other sources' weights (training only)
    image_key: str = ""  # column (or shard extension) with the image; "" = data.image_key
    caption_key: str = ""  # column (or shard extension) with the caption; "" = data.caption_key
    format: Literal["", "csv", "tsv", "jsonl", "parquet", "hf", "webdataset"] = ""  # "" = data.format, else detected
    name: str = ""  # name of the source in logged counts (samples/<name>); "" = the file's or folder's stem

    @classmethod
    def from_string(cls, value: str) -> "SourceConfig":
        return cls(path=value)

    def validate(self, key: str) -> None:
        """`key`: where the source sits (`data.train[0]`)."""
        _check_choices(self, key)
        if not self.path:
            raise ConfigError(f"{key}: path is empty")
        if not (self.weight > 0 and math.isfinite(self.weight)):
            raise ConfigError(f"{key}: weight must be > 0, got {self.weight}")
        _no_nul({f"{key}.path": self.path})


@dataclass
class DataConfig:
    # training data: a path (CSV/TSV/JSONL/Parquet file, HF dataset dir, or shard pattern) or a list of sources
    # {path, weight, image_key, caption_key, format} mixed in every batch by weight (see contrastive.data.mixture)
    train: str | list[SourceConfig] = "data/shapes/train.csv"
    # held-out data for evaluation during training: a table path, or {path, image_key, caption_key, format} ("" = none)
    val: str | SourceConfig = "data/shapes/val.csv"
    format: Literal["", "csv", "tsv", "jsonl", "parquet", "hf", "webdataset"] = ""  # detected from the path when empty
    image_key: str = "image"  # column with image paths (relative to the data file)
    caption_key: str = "caption"  # caption column (or a list of captions); "a,b": pool several columns
    num_workers: int = 2  # dataloader worker processes
    augment: bool = True  # random resized crop (no flips, no colour changes) for training images
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])  # RandomResizedCrop scale range
    on_bad_sample: Literal["skip", "error"] = "skip"  # skip (count and replace) | error (stop at the first)
    max_bad_fraction: float = 0.1  # stop when more than this fraction of samples seen are bad
    bad_check_after: int = 1000  # samples loaded before data.max_bad_fraction is checked
    max_image_pixels: int = 89_478_485  # larger images are skipped as decompression bombs (Pillow's default limit)
    split: str = "train"  # HF dataset split used for data.train
    pin_memory: bool = True  # page-locked batches for faster host-to-GPU copies (CUDA only)
    copy_stream: bool = True  # CUDA: copy each batch to the GPU on a side stream, overlapping the previous step
    persistent_workers: bool = False  # keep dataloader workers alive across epochs (tables and HF datasets)
    prefetch_factor: int = 4  # batches each worker prepares ahead
    trim_padding: bool = True  # pad each batch's captions to its longest (rounded up to 8), not the context length
    shuffle_buffer: int = 1000  # webdataset: samples in the shuffle buffer of each worker
    samples_per_epoch: int = 0  # webdataset: samples per epoch (0 = counted from local shards; needed for remote ones)
    resampled: bool = False  # webdataset: each worker draws shards with replacement from all of them (open-ended runs)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_choices(self, "data")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        _at_least("data", {"num_workers": (self.num_workers, 0), "bad_check_after": (self.bad_check_after, 0),
                           "samples_per_epoch": (self.samples_per_epoch, 0),
                           "max_image_pixels": (self.max_image_pixels, 1),
                           "prefetch_factor": (self.prefetch_factor, 1), "shuffle_buffer": (self.shuffle_buffer, 1)})
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"data.crop_scale must be [lo, hi] with 0 < lo <= hi <= 1, got {self.crop_scale}")
        if isinstance(self.train, list):
            if not self.train:
                raise ConfigError("data.train is an empty list; give a path or at least one source")
            for i, source in enumerate(self.train):
                source.validate(f"data.train[{i}]")
        else:
            _no_nul({"data.train": self.train})
        if isinstance(self.val, SourceConfig):
            self.val.validate("data.val")
        else:
            _no_nul({"data.val": self.val})

    def train_sources(self) -> list[SourceConfig]:
        """The training sources, each with its columns and format resolved (a plain path: one source of weight 1)."""
        given = self.train if isinstance(self.train, list) else [SourceConfig(path=self.train)]
        return [self._resolved(s) for s in given]

    def val_source(self) -> SourceConfig | None:
        """The validation source with its columns and format resolved; None without one."""
        given = self.val if isinstance(self.val, SourceConfig) else SourceConfig(path=self.val) if self.val else None
        return None if given is None else self._resolved(given)

    def _resolved(self, source: SourceConfig) -> SourceConfig:
        return dataclasses.replace(source, image_key=source.image_key or self.image_key,
                                   caption_key=source.caption_key or self.caption_key,
                                   format=source.format or self.format)

    def for_source(self, source: SourceConfig) -> "DataConfig":
        """This section with one (resolved) source as its only training data, for the single-source loaders."""
        return dataclasses.replace(self, train=source.path, image_key=source.image_key,
                                   caption_key=source.caption_key, format=source.format)


@dataclass
class OptimConfig:
    lr: float = 5e-4  # peak learning rate
    weight_decay: float = 0.2  # AdamW decoupled weight decay (not on biases, norms, embeddings, temperature)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW betas
    eps: float = 1e-6  # AdamW epsilon
    warmup_steps: int = 50  # linear warmup steps
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    fused: bool = True  # fused AdamW kernel (CUDA and CPU)
    foreach: bool = True  # multi-tensor AdamW when the fused kernel is off (false: one parameter at a time)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.lr < 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.warmup_steps < 0 or self.eps < 0:
            raise ConfigError("optim.lr, optim.weight_decay, optim.grad_clip, optim.warmup_steps and optim.eps must be "
                              ">= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")


@dataclass
class TrainConfig:
    batch_size: int = 128  # global batch (all ranks, all micro-batches)
    micro_batch_size: int = 0  # > 0: gradient caching, each process embeds this many rows at a time
    fsdp: bool = False  # distributed: shard the towers with FSDP2 fully_shard instead of replicating them (DDP)
    epochs: int = 10  # epochs to run when max_steps <= 0
    max_steps: int = 0  # > 0: total optimizer steps (overrides epochs)
    output_dir: str = "runs"  # parent folder of run directories
    run_name: str = ""  # run directory name under output_dir; empty = <config name>-<timestamp>
    seed: int = 0  # seed for weights, data order and augmentation
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype (fp32 master weights)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = False  # continue from the latest checkpoint of the run (fresh start if none)
    overwrite: bool = False  # replace an existing run directory
    log_every_n_steps: int = 10  # metrics.jsonl / TensorBoard / progress bar refresh period
    save_every_n_steps: int = 0  # checkpoint period in steps (0 = only at the end)
    keep_checkpoints: int = 2  # most recent checkpoints kept (plus the best by eval metric)
    compile: bool = False  # torch.compile the model forward and the loss as one graph
    # torch.compile mode (reduce-overhead: CUDA graphs)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    deterministic: bool = True  # deterministic algorithms (CPU runs are exactly reproducible)
    grad_checkpointing: bool = False  # recompute tower activations in the backward pass
    progress_bar: bool = True  # tqdm progress bar
    # experiment trackers that get the metrics, config and summary (wandb, mlflow: pip install -e ".[wandb]" / ".[mlflow]")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = field(default_factory=lambda: ["tensorboard"])
    project: str = ""  # W&B project / MLflow experiment of the tracked run ("" = the config name)
    # a failed checkpoint write: stop (exit 2) | continue (warn; the final one must work)
    on_checkpoint_error: Literal["stop", "continue"] = "stop"
    max_nan_steps: int = 20  # stop after this many steps in a row with a NaN/inf loss or gradient (each is skipped)
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights with this decay (0 = off)
    ema_warmup: bool = True  # EMA decay warms up as min(ema_decay, (1 + n) / (10 + n)) over its first updates n
    ema_every_n_steps: int = 1  # EMA update period in optimizer steps

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Counts the loop divides by or compares with, names that become paths, and combinations that cannot run."""
        _check_choices(self, "train")
        _at_least("train", {"batch_size": (self.batch_size, 1), "log_every_n_steps": (self.log_every_n_steps, 1),
                            "keep_checkpoints": (self.keep_checkpoints, 1), "max_nan_steps": (self.max_nan_steps, 1),
                            "save_every_n_steps": (self.save_every_n_steps, 0), "max_steps": (self.max_steps, 0),
                            "epochs": (self.epochs, 0)})
        if self.micro_batch_size < 0 or self.micro_batch_size > self.batch_size:
            raise ConfigError(f"train.micro_batch_size={self.micro_batch_size} must be between 1 and "
                              f"train.batch_size={self.batch_size} (or 0)")
        if self.fsdp and self.precision == "fp16":
            raise ConfigError("train.fsdp=true does not support train.precision=fp16 (gradient scaling); use bf16")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ConfigError("set train.max_steps > 0 or train.epochs > 0")
        if not 0.0 <= self.ema_decay < 1.0 or self.ema_every_n_steps < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1) and train.ema_every_n_steps >= 1, got "
                              f"{self.ema_decay} and {self.ema_every_n_steps}")
        if self.ema_decay > 0 and self.fsdp:
            raise ConfigError("train.ema_decay with train.fsdp=true: the moving average needs the whole weights; "
                              "use DDP")
        if self.run_name in (".", "..") or any(c in self.run_name for c in "/\\\0"):
            raise ConfigError(f"train.run_name={self.run_name!r} must be a plain folder name (no path separators)")
        _no_nul({"train.output_dir": self.output_dir})


# eval metrics that can pick the best checkpoint (higher is better), by task
_BEST_METRICS = {"retrieval": r"(image|text)_retrieval_recall@(1|5|10)|caption_ranking_acc1",
                 "zeroshot": r"acc1|acc5|mean_per_class_recall"}


@dataclass
class ReferenceConfig:
    """A held-out set that stands for what the starting model already knew (forgetting is measured on it). On the
    command line or in a YAML list a plain path is a retrieval table."""

    data: str = ""  # CSV/TSV/JSONL table, image paths relative to it
    task: Literal["retrieval", "zeroshot"] = "retrieval"  # retrieval (captions) or zeroshot (a class column)
    name: str = ""  # name in the logged keys when there are several sets (default: <folder>/<file stem>)
    caption_key: str = ""  # retrieval: caption column (default: captions in JSONL, else caption)
    image_key: str = "image"  # column with image paths
    class_key: str = "label"  # zeroshot: column holding each image's class
    classes: str = ""  # zeroshot: class names file, one per line (default: the column's distinct values)
    templates: str = ""  # zeroshot: prompt templates file with {} (default: the built-in set)

    @classmethod
    def from_string(cls, value: str) -> "ReferenceConfig":
        return cls(data=value)

    def validate(self, key: str) -> None:
        """`key`: where the set sits (`eval.reference[0]`)."""
        _check_choices(self, key)
        if not self.data:
            raise ConfigError(f"{key}: data (the table's path) is empty")


@dataclass
class EvalConfig:
    every_n_steps: int = 0  # evaluate on data.val every N steps (0 = only at the end when data.val is set)
    tasks: list[Literal["retrieval", "zeroshot"]] = field(default_factory=lambda: ["retrieval"])  # one or both
    batch_size: int = 256  # images per embedding batch
    zeroshot_class_key: str = ""  # column holding the class for zero-shot accuracy
    # metric that picks the best checkpoint; auto: text_retrieval_recall@1 with retrieval, else acc1; empty: none
    best_metric: str = "auto"
    # reference sets (forgetting): evaluated for the starting weights at step 0 and at every evaluation
    reference: list[ReferenceConfig] = field(default_factory=list)
    reference_metric: str = "auto"  # each reference set's headline metric; auto: text_retrieval_recall@1 / acc1
    reference_weight: float = 0.0  # best checkpoint by (1 - w) * best_metric + w * mean reference_metric; 0 = target only

    def reference_metric_name(self, task: str) -> str:
        """The headline metric of a reference set of `task`, "auto" resolved."""
        if self.reference_metric == "auto":
            return "text_retrieval_recall@1" if task == "retrieval" else "acc1"
        return self.reference_metric

    def best_metric_name(self) -> str:
        """The metric `best_metric` names, "auto" resolved ("" when no checkpoint is kept as best)."""
        if self.best_metric == "auto":
            return "text_retrieval_recall@1" if "retrieval" in self.tasks else "acc1"
        return self.best_metric

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _check_choices(self, "eval")
        _at_least("eval", {"batch_size": (self.batch_size, 1), "every_n_steps": (self.every_n_steps, 0)})
        if "zeroshot" in self.tasks and not self.zeroshot_class_key:
            raise ConfigError("eval.tasks has zeroshot but eval.zeroshot_class_key (the class column) is empty")
        best = self.best_metric_name()
        if best and not any(re.fullmatch(_BEST_METRICS[t], best) for t in self.tasks):
            raise ConfigError(f"eval.best_metric={best!r} is not a higher-is-better metric of eval.tasks {self.tasks} "
                              "(e.g. text_retrieval_recall@1, image_retrieval_recall@5, caption_ranking_acc1, acc1); "
                              "empty = no best checkpoint")
        self._validate_reference()

    def _validate_reference(self) -> None:
        """The reference sets (forgetting) and how they weigh in the best checkpoint."""
        if not 0.0 <= self.reference_weight <= 1.0:
            raise ConfigError(f"eval.reference_weight must be in [0, 1], got {self.reference_weight}")
        for i, ref in enumerate(self.reference):
            ref.validate(f"eval.reference[{i}]")
            metric = self.reference_metric_name(ref.task)
            if not re.fullmatch(_BEST_METRICS[ref.task], metric):
                raise ConfigError(f"eval.reference_metric={metric!r} is not a higher-is-better {ref.task} metric "
                                  f"(e.g. {'text_retrieval_recall@1' if ref.task == 'retrieval' else 'acc1'})")
        if self.reference_weight > 0 and not self.reference:
            raise ConfigError("eval.reference_weight > 0 needs eval.reference (the sets that measure forgetting)")


@dataclass
class LoraConfig:
    rank: int = 0  # > 0: train low-rank adapters (peft LoRA) on the tower instead of its weights; 0 = off
    alpha: float = 8.0  # adapter scale numerator: the update is (alpha / rank) * B A
    dropout: float = 0.0  # dropout on the adapters' input
    target_modules: list[str] = field(default_factory=list)  # module names to adapt; empty = the attention projections

    def validate(self, key: str) -> None:
        """`key`: where the adapters sit (`finetune.image.lora`)."""
        if self.rank < 0 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{key}: rank must be >= 0, alpha > 0 and dropout in [0, 1)")


@dataclass
class TowerTrainConfig:
    lock: bool = False  # freeze the whole tower (LiT); it then runs in eval mode (no dropout, fixed statistics)
    unlocked_layers: int = -1  # >= 0: train only the last N blocks and what follows them; -1 = every block
    freeze_norms: bool = False  # freeze the weights of LayerNorm / GroupNorm / BatchNorm layers
    freeze_bn_stats: bool = False  # BatchNorm layers normalise with, and keep, their running statistics
    lr_scale: float = 1.0  # learning-rate multiplier for the tower (its projection keeps the base rate)
    lora: LoraConfig = field(default_factory=LoraConfig)  # low-rank adapters instead of full fine-tuning

    def validate(self, key: str) -> None:
        """`key`: the tower's section (`finetune.image`)."""
        if self.lr_scale < 0 or self.unlocked_layers < -1:
            raise ConfigError(f"{key}: lr_scale must be >= 0 and unlocked_layers >= -1")
        self.lora.validate(f"{key}.lora")
        if self.lora.rank > 0 and (self.lock or self.unlocked_layers >= 0):
            raise ConfigError(f"{key}.lora.rank={self.lora.rank} with {key}.lock or {key}.unlocked_layers: LoRA "
                              "already freezes the tower's weights; choose one")


@dataclass
class FinetuneConfig:
    image: TowerTrainConfig = field(default_factory=TowerTrainConfig)  # what to train in the image tower
    text: TowerTrainConfig = field(default_factory=TowerTrainConfig)  # what to train in the text tower
    layer_decay: float = 1.0  # layer-wise LR decay: block i of L gets decay**(L - i), embeddings decay**(L + 1)
    # LP-FT: > 0 trains only the projections and the temperature for the first N steps, then what this section
    # allows, the learning-rate schedule (warm-up, cosine) restarting at the switch; 0 = off
    probe_steps: int = 0
    # > 0: start at this temperature scale, the factor itself (2 sets the stored log scale to ln 2; unlike
    # model.init_logit_scale, which is a log); 0 = keep the start's
    reset_logit_scale: float = 0.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"finetune.layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.probe_steps < 0:
            raise ConfigError(f"finetune.probe_steps must be >= 0, got {self.probe_steps}")
        if self.reset_logit_scale != 0 and not 1.0 <= self.reset_logit_scale <= 100.0:
            raise ConfigError(f"finetune.reset_logit_scale must be a scale in [1, 100] (the model keeps its log in "
                              f"[0, ln 100]) or 0 (keep the start's), got {self.reset_logit_scale}")
        self.image.validate("finetune.image")
        self.text.validate("finetune.text")


@dataclass
class DistillConfig:
    teacher: str = ""  # frozen teacher: a run directory, checkpoint or transformers directory (what contrastive.load takes); "" = off
    weight: float = 0.5  # loss = (1 - weight) * contrastive + weight * distillation (0.5: OpenCLIP's sum of the two, halved)
    temperature: float = 1.0  # both models' logits are divided by it before the softmax; the loss is scaled by its square

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"distill.weight must be in [0, 1], got {self.weight}")
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature}")
        _no_nul({"distill.teacher": self.teacher})


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)  # learning from a frozen teacher's similarities too
    name: str = "run"  # config name (the YAML file stem); names runs by default

    def __post_init__(self) -> None:
        validate(self)


# ----------------------------------------------------------------------------------------------------------------------
# checks: each section checks its own values when it is made (`__post_init__`), the whole config what spans sections

_SECTIONS = ("model", "loss", "data", "optim", "train", "eval", "finetune", "distill")


def validate(cfg: Config) -> None:
    """Raise ConfigError on values or combinations that cannot run (again for each section: its fields may have
    been set after it was made)."""
    for name in _SECTIONS:
        getattr(cfg, name).validate()
    if cfg.finetune.probe_steps > 0 and cfg.train.fsdp:
        raise ConfigError("finetune.probe_steps with train.fsdp=true: the probe phase freezes the towers, which sharded "
                          "parameters do not allow; use DDP")
    if cfg.finetune.probe_steps > 0 and 0 < cfg.train.max_steps <= cfg.finetune.probe_steps:
        raise ConfigError(f"finetune.probe_steps={cfg.finetune.probe_steps} leaves none of train.max_steps="
                          f"{cfg.train.max_steps} to fine-tune; lower it or raise train.max_steps")
    if cfg.loss.name == "siglip" and cfg.model.init_logit_bias is None:
        raise ConfigError("loss.name=siglip needs model.init_logit_bias (the paper uses -10 with init_logit_scale "
                          "2.3026)")


def _choices(tp: Any) -> tuple | None:
    """The values a `Literal[...]` annotation allows (None for other annotations)."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _choice_error(key: str, value: Any, choices: tuple) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not one of {', '.join(repr(c) for c in choices)}")


def _check_choices(section: Any, prefix: str) -> None:
    """Raise ConfigError when a `Literal[...]` field of `section` (or an item of a list of them) holds another value."""
    for name, tp in _field_types(type(section)).items():
        value = getattr(section, name)
        if (choices := _choices(tp)) is not None and value not in choices:
            raise _choice_error(f"{prefix}.{name}", value, choices)
        if typing.get_origin(tp) is list and (choices := _choices(typing.get_args(tp)[0])) is not None:
            for i, item in enumerate(value):
                if item not in choices:
                    raise _choice_error(f"{prefix}.{name}[{i}]", item, choices)


def _at_least(prefix: str, values: dict[str, tuple[float, float]]) -> None:
    """`values`: field -> (value, lowest allowed)."""
    for name, (value, low) in values.items():
        if value < low:
            raise ConfigError(f"{prefix}.{name} must be {'> 0' if low == 1 else f'>= {low}'}, got {value}")


def _no_nul(paths: dict[str, str]) -> None:
    for key, path in paths.items():
        if "\0" in path:
            raise ConfigError(f"{key}: paths in the config must not contain NUL characters")


# ----------------------------------------------------------------------------------------------------------------------
# building from dicts, YAML and overrides


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, _all_keys(), n=1, cutoff=0.5)
    if not close:  # a typo in the leaf name: compare leaves only
        leaf = key.rsplit(".", 1)[-1]
        leaves = {k.rsplit(".", 1)[-1]: k for k in _all_keys()}
        match = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
        close = [leaves[match[0]]] if match else []
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _union_arm(value: Any, arms: list[Any]) -> tuple[Any, Any]:
    """(value, the arm of a union it is cast to): a list or a mapping (also written as YAML flow text, `[...]`,
    `{...}`) goes to the list or dataclass arm, anything else to the first arm (`str | list[SourceConfig]`)."""
    parsed = value
    if isinstance(value, str) and value.strip().startswith(("[", "{")):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value, arms[0]
    for arm in arms:
        if isinstance(parsed, (list, tuple, dict)) and typing.get_origin(arm) is list:
            return parsed, arm
        if isinstance(parsed, dict) and dataclasses.is_dataclass(arm):
            return parsed, arm
    return value, arms[0]


def _cast(key: str, value: Any, tp: Any) -> Any:
    """Cast a YAML/CLI value to the field type `tp`, or raise ConfigError naming the key."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _cast(key, *_union_arm(value, inner))
    if (choices := _choices(tp)) is not None:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and str(value) in choices:
            return str(value)
        raise _choice_error(key, value, choices)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)
            except ValueError:
                pass
            else:
                if as_float.is_integer() and abs(as_float) < 2**63:
                    return int(as_float)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
        elif isinstance(value, str):
            try:
                out = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(out):
                    return out
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith(("[", "{")) else [v for v in value.split(",") if v]
        if isinstance(value, dict) and dataclasses.is_dataclass(args[0]):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [_cast(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, dict):
            return dict(value)
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, prefix=f"{key}.")
        if isinstance(value, str) and hasattr(tp, "from_string"):  # a list item's shorthand, e.g. a table path
            return tp.from_string(value)
    tname = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"config key '{key}' expects {tname}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    types_ = _field_types(cls)
    kwargs = {}
    for k, v in values.items():
        if k not in types_:
            raise _unknown_key(f"{prefix}{k}")
        kwargs[k] = _cast(f"{prefix}{k}", v, types_[k])
    if cls is Config:
        return Config(**kwargs)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{key}': '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["optim.lr=5e-4", "train.max_steps=200"]` -> nested dict of raw (string) values."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, value = item.split("=", 1)
        key = key.strip().lstrip("-")
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        _check_key(key)
        _set_dotted(tree, key, value)
    return tree


def _check_key(key: str) -> None:
    cls: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        types_ = _field_types(cls)
        if part not in types_:
            raise _unknown_key(key)
        tp = types_[part]
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                raise ConfigError(f"config key '{key}' is a section; set one of its fields, e.g. '{key}.{next(iter(_field_types(tp)))}'")
            cls = tp
        elif i < len(parts) - 1 and typing.get_origin(tp) is not dict:
            raise _unknown_key(key)


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def config_from_dict(values: dict[str, Any]) -> Config:
    if not isinstance(values, dict):
        raise ConfigError("a config must be a mapping of sections (model, loss, data, optim, train, eval)")
    return _build(Config, values)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply dotted overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config {path} is a directory; give a YAML file (e.g. configs/shapes_tiny.yaml)")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not valid YAML: {error_line(e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (model, loss, data, optim, train, eval)")
        values = loaded
        values.setdefault("name", path.stem)
    values = _merge(values, parse_overrides(overrides or []))
    return config_from_dict(values)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
