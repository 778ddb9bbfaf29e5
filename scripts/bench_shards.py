"""Shard start-up and resume at 10^4 shards: time to the first batch with and without the count index, and the time
a resume takes to reach its first batch early and late in the epoch, from a cursor (replay, no decoding) and
without one (the consumed part re-read and its images decoded at 1/8 scale).

The shards are tiny (a few 16 px JPEGs each), so the figures are the per-shard and per-sample costs of the loader
itself, not of reading or decoding real images. Single process (no DataLoader workers), one stream.

    python -m scripts.bench_shards --shards 10000 --per-shard 10
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from contrastive.config import load_config
from contrastive.data import shard_index
from contrastive.data.images import ImageTransform
from contrastive.data.shard_index import index_paths
from contrastive.data.shards import ShardStream
from contrastive.text.tokenizer import build_tokenizer


def make_tiny_shards(folder: Path, n_shards: int, per_shard: int) -> str:
    """`n_shards` tars of `per_shard` samples (a 16 px JPEG and a caption); returns their brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for c in range(8):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (c * 30, 255 - c * 30, 90)).save(buf, format="JPEG")
        images.append(buf.getvalue())
    width = len(str(n_shards - 1))
    for s in range(n_shards):
        with tarfile.open(folder / f"{s:0{width}d}.tar", "w") as tar:
            for i in range(per_shard):
                for ext, data in (("jpg", images[(s + i) % 8]), ("txt", f"shape {s} {i}".encode())):
                    info = tarfile.TarInfo(f"{i:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{{{0:0{width}d}..{n_shards - 1:0{width}d}}}.tar")


def build_stream(pattern: str, batch_size: int) -> ShardStream:
    cfg = load_config(None, [f"data.train={pattern}", "data.num_workers=0", "data.shuffle_buffer=1000"])
    return ShardStream(cfg.data, ImageTransform(16, [0.5] * 3, [0.5] * 3, train=True), build_tokenizer("byte", 32),
                       batch_size, seed=0)


def first_batch_s(make: Callable[[], ShardStream], epoch: int, start_batch: int,
                  cursors: dict | None = None) -> tuple[float, float]:
    """(seconds to build the stream, seconds from there to its first batch)."""
    t0 = time.perf_counter()
    stream = make()
    t1 = time.perf_counter()
    stream.set_position(epoch, start_batch, cursors)
    next(iter(stream))
    return t1 - t0, time.perf_counter() - t1


def drop_index(pattern: str) -> None:
    folder = Path(pattern).parent.resolve()
    for path in index_paths(folder):
        path.unlink(missing_ok=True)


def bench_startup(pattern: str, batch_size: int, rounds: int) -> dict[str, list[float]]:
    """Start-up (stream built + first batch) without the index (it is deleted first, so the start counts every
    shard and writes it), counted in one process and in the pool as shipped, and with the index; alternating."""
    times: dict[str, list[float]] = {"without index, one counting process": [], "without index": [],
                                     "with index": []}
    shipped = shard_index.PARALLEL_FROM
    for _ in range(rounds):
        for name, values in times.items():
            if name != "with index":
                drop_index(pattern)
            shard_index.PARALLEL_FROM = 1 << 62 if "one counting process" in name else shipped
            try:
                values.append(sum(first_batch_s(lambda: build_stream(pattern, batch_size), 0, 0)))
            finally:
                shard_index.PARALLEL_FROM = shipped
    return times


def bench_resume(pattern: str, batch_size: int, rounds: int) -> dict[str, list[float]]:
    """Time to the first batch of a resume at 10% and 90% of the epoch, from a cursor and without one. With good
    samples only, the single stream has taken start_batch * batch_size samples by batch start_batch."""
    stream = build_stream(pattern, batch_size)
    times: dict[str, list[float]] = {}
    for share in (0.1, 0.9):
        b = int(stream.steps_per_epoch * share)
        cursor = {0: (0, b - 1, b * batch_size)}
        for name, cursors in ((f"cursor, batch {b}", cursor), (f"no cursor, batch {b}", None)):
            times[name] = [first_batch_s(lambda: stream, 0, b, cursors)[1] for _ in range(rounds)]
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=10_000)
    parser.add_argument("--per-shard", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resume-rounds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        t0 = time.perf_counter()
        pattern = make_tiny_shards(Path(tmp) / "shards", args.shards, args.per_shard)
        made = time.perf_counter() - t0
        results = {**bench_startup(pattern, args.batch_size, args.rounds),
                   **(bench_resume(pattern, args.batch_size, args.resume_rounds) if args.resume_rounds else {})}
    print(f"### {args.shards:,} shards of {args.per_shard} samples, batch {args.batch_size}, one stream "
          f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), torch "
          f"{torch.__version__}, Python {platform.python_version()}. Shards written in {made:.0f} s.\n")
    print(f"    python -m scripts.bench_shards {shlex.join(sys.argv[1:])}\n")
    print("| case | median s to the first batch | runs |\n|---|---:|---:|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(values):.2f} | {len(values)} |")


if __name__ == "__main__":
    main()
