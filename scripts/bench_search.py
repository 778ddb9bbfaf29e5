"""Search at scale: embedding throughput of `contrastive embed`, and faiss indexes against brute-force torch.topk.

1. Embedding: the default recipe's model (`configs/shapes_tiny.yaml`, built untrained: the weights do not change
   the cost) embeds the bundled 2,000 training images through the whole job (workers decoding, images and
   captions embedded, float16 shards and metadata written); also the image encoder alone on random pixels.
2. Indexes: N random unit vectors of width D (default 10k, 100k and 1M at 512), 1,000 random unit queries.
   For each index: build time (IVF trained on a sample), memory (its serialised size), single-query latency
   p50/p99 (k=10), recall@10 against the exact top 10 of `torch.topk` over the same matrix (the brute-force row
   is that reference, timed the same way). HNSW is built up to `--hnsw-max` vectors (its build is the slow one).

    python -m scripts.bench_search                       # prints the markdown tables
    python -m scripts.bench_search --skip-index          # embedding only
    python -m scripts.bench_search --skip-embed --threads 1 --sizes 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def default_encoder():
    from contrastive.config import load_config
    from contrastive.interop.loading import create_model_and_transforms
    from contrastive.search import model_encoder

    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", ["model.tokenizer=byte", "model.context_length=32"])
    model, _, preprocess, tokenizer = create_model_and_transforms(cfg.model)
    return model_encoder(model.eval(), preprocess, tokenizer, "cpu", "fp32", name="shapes_tiny (untrained)",
                         digest="untrained"), cfg


def bench_embedding(batch_size: int, workers: int, rounds: int) -> list[str]:
    from contrastive.search import embed_collection

    encoder, cfg = default_encoder()
    size = cfg.model.image_size
    pixels = torch.randn(batch_size, 3, size, size)
    encoder.encode_images(pixels)  # warm-up
    alone = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(5):
            encoder.encode_images(pixels)
        alone.append(5 * batch_size / (time.perf_counter() - start))
    job = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            m = embed_collection(str(ROOT / "data/shapes/train.csv"), Path(tmp) / "emb", encoder,
                                 batch_size=batch_size, workers=workers, progress=False)
            job.append(m["counts"]["embedded"] / (time.perf_counter() - start))
    cells = lambda xs: " | ".join(f"{x:.0f}" for x in xs)
    return [
        f"Model: `configs/shapes_tiny.yaml` (vit_tiny 64 px + text_tiny, embed {encoder.embed_dim}), built untrained; "
        f"fp32, batch {batch_size}, torch threads {torch.get_num_threads()}.",
        "",
        "| what | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " | median images/s |",
        "|---|" + "---|" * rounds + "---|",
        f"| image encoder alone (random pixels) | {cells(alone)} | {statistics.median(alone):.0f} |",
        f"| `contrastive embed` of train.csv (2,000 JPEGs, {workers} workers, images + captions, float16 shards) "
        f"| {cells(job)} | {statistics.median(job):.0f} |",
    ]


def random_unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def latencies(search, queries: np.ndarray, n: int) -> tuple[float, float]:
    """p50, p99 in ms of one query at a time."""
    times = []
    for q in queries[:n]:
        start = time.perf_counter()
        search(q[None])
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(0.99 * len(times)))]


def bench_indexes(n: int, d: int, kinds: list[str], hnsw_max: int, latency_queries: int) -> list[str]:
    from contrastive.search.index import build_index, index_bytes, recall_at_k

    x = random_unit(n, d, 0)
    queries = random_unit(1000, d, 1)
    xt = torch.from_numpy(x)
    exact = torch.cat([torch.topk(torch.from_numpy(queries[i : i + 100]) @ xt.T, 10, dim=1).indices
                       for i in range(0, len(queries), 100)]).numpy()  # (Q, 10): the reference
    p50, p99 = latencies(lambda q: torch.topk(xt @ torch.from_numpy(q[0]), 10), queries, latency_queries)
    rows = [f"| {n:,} | torch.topk (brute force) | – | – | {x.nbytes / 2**20:.0f} | {p50:.2f} | {p99:.2f} | 1.000 |"]
    for kind in kinds:
        if kind == "hnsw" and n > hnsw_max:
            continue
        start = time.perf_counter()
        index, params = build_index(x, kind)
        build = time.perf_counter() - start
        memory = index_bytes(index) / 2**20
        p50, p99 = latencies(lambda q: index.search(q, 10), queries, latency_queries)
        recall = recall_at_k(index, x, queries, 10, exact=exact)
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "–"
        rows.append(f"| {n:,} | {kind} | {shown} | {build:.2f} | {memory:.0f} | {p50:.2f} | {p99:.2f} | {recall:.3f} |")
        print(rows[-1], flush=True)
        del index
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw", "ivfpq"])
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest N for which HNSW is built")
    parser.add_argument("--latency-queries", type=int, default=200, help="single queries timed per index")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-embed", action="store_true")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: all cores)")
    args = parser.parse_args()
    import faiss

    if args.threads:
        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()[0]
    lines = []
    if not args.skip_embed:
        lines += [f"### Embedding throughput, torch on the CPU ({when})", "", *bench_embedding(args.batch_size, args.workers, args.rounds), ""]
        print("\n".join(lines), flush=True)
    table = [f"### Indexes: random unit vectors of width {args.dim}, k=10, 1,000 queries ({when})", "",
             "| N | index | parameters | build s | memory MiB | p50 ms | p99 ms | recall@10 |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for n in [] if args.skip_index else args.sizes:
        table += bench_indexes(n, args.dim, args.kinds, args.hnsw_max, args.latency_queries)
    lines += [] if args.skip_index else table
    command = " ".join(["python", "scripts/bench_search.py", *sys.argv[1:]])
    lines += ["", f"`{command}` — {cpu_name()}, {os.cpu_count()} cores, load average "
                  f"{load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end; torch {torch.__version__}, "
                  f"faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads); latency: one query at a time "
                  f"({args.latency_queries} per index)"]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
