"""Held-out tables for evaluation: read once, checked before any embedding (`read_eval_table` -> `EvalTable`),
with their class names, templates and labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DataError
from .sources import Record, read_records


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
