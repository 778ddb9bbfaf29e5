"""Image decoding that survives odd files, and a tensor-side transform.

`decode_image` turns a path or bytes into an RGB PIL image: JPEGs are decoded at a reduced size (`draft`) when the
model needs far fewer pixels than the file holds, EXIF orientation is applied, and every valid mode (CMYK, palette,
grey + alpha, 16-bit, 1-bit, float) becomes RGB with transparency composited onto white. Anything that cannot be
used raises `BadSample` with its reason.

`ImageTransform` crops first, so the (expensive) bicubic resize touches only the pixels it keeps, resizes uint8
tensors, and normalises in one fused multiply-add.
"""

from __future__ import annotations

import io
import math
import os
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from ..config import DataConfig, ModelConfig
from .bad import BadSample

PIL_MAX_PIXELS = 89_478_485  # Pillow's default decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
_ORIENTATION = 0x0112  # EXIF tag


def decode_image(source: str | bytes, max_pixels: int = PIL_MAX_PIXELS, min_side: int = 0,
                 setting: str = "data.max_image_pixels") -> Image.Image:
    """Path or encoded bytes -> RGB image. `min_side` > 0 lets JPEG decoding shrink the image by a power of two
    as long as its shorter side stays >= min_side. `setting` names `max_pixels` in messages. Raises BadSample."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadSample("empty_file")
        fp = io.BytesIO(source)
    else:
        fp = _open_image_file(source)
    try:
        return _decode(fp, max_pixels, min_side, setting)
    finally:
        fp.close()


def _open_image_file(path: str) -> io.BufferedReader:
    """The file opened for reading; every way that fails is a bad sample with a reason of its own."""
    try:
        if os.path.isdir(path):
            raise BadSample("unreadable_file", "a folder, not a file")
        if os.path.getsize(path) == 0:
            raise BadSample("empty_file", str(path))
        return open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise BadSample("missing_file", str(path)) from None
    except (OSError, ValueError) as e:  # permission denied, a symlink loop, a name too long; ValueError: a NUL byte
        raise BadSample("unreadable_file", getattr(e, "strerror", None) or f"{type(e).__name__}: {str(e)[:120]}") from None


def _decode(fp, max_pixels: int, min_side: int, setting: str) -> Image.Image:
    try:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        try:  # the size check below is ours (data.max_image_pixels): Pillow's own, at twice its limit, is set aside
            Image.MAX_IMAGE_PIXELS = None
            img = Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
        w, h = img.size
        if w * h > max_pixels:
            img.close()
            raise BadSample("decompression_bomb", f"{w}x{h} = {w * h:,} pixels > {setting}={max_pixels:,}")
        if w == 0 or h == 0:
            raise BadSample("corrupt_image", f"size {w}x{h}")
        if min_side and img.format == "JPEG":
            short = min(w, h)
            if short > 2 * min_side:
                img.draft("RGB" if img.mode == "RGB" else None, (math.ceil(min_side * w / short), math.ceil(min_side * h / short)))
        img.load()
        if img.getexif().get(_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        return to_rgb(img)
    except BadSample:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError) as e:
        raise BadSample("corrupt_image", f"{type(e).__name__}: {str(e)[:120]}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any valid Pillow mode -> RGB. Transparent pixels become white; 16-bit and float greys are rescaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info or mode == "PA":
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", img.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            a = a / 257.0
        elif mode == "F":
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        elif a.size and a.max() > 255:  # 32-bit integer greys hold 16-bit data in practice
            a = a / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB")


# ----------------------------------------------------------------------------------------------------------------------
# transform


class ImageTransform:
    """RGB PIL image -> (3, S, S) normalised float tensor.

    Train: a random resized crop (area fraction in `crop_scale`, aspect ratio in [3/4, 4/3], as torchvision's);
    eval: the centre square, which equals resizing the shorter side to S and centre-cropping. No flips: captions
    may speak of left and right. Random draws come from `generator` (the sample's own) or the global RNG.
    """

    def __init__(self, size: int, mean: list[float], std: list[float], train: bool,
                 crop_scale: tuple[float, float] = (0.9, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> None:
        self.size, self.train, self.crop_scale, self.ratio = size, train, tuple(crop_scale), tuple(ratio)
        self.mean, self.std = list(mean), list(std)
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)  # (3, 1, 1)
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std_t  # (3, 1, 1)

    @property
    def min_side(self) -> int:
        """Shorter side a decoded image needs so the crop is not upsampled (for reduced-size JPEG decoding)."""
        return math.ceil(self.size / math.sqrt(self.crop_scale[0])) if self.train else self.size

    def crop_box(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the region that is resized to S x S."""
        if self.train:
            area = height * width
            log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
            for _ in range(10):
                u = torch.rand(2, generator=generator).tolist()
                target = area * (self.crop_scale[0] + u[0] * (self.crop_scale[1] - self.crop_scale[0]))
                aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
                w = int(round(math.sqrt(target * aspect)))
                h = int(round(math.sqrt(target / aspect)))
                if 0 < w <= width and 0 < h <= height:
                    top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                    left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                    return top, left, h, w
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = to_rgb(img)
        top, left, h, w = self.crop_box(img.height, img.width, generator)
        if (h, w) != (img.height, img.width):
            img = img.crop((left, top, left + w, top + h))  # only the kept pixels are copied below
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1)  # (3, h, w) uint8, channels-last in memory
        if (h, w) != (self.size, self.size):
            # the uint8 kernel is fastest on channels-last input; it rounds and clips like PIL's resize
            x = TF.resize(x, [self.size, self.size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return torch.addcmul(self.shift, x.float(), self.scale)  # (3, S, S)


def build_transform(model_cfg: ModelConfig, data_cfg: DataConfig | None, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> (3, S, S) float tensor. Train: random resized crop (when data.augment); eval: centre square."""
    augment = train and (data_cfg is None or data_cfg.augment)
    scale = tuple(data_cfg.crop_scale) if data_cfg is not None else (0.9, 1.0)
    return ImageTransform(model_cfg.image_size, model_cfg.image_mean, model_cfg.image_std, augment, scale)
