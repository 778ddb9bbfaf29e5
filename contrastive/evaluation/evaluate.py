"""Evaluation of a model on a held-out table: retrieval, caption-ranking and zero-shot classification metrics of
its embeddings, and the CLIP_benchmark-shaped result record the `eval` command prints."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch

from ..data.eval_table import EvalTable, label_indices, read_eval_table
from ..data.sources import Record
from ..errors import CheckpointError, DataError
from ..model import ContrastiveModel
from .embedding import Throughput, embed_images, embed_texts


def caption_ranking_accuracy(image_embeds: torch.Tensor, text_embeds: torch.Tensor, captions: list[str],
                             image_captions: list[set[str]], *, chunk_size: int = 4096) -> float:
    """Top-1 caption ranking: each image ranks the distinct captions of the set; a hit is one of its own captions.

    image_embeds (N, D); text_embeds (M, D) for `captions` (distinct strings); image_captions[i] the captions of
    image i. Chance is about 1 / M. Scored in chunks of images, so only (chunk_size, M) similarities exist at once.
    """
    best = torch.cat([(image_embeds[i : i + chunk_size] @ text_embeds.T).argmax(dim=1)  # (c,)
                      for i in range(0, image_embeds.shape[0], chunk_size)]).tolist()
    hits = [captions[j] in own for j, own in zip(best, image_captions)]
    return sum(hits) / max(len(hits), 1)


def evaluate_records(model: ContrastiveModel, records: list[Record], preprocess: Callable, tokenizer: Callable, *,
                     tasks: Sequence[str] = ("retrieval",), class_key: str = "", classnames: list[str] | None = None,
                     templates: list[str] | None = None, batch_size: int = 256, device: torch.device | str = "cpu",
                     precision: str = "fp32", timing: Throughput | None = None) -> dict[str, float]:
    """Metrics of `tasks` on one held-out table, embedding each image once (`timing`: see `embed_images`).

    "retrieval": recall@1/5/10 both ways and ranks (all captions of an image count), plus top-1 caption ranking over
    the distinct captions. "zeroshot": acc1 (acc5 with >= 5 classes) and mean per-class recall, the class of each
    record read from its `class_key` column (see `zero_shot_evaluate` for classnames/templates).
    """
    from .metrics import block_rows, retrieval_metrics

    unknown = set(tasks) - {"retrieval", "zeroshot"}
    if unknown:
        raise ValueError(f"unknown evaluation tasks {sorted(unknown)}")
    was_training = model.training
    model.eval()
    try:
        image_embeds = embed_images(model, [r.image for r in records], preprocess, batch_size=batch_size, device=device,
                                    precision=precision, timing=timing)
        metrics: dict[str, float] = {}
        if "retrieval" in tasks:
            texts, owners = [], []
            for i, r in enumerate(records):
                texts += r.captions
                owners += [i] * len(r.captions)
            text_embeds = embed_texts(model, texts, tokenizer, batch_size=batch_size, device=device, precision=precision,
                                      timing=timing)
            metrics.update(retrieval_metrics(image_embeds, text_embeds, torch.tensor(owners, device=text_embeds.device),
                                             chunk_size=block_rows(max(len(records), len(texts)))))
            distinct = sorted(set(texts))
            index = {t: i for i, t in enumerate(texts)}
            distinct_embeds = text_embeds[[index[t] for t in distinct]]
            metrics["caption_ranking_acc1"] = caption_ranking_accuracy(image_embeds, distinct_embeds, distinct,
                                                                       [set(r.captions) for r in records],
                                                                       chunk_size=block_rows(len(distinct)))
            metrics["caption_ranking_chance"] = 1.0 / len(distinct)
        if "zeroshot" in tasks:
            labels = record_labels(records, class_key)
            metrics.update(zero_shot_evaluate(model, image_embeds, labels, tokenizer, classnames=classnames,
                                              templates=templates, batch_size=batch_size, device=device, precision=precision))
    finally:
        model.train(was_training)
    return metrics


def record_labels(records: list[Record], class_key: str) -> list[str]:
    """The class of each record: its `class_key` column, as a string."""
    if not class_key:
        raise DataError("zero-shot evaluation needs the column that holds each image's class (a class key)")
    missing = next((r for r in records if class_key not in r.fields), None)
    if missing is not None:
        raise DataError(f"no class column '{class_key}' for {missing.image} (columns: {', '.join(missing.fields)}); "
                        "set eval.zeroshot_class_key")
    return [str(r.fields[class_key]) for r in records]


def zero_shot_evaluate(model: ContrastiveModel, image_embeds: torch.Tensor, labels: list[str], tokenizer: Callable, *,
                       classnames: list[str] | None = None, templates: list[str] | None = None, batch_size: int = 256,
                       device: torch.device | str = "cpu", precision: str = "fp32") -> dict[str, float]:
    """Zero-shot classification metrics of images against prompts built from class names.

    image_embeds (N, D) normalised; labels[i] the class name (or index) of image i. `classnames` default to the
    sorted distinct labels; `templates` (each with a `{}` slot) to `metrics.DEFAULT_TEMPLATES`. Each class is the
    renormalised mean of its normalised template embeddings; logits use CLIP_benchmark's fixed scale of 100.
    """
    from .metrics import DEFAULT_TEMPLATES, zero_shot_classifier, zero_shot_metrics

    classnames = classnames if classnames is not None else sorted(set(labels))
    targets = label_indices(labels, classnames)

    def encode(texts: list[str]) -> torch.Tensor:
        return embed_texts(model, texts, tokenizer, batch_size=batch_size, device=device, precision=precision)

    classifier = zero_shot_classifier(encode, classnames, templates or DEFAULT_TEMPLATES, device=image_embeds.device)  # (D, C)
    return zero_shot_metrics(image_embeds, classifier, targets)


def evaluate_table(model: ContrastiveModel, table: EvalTable, preprocess: Callable, tokenizer: Callable, *,
                   batch_size: int = 256, device: torch.device | str = "cpu",
                   precision: str = "fp32", timing: Throughput | None = None) -> dict[str, float]:
    """The metrics of `table.task` for `model` on `table` (see `evaluate_records` and `zero_shot_evaluate`)."""
    kwargs = dict(batch_size=batch_size, device=device, precision=precision)
    if table.task == "retrieval":
        return evaluate_records(model, table.records, preprocess, tokenizer, tasks=("retrieval",), timing=timing,
                                **kwargs)
    was_training = model.training
    model.eval()
    try:
        labels = [str(r.captions[0]) if r.captions else "" for r in table.records]
        image_embeds = embed_images(model, [r.image for r in table.records], preprocess, timing=timing, **kwargs)
        return zero_shot_evaluate(model, image_embeds, labels, tokenizer, classnames=table.classnames,
                                  templates=table.templates, **kwargs)
    finally:
        model.train(was_training)


def benchmark_result(dataset: str, model: str, pretrained: str, task: str, metrics: dict[str, float]) -> dict[str, Any]:
    """A result record in CLIP_benchmark's layout: {"dataset", "model", "pretrained", "task", "metrics", "language"}.

    `model` names the architecture (e.g. "vit_tiny+text_tiny"), `pretrained` the weights (a checkpoint path).
    """
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics, "language": "en"}


def describe_model(checkpoint: str | Path) -> tuple[str, str]:
    """(architecture name, weights path) of a checkpoint or run directory, for result records."""
    from ..interop.checkpoint import read_meta
    from ..interop.checkpoint import resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(checkpoint)
        model_cfg = read_meta(ckpt)["config"]["model"]
        return f"{model_cfg['image_encoder']}+{model_cfg['text_encoder']}", str(ckpt)
    except (CheckpointError, KeyError, TypeError):
        return Path(checkpoint).name, str(checkpoint)


def evaluate_dataset(checkpoint: str | Path, data: str | Path, task: str, *, image_key: str = "image",
                     caption_key: str = "", class_key: str = "", classes_file: str | Path | None = None,
                     templates_file: str | Path | None = None, batch_size: int = 256, device: str = "cpu",
                     precision: str = "fp32", weights: str = "model") -> dict[str, Any]:
    """Evaluate a checkpoint on a table (see `read_eval_table`) and return a CLIP_benchmark-shaped result record,
    with a "throughput" entry (see `Throughput.report`). `weights`: "model" (the trained weights) or "ema" (their moving average, when the run kept one)."""
    from ..interop.loading import load

    table = read_eval_table(data, task, image_key=image_key, caption_key=caption_key, class_key=class_key,
                            classes_file=classes_file, templates_file=templates_file,
                            settings=("--image-key", "--caption-key", "--class-key"))  # (the eval command's options)
    model, preprocess, tokenizer = load(checkpoint, device=device, weights=weights)
    timing, start = Throughput(), time.perf_counter()
    metrics = evaluate_table(model, table, preprocess, tokenizer, batch_size=batch_size, device=device,
                             precision=precision, timing=timing)
    name, weights_path = describe_model(checkpoint)
    # beside CLIP_benchmark's fields: the evaluation's speed (model loading excluded) and where its time went
    return {**benchmark_result(table.name, name, weights_path, task, metrics),
            "throughput": timing.report(time.perf_counter() - start)}
