"""Evaluation of a model on a held-out table: embeddings in batches, then retrieval, caption-ranking and zero-shot
classification metrics, and the CLIP_benchmark-shaped result record the `eval` command prints."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .data import DataError, Record
from .data.bad import BadSample
from .data.images import decode_image
from .data.loader import trim_padding
from .model import ContrastiveModel


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def embed_images(model: ContrastiveModel, paths: list[str], preprocess: Callable, *, batch_size: int = 256,
                 device: torch.device | str = "cpu", precision: str = "fp32") -> torch.Tensor:
    """(N, D) normalised image embeddings, fp32, computed in batches without grad (under autocast when asked)."""
    device = torch.device(device)
    out = []
    for i in range(0, len(paths), batch_size):
        pixels = []
        for p in paths[i : i + batch_size]:
            try:  # decoded as training decodes: EXIF orientation, RGB, the same pixel-count guard
                img = decode_image(p)
            except BadSample as e:
                raise DataError(f"evaluation image {p}: {e}") from None
            with img:
                pixels.append(preprocess(img))
        with autocast_context(device, precision):
            out.append(model.encode_image(torch.stack(pixels).to(device)).float())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model: ContrastiveModel, texts: list[str], tokenizer: Callable, *, batch_size: int = 256,
                device: torch.device | str = "cpu", precision: str = "fp32") -> torch.Tensor:
    """(N, D) normalised text embeddings, fp32."""
    device = torch.device(device)
    out = []
    for i in range(0, len(texts), batch_size):
        # padding every caption of the chunk shares is cut (the features are the same; see data.loader.trim_padding)
        tokens = trim_padding(tokenizer(texts[i : i + batch_size]), getattr(tokenizer, "pad_token_id", None))
        tokens = {k: v.to(device) for k, v in tokens.items()} if isinstance(tokens, dict) else tokens.to(device)
        with autocast_context(device, precision):
            out.append(model.encode_text(tokens).float())
    return torch.cat(out)


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
                     precision: str = "fp32") -> dict[str, float]:
    """Metrics of `tasks` on one held-out table, embedding each image once.

    "retrieval": recall@1/5/10 both ways and ranks (all captions of an image count), plus top-1 caption ranking over
    the distinct captions. "zeroshot": acc1 (acc5 with >= 5 classes) and mean per-class recall, the class of each
    record read from its `class_key` column (see `zero_shot_evaluate` for classnames/templates).
    """
    from .metrics import retrieval_metrics

    unknown = set(tasks) - {"retrieval", "zeroshot"}
    if unknown:
        raise ValueError(f"unknown evaluation tasks {sorted(unknown)}")
    was_training = model.training
    model.eval()
    try:
        image_embeds = embed_images(model, [r.image for r in records], preprocess, batch_size=batch_size, device=device, precision=precision)
        metrics: dict[str, float] = {}
        if "retrieval" in tasks:
            texts, owners = [], []
            for i, r in enumerate(records):
                texts += r.captions
                owners += [i] * len(r.captions)
            text_embeds = embed_texts(model, texts, tokenizer, batch_size=batch_size, device=device, precision=precision)
            metrics.update(retrieval_metrics(image_embeds, text_embeds, torch.tensor(owners, device=text_embeds.device)))
            distinct = sorted(set(texts))
            index = {t: i for i, t in enumerate(texts)}
            distinct_embeds = text_embeds[[index[t] for t in distinct]]
            metrics["caption_ranking_acc1"] = caption_ranking_accuracy(image_embeds, distinct_embeds, distinct, [set(r.captions) for r in records])
            metrics["caption_ranking_chance"] = 1.0 / len(distinct)
        if "zeroshot" in tasks:
            labels = record_labels(records, class_key)
            metrics.update(zero_shot_evaluate(model, image_embeds, labels, tokenizer, classnames=classnames,
                                              templates=templates, batch_size=batch_size, device=device, precision=precision))
    finally:
        model.train(was_training)
    return metrics


# Progress-bar names of the headline eval metrics (the bar is narrow; metrics.jsonl keeps the full names).
_POSTFIX = {"val/text_retrieval_recall@1": "i2t@1", "val/image_retrieval_recall@1": "t2i@1",
            "val/caption_ranking_acc1": "rank@1", "val/acc1": "zs@1",
            # forgetting: the share of the start's reference scores kept (see contrastive.reference)
            "ref/retained_text_retrieval_recall@1": "kept_i2t@1", "ref/retained_image_retrieval_recall@1": "kept_t2i@1",
            "ref/retained_acc1": "kept_zs@1"}


def eval_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The headline metrics of an eval, short-named and formatted for a progress bar."""
    return {short: f"{metrics[key]:.3f}" for key, short in _POSTFIX.items() if key in metrics}


def record_labels(records: list[Record], class_key: str) -> list[str]:
    """The class of each record: its `class_key` column, as a string."""
    if not class_key:
        raise DataError("zero-shot evaluation needs the column that holds each image's class (a class key)")
    missing = next((r for r in records if class_key not in r.fields), None)
    if missing is not None:
        raise DataError(f"no class column '{class_key}' for {missing.image} (columns: {', '.join(missing.fields)}); "
                        "set eval.zeroshot_class_key")
    return [str(r.fields[class_key]) for r in records]


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a text file, stripped (class names, templates, captions)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path} is empty")
    return lines


def label_indices(labels: list[str], classnames: list[str]) -> torch.Tensor:
    """(N,) int64 class index of each label: its position in `classnames`, else the label read as an index."""
    index = {name: i for i, name in enumerate(classnames)}
    out = []
    for label in labels:
        if label in index:
            out.append(index[label])
        elif label.isdigit() and int(label) < len(classnames):
            out.append(int(label))
        else:
            raise DataError(f"label {label!r} is neither a class name nor a class index (classes: {', '.join(classnames[:8])}"
                            + (", ..." if len(classnames) > 8 else "") + ")")
    return torch.tensor(out, dtype=torch.long)


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


def benchmark_result(dataset: str, model: str, pretrained: str, task: str, metrics: dict[str, float]) -> dict[str, Any]:
    """A result record in CLIP_benchmark's layout: {"dataset", "model", "pretrained", "task", "metrics", "language"}.

    `model` names the architecture (e.g. "vit_tiny+text_tiny"), `pretrained` the weights (a checkpoint path).
    """
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics, "language": "en"}


def _caption_column(path: str | Path, caption_key: str) -> str:
    """`caption_key`, or when empty: "captions" for a JSONL file whose first row has it, else "caption"."""
    if caption_key:
        return caption_key
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".json") and path.is_file():
        import json

        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "{}")
        try:
            if "captions" in json.loads(first):
                return "captions"
        except json.JSONDecodeError:
            pass  # read_records reports the bad line
    return "caption"


def describe_model(checkpoint: str | Path) -> tuple[str, str]:
    """(architecture name, weights path) of a checkpoint or run directory, for result records."""
    from .checkpoint import CheckpointError, read_meta
    from .interop.loading import resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(checkpoint)
        model_cfg = read_meta(ckpt)["config"]["model"]
        return f"{model_cfg['image_encoder']}+{model_cfg['text_encoder']}", str(ckpt)
    except (CheckpointError, KeyError, TypeError):
        return Path(checkpoint).name, str(checkpoint)


@dataclass
class EvalTable:
    """A held-out table read once and evaluated many times (`eval`, reference sets during training, WiSE-FT sweeps).

    task "retrieval": `records` with their captions. task "zeroshot": `records` whose captions hold each image's
    class (the class column read as the caption column), `classnames` / `templates` None for the defaults."""

    name: str
    task: str
    records: list[Record]
    classnames: list[str] | None = None
    templates: list[str] | None = None


def read_eval_table(data: str | Path, task: str, *, image_key: str = "image", caption_key: str = "",
                    class_key: str = "", classes_file: str | Path | None = None,
                    templates_file: str | Path | None = None, name: str = "",
                    settings: tuple[str, str, str] = ("image_key", "caption_key", "class_key")) -> EvalTable:
    """Read and check a table for `evaluate_table`; every label and caption problem fails here, before any embedding.
    `settings` name where the image, caption and class columns were chosen (options or config keys), for messages.

    task "zeroshot": labels from the `class_key` column (default "label"); class names from `classes_file` (one per
    line; labels may be names or 0-based indices) or else the column's distinct values; templates from
    `templates_file` or the default set. task "retrieval": captions from `caption_key` (default: "captions" in
    JSONL, else "caption"; a list of captions per image counts each of them as correct)."""
    from .data import read_records

    if task not in ("zeroshot", "retrieval"):
        raise DataError(f"unknown task {task!r} (use zeroshot or retrieval)")
    path = Path(data)
    name = name or f"{path.parent.name}/{path.stem}"
    if task == "zeroshot":
        # The class column stands in for the caption column: a classification table needs no captions.
        records = read_records(str(data), image_key, class_key or "label", settings=(settings[0], settings[2]))
        classnames = read_lines(classes_file) if classes_file else None
        templates = read_lines(templates_file) if templates_file else None
        if templates and any(t.format("x") == t for t in templates):
            raise DataError(f"{templates_file}: every template needs a {{}} slot for the class name")
        labels = [str(r.captions[0]) if r.captions else "" for r in records]
        label_indices(labels, classnames or sorted(set(labels)))
        return EvalTable(name, task, records, classnames, templates)
    records = read_records(str(data), image_key, _caption_column(data, caption_key), settings=settings[:2])
    if any(not r.captions for r in records):
        raise DataError(f"{data}: some rows have no caption")
    return EvalTable(name, task, records)


def evaluate_table(model: ContrastiveModel, table: EvalTable, preprocess: Callable, tokenizer: Callable, *,
                   batch_size: int = 256, device: torch.device | str = "cpu",
                   precision: str = "fp32") -> dict[str, float]:
    """The metrics of `table.task` for `model` on `table` (see `evaluate_records` and `zero_shot_evaluate`)."""
    kwargs = dict(batch_size=batch_size, device=device, precision=precision)
    if table.task == "retrieval":
        return evaluate_records(model, table.records, preprocess, tokenizer, tasks=("retrieval",), **kwargs)
    was_training = model.training
    model.eval()
    try:
        labels = [str(r.captions[0]) if r.captions else "" for r in table.records]
        image_embeds = embed_images(model, [r.image for r in table.records], preprocess, **kwargs)
        return zero_shot_evaluate(model, image_embeds, labels, tokenizer, classnames=table.classnames,
                                  templates=table.templates, **kwargs)
    finally:
        model.train(was_training)


def evaluate_dataset(checkpoint: str | Path, data: str | Path, task: str, *, image_key: str = "image",
                     caption_key: str = "", class_key: str = "", classes_file: str | Path | None = None,
                     templates_file: str | Path | None = None, batch_size: int = 256, device: str = "cpu",
                     precision: str = "fp32", weights: str = "model") -> dict[str, Any]:
    """Evaluate a checkpoint on a table (see `read_eval_table`) and return a CLIP_benchmark-shaped result record.
    `weights`: "model" (the trained weights) or "ema" (their moving average, when the run kept one)."""
    from .interop.loading import load

    table = read_eval_table(data, task, image_key=image_key, caption_key=caption_key, class_key=class_key,
                            classes_file=classes_file, templates_file=templates_file,
                            settings=("--image-key", "--caption-key", "--class-key"))  # (the eval command's options)
    model, preprocess, tokenizer = load(checkpoint, device=device, weights=weights)
    metrics = evaluate_table(model, table, preprocess, tokenizer, batch_size=batch_size, device=device,
                             precision=precision)
    name, weights_path = describe_model(checkpoint)
    return benchmark_result(table.name, name, weights_path, task, metrics)
