"""Retrieval metrics at 10^5 pairs: time and peak memory of the blockwise recall@k / ranks (`block_rows` query rows
per similarity block), on random unit embeddings (the metrics' cost does not depend on the values).

    python -m scripts.bench_retrieval --pairs 100000 --dim 512
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import sys
import time

import torch

from contrastive.evaluation.metrics import block_rows, retrieval_metrics


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(args.pairs, args.dim, generator=g), dim=1)  # (N, D)
    texts = torch.nn.functional.normalize(images + 0.5 * torch.randn(args.pairs, args.dim, generator=g), dim=1)
    owners = torch.arange(args.pairs)
    before = peak_rss_mib()
    rows = block_rows(args.pairs)
    start = time.perf_counter()
    metrics = retrieval_metrics(images, texts, owners, chunk_size=rows)
    seconds = time.perf_counter() - start
    print(f"    python -m scripts.bench_retrieval {shlex.join(sys.argv[1:])}\n")
    print(f"{platform.machine()}, {os.cpu_count()} cores (shared), {args.threads} threads, torch {torch.__version__}: "
          f"{args.pairs:,} pairs of width {args.dim}, blocks of {rows} rows: {seconds:.1f} s, peak RSS "
          f"{peak_rss_mib():.0f} MiB ({before:.0f} MiB before; a full matrix would be "
          f"{args.pairs ** 2 * 4 / 2**30:.1f} GiB); recall@1 t2i {metrics['image_retrieval_recall@1']:.3f}")


if __name__ == "__main__":
    main()
