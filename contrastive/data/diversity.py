"""Start-up warnings for training data a contrastive loss cannot learn from: every caption (or image) the same, or
fewer distinct ones than a batch holds, so that every batch pairs an image with a caption that is also another
image's, and the loss pushes apart what is the same.

Counting stops once `batch_size` distinct values are seen, so good data costs a few rows; a table is read column-wise from
its memory-mapped rows, an HF dataset through its Arrow column in chunks. Streamed shards are not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .sources import HFSource, Source, TableSource


def _strings(values: Iterable[Any]) -> Iterator[str]:
    """Each caption (a row may hold a list of them) or image reference as a string; missing ones skipped."""
    for value in values:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, dict):  # an HF image: its file, else its bytes
                v = v.get("path") or v.get("bytes")
            if v is not None and v != "":
                yield v if isinstance(v, (str, bytes)) else str(v)


def _distinct(values: Iterable[str], limit: int) -> tuple[set, int]:
    """(distinct values seen, values read), reading no further once `limit` distinct ones are seen."""
    seen: set = set()
    n = 0
    for v in values:
        n += 1
        seen.add(v)
        if len(seen) >= limit:
            break
    return seen, n


def _columns(source: Source) -> tuple[Iterable[Any], Iterable[Any]] | None:
    """(captions, images) of every row, lazily; None for a source this cannot read cheaply."""
    if isinstance(source, TableSource):
        return source.captions(), source.images()  # column-wise from the memory-mapped rows
    if isinstance(source, HFSource):
        def column(key: str) -> Iterator[Any]:
            for chunk in source.ds.select_columns([key]).iter(batch_size=1024):
                yield from chunk[key]

        return column(source.caption_key), column(source.image_key)
    return None


def diversity_warnings(source: Source, batch_size: int, setting: str = "data.train") -> list[str]:
    """One line per problem: all captions (images) identical, or fewer distinct ones than `batch_size`."""
    columns = _columns(source)
    if columns is None or batch_size < 2:
        return []
    lines = []
    for what, values in zip(("captions", "images"), columns):
        seen, n = _distinct(_strings(values), batch_size)
        if len(seen) >= batch_size or n == 0:
            continue
        if len(seen) == 1:
            example = next(iter(seen))
            shown = repr(example[:60]) if isinstance(example, str) else "one image"
            lines.append(f"warning: every one of the {n} {what} in {setting} is the same ({shown}): a contrastive "
                         f"model cannot learn to tell its pairs apart; check {setting} and its columns")
        else:
            lines.append(f"warning: {setting} has only {len(seen)} distinct {what} among {n}, fewer than a batch of "
                         f"{batch_size}: every batch repeats some, and the loss pushes identical ones apart as "
                         "different pairs; use more varied data or a smaller train.batch_size")
    return lines
