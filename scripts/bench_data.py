"""Data-loading throughput: this package's pipeline vs OpenCLIP's CSV dataset with its transforms.

Both read the same CSV of JPEG files with the same DataLoader settings (workers, batch size, no pinning), decode,
random-resized-crop to the model size, normalise and tokenize; they take turns for several rounds (the order reversed
every other round, so that none always runs first) and the median
images/s of each is reported (the first batch, which includes worker start-up, is not timed).

The reference is OpenCLIP's own `open_clip_train.data.CsvDataset` (in the open_clip_torch wheel) with its
`image_transform(size, is_train=True)` (PIL RandomResizedCrop(0.9, 1.0), bicubic; convert; ToTensor; Normalize) and
its tokenizer. Needs `pip install ".[bench]"`.

    python -m scripts.bench_data --images 1024 --source-size 640x480 --size 224 --workers 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader


from contrastive.data import Collate, ImageTextDataset, ImageTransform, ResumableBatchSampler, TableSource  # noqa: E402
from contrastive.text.tokenizer import build_tokenizer


def make_images(folder: Path, n: int, width: int, height: int, seed: int = 0) -> Path:
    """n photo-like JPEGs (gradients, shapes, noise; quality 90, 4:2:0) and a CSV `filepath,title` with absolute paths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(n):
        c0, c1 = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
        t = ((xx * rng.uniform(0.3, 1) + yy * rng.uniform(0.3, 1)) / (width + height))[..., None]
        a = (c0 * (1 - t) + c1 * t + rng.normal(0, 8, (height, width, 3))).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(a)
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = rng.integers(0, width), rng.integers(0, height)
            r = int(rng.integers(10, min(width, height) // 3))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        path = folder / f"{i:05d}.jpg"
        img.save(path, quality=90)
        rows.append((str(path.resolve()), f"a picture number {i} with four round shapes"))
    table = folder / "data.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        w.writerows(rows)
    return table


class _NoDraft(ImageTransform):
    @property
    def min_side(self) -> int:
        return 0


def openclip_loader(table: Path, size: int, batch: int, workers: int) -> DataLoader:
    import open_clip
    from open_clip_train.data import CsvDataset

    ds = CsvDataset(str(table), open_clip.image_transform(size, is_train=True), img_key="filepath", caption_key="title",
                    sep=",", tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                      persistent_workers=False, prefetch_factor=4 if workers else None)


def our_loader(table: Path, size: int, batch: int, workers: int, draft: bool = True) -> DataLoader:
    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    transform = (ImageTransform if draft else _NoDraft)(size, mean, std, train=True, crop_scale=(0.9, 1.0))
    ds = ImageTextDataset(TableSource(str(table), "filepath", "title"), transform)
    sampler = ResumableBatchSampler(len(ds), batch, seed=0)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=Collate(build_tokenizer("byte", 77)), num_workers=workers,
                      prefetch_factor=4 if workers else None)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def images_per_second(loader: DataLoader) -> float:
    it = iter(loader)
    next(it)  # worker start-up and the first batch are not timed
    n, start = 0, time.perf_counter()
    for batch in it:
        n += len(batch[0] if isinstance(batch, (list, tuple)) else batch["pixels"])
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--source-size", default="640x480", help="WxH of the generated JPEGs")
    p.add_argument("--size", type=int, default=224, help="model input size")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default="", help="an existing CSV (filepath,title) instead of generated images")
    p.add_argument("--json", default="", help="write the figures here")
    args = p.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    tmp = tempfile.TemporaryDirectory()
    if args.data:
        table = Path(args.data)
    else:
        w, h = (int(v) for v in args.source_size.split("x"))
        table = make_images(Path(tmp.name), args.images, w, h)
    pipelines = {
        "openclip": lambda: openclip_loader(table, args.size, args.batch, args.workers),
        "contrastive": lambda: our_loader(table, args.size, args.batch, args.workers),
        "contrastive (no draft)": lambda: our_loader(table, args.size, args.batch, args.workers, draft=False),
    }
    results: dict[str, list[float]] = {k: [] for k in pipelines}
    for r in range(args.rounds):
        order = list(pipelines.items())
        for name, make in order if r % 2 == 0 else order[::-1]:  # alternate: no pipeline always runs first
            results[name].append(images_per_second(make()))
            print(f"round {r + 1} {name:24s} {results[name][-1]:8.1f} images/s", flush=True)
    base = statistics.median(results["openclip"])
    print(f"\nMachine: {machine()}, load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end. "
          f"Command: `python -m scripts.bench_data {' '.join(shlex.quote(a) for a in sys.argv[1:])}`")
    print(f"\n| pipeline | images/s (median of {args.rounds}) | vs OpenCLIP |\n|---|---|---|")
    for name, values in results.items():
        m = statistics.median(values)
        print(f"| {name} | {m:.0f} | {m / base:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "images_per_s": results}, indent=1))


if __name__ == "__main__":
    main()
