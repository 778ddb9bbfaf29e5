"""A PNG contact sheet of a query and its hits: the query first, then each hit with its rank, score and caption."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..data.images import decode_image
from ..errors import DataError
from .query import Hit, Index

TILE = 160  # pixels per thumbnail side
LABEL = 44  # pixels of text under each thumbnail


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def _tile(img: Image.Image | None, lines: list[str], font, border: tuple[int, int, int]) -> Image.Image:
    tile = Image.new("RGB", (TILE, TILE + LABEL), "white")
    draw = ImageDraw.Draw(tile)
    if img is not None:
        thumb = ImageOps.contain(img, (TILE - 8, TILE - 8), Image.Resampling.LANCZOS)  # small images scaled up too
        tile.paste(thumb, ((TILE - thumb.width) // 2, (TILE - thumb.height) // 2))
    draw.rectangle([0, 0, TILE - 1, TILE + LABEL - 1], outline=border, width=2)
    for n, line in enumerate(lines[:3]):
        draw.text((5, TILE + 1 + 14 * n), line, fill="black", font=font)
    return tile


def contact_sheet(index: Index, hits: list[Hit], output: str | Path, *, text: str | None = None,
                  image: str | Path | Image.Image | None = None, columns: int = 6) -> Path:
    """Write the sheet of the query (`text`, or `image`: a path or PIL image) and its hits to `output` (PNG)."""
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise DataError(f"--grid {output}: the contact sheet is a PNG; name it *.png")
    font = _font(11)
    if text is not None:
        query = text
        big = _font(15)
        head = Image.new("RGB", (TILE, TILE + LABEL), (235, 240, 250))
        draw = ImageDraw.Draw(head)
        draw.text((6, 6), "\n".join(textwrap.wrap(query, 17)[:9]), fill="black", font=big)
        draw.rectangle([0, 0, TILE - 1, TILE + LABEL - 1], outline=(40, 90, 200), width=3)
        tiles = [head]
    else:
        img = image if isinstance(image, Image.Image) else decode_image(str(image))
        tiles = [_tile(img, ["query"], font, (40, 90, 200))]
    for hit in hits:
        caption = textwrap.shorten(hit.caption or hit.path, 28, placeholder="…")
        tiles.append(_tile(index.open_image(hit.id), [f"#{hit.rank}  {hit.score:.3f}", caption], font, (200, 200, 200)))
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + LABEL)), "white")
    for n, tile in enumerate(tiles):
        sheet.paste(tile, ((n % columns) * TILE, (n // columns) * (TILE + LABEL)))
    output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    return output
