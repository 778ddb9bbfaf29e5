"""A decoding worker's memory over many rows: the embed loader (table rows -> decoded, resized pixels -> collated
batches) read as fast as the workers decode, with each worker's anonymous memory sampled as it goes.

    python -m scripts.bench_worker_memory --data rows_1000000.csv --root data/shapes        # the toolkit's workers
    python -m scripts.bench_worker_memory --data rows_1000000.csv --root data/shapes --dynamic  # glibc's default

`--dynamic` starts the workers without `fixed_mmap_threshold` (glibc's default, a threshold that rises), to show
what it saves. A table
of N rows over the bundled images comes from `scripts.bench_scale.make_table`.
"""

from __future__ import annotations

import argparse
import os
import time

from torch.utils.data import DataLoader

from contrastive.config import ModelConfig
from contrastive.data.images import ImageTransform
from contrastive.data.loader import ignore_stop_signals, init_worker
from contrastive.search.collection import open_collection
from contrastive.search.embed import ImageRows, batch_plan, collate


def anonymous_mib(pid: int) -> float:
    """A process's anonymous (private, not file-backed) resident memory."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = {line.split(":")[0]: line.split()[1] for line in f if ":" in line}
    return int(fields["Anonymous"]) / 1024


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a table of image paths and captions")
    p.add_argument("--root", default=None, help="the folder the images are in (the table's by default)")
    p.add_argument("--rows", type=int, default=0, help="rows to read (0: all)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--every", type=int, default=100_000, help="rows between samples")
    p.add_argument("--dynamic", action="store_true", help="glibc's default (dynamic) mmap threshold in the workers")
    a = p.parse_args(argv)
    collection = open_collection(a.data, root=a.root)
    rows = min(a.rows or len(collection), len(collection))
    model = ModelConfig()  # the default normalisation
    preprocess = ImageTransform(a.image_size, model.image_mean, model.image_std, train=False)
    plan = batch_plan(0, rows, a.batch_size, 8192)
    loader = DataLoader(ImageRows(collection, preprocess, 89_478_485), batch_sampler=plan, collate_fn=collate,
                        num_workers=a.workers, prefetch_factor=4,
                        worker_init_fn=ignore_stop_signals if a.dynamic else init_worker)
    it = iter(loader)
    start, seen, marks = time.perf_counter(), 0, []
    print(f"{'rows':>10} {'s':>6}  worker anonymous MiB")
    for batch in it:
        seen += batch["loads"]
        if not marks or seen - marks[-1][0] >= a.every or seen == rows:
            marks.append((seen, [anonymous_mib(w.pid) for w in it._workers]))
            print(f"{seen:>10,} {time.perf_counter() - start:6.0f}  " + " ".join(f"{m:7.0f}" for m in marks[-1][1]),
                  flush=True)
    first, last = marks[0][1], marks[-1][1]
    grown = max(b - f for f, b in zip(first, last))
    print(f"{'dynamic mmap threshold' if a.dynamic else 'fixed mmap threshold'}: {seen:,} rows in "
          f"{time.perf_counter() - start:.0f} s; the most a worker grew: {grown:+.0f} MiB "
          f"(from {max(first):.0f} to {max(last):.0f} MiB)")


if __name__ == "__main__":
    main()
