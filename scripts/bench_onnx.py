"""CPU images/s of the image encoder on torch and on onnxruntime (the `contrastive export --format onnx` graphs), and
of `contrastive embed` over a table with each, measured side by side.

    python -m scripts.bench_onnx                          # the default recipe's model (configs/shapes_tiny.yaml)
    python -m scripts.bench_onnx --checkpoint runs/<run> --batch 64 --rounds 7 --threads 2

The two runtimes alternate within every round (which goes first alternates too), so load from other jobs falls on
both alike; medians over rounds and the median of the per-round ratios are reported. Prints a Markdown section for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def default_model():
    """The default recipe's model, untrained (throughput does not depend on the weights), byte tokenizer."""
    from contrastive.config import load_config
    from contrastive.model import create_model

    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", ["model.tokenizer=byte"]).model
    model, tokenizer = create_model(cfg)
    return model.eval(), tokenizer, cfg


def time_encoder(encode, batches: list[torch.Tensor]) -> float:
    """Images/s of `encode` over `batches` (each (B, 3, S, S)), after one warm-up batch."""
    encode(batches[0])
    start = time.perf_counter()
    for b in batches:
        encode(b)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def alternate(contenders: dict[str, callable], rounds: int) -> dict[str, list[float]]:
    """Each contender once per round, the order flipped every round."""
    names = list(contenders)
    results = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            results[n].append(contenders[n]())
    return results


def table(results: dict[str, list[float]], base: str) -> list[str]:
    rounds = len(results[base])
    lines = ["| runtime | " + " | ".join(f"round {i + 1}" for i in range(rounds)) + " | median images/s | vs torch |",
             "|---|" + "---|" * rounds + "---|---|"]
    for name, values in results.items():
        ratio = statistics.median(v / b for v, b in zip(values, results[base]))
        lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in values)
                     + f" | {statistics.median(values):.0f} | {ratio:.2f}× |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a run or checkpoint (default: the default recipe's model)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per round (encoder alone)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2, help="torch threads = onnxruntime intra-op threads")
    parser.add_argument("--data", default=str(ROOT / "data/shapes/val.csv"), help="table for the embed rounds")
    parser.add_argument("--embed-rounds", type=int, default=3, help="contrastive embed rounds (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import contrastive
    from contrastive.interop.onnx_export import OnnxEncoders, with_onnx, write_onnx
    from contrastive.data import build_transform
    from contrastive.search import embed_collection, model_encoder

    tmp = Path(tempfile.mkdtemp(prefix="bench_onnx-"))
    if args.checkpoint:
        from contrastive.interop.hf_export import _model_config

        model, _, tokenizer = contrastive.load(args.checkpoint)
        cfg = _model_config(Path(args.checkpoint))
    else:
        model, tokenizer, cfg = default_model()
    with contextlib.redirect_stdout(io.StringIO()):
        diffs = write_onnx(model, tokenizer, cfg, tmp / "onnx")
    onnx = OnnxEncoders(tmp / "onnx", threads=args.threads)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(args.batch, 3, cfg.image_size, cfg.image_size, generator=g) for _ in range(args.batches)]

    @torch.inference_mode()
    def torch_images(x):
        return model.encode_image(x)

    encoder_results = alternate({"torch": lambda: time_encoder(torch_images, batches),
                                 "onnxruntime": lambda: time_encoder(onnx.encode_image, batches)}, args.rounds)
    embed_results = {}
    if args.embed_rounds:
        encoder = model_encoder(model, build_transform(cfg, None, train=False), tokenizer, "cpu", "fp32")
        fast = with_onnx(encoder, tmp / "onnx", threads=args.threads)
        counter = iter(range(10**6))

        def embed(enc) -> float:
            out = tmp / f"emb{next(counter)}"
            start = time.perf_counter()
            manifest = embed_collection(args.data, out, enc, batch_size=args.batch, workers=2, progress=False)
            return manifest["counts"]["embedded"] / (time.perf_counter() - start)

        embed_results = alternate({"torch": lambda: embed(encoder), "onnxruntime": lambda: embed(fast)},
                                  args.embed_rounds)

    import onnxruntime

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    command = "python -m scripts.bench_onnx " + " ".join(sys.argv[1:])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"### ONNX: image encoder, {cfg.image_encoder} {cfg.image_size} px, batch {args.batch}, {args.threads} "
          f"threads ({when})\n")
    print(f"`{command.strip()}` — {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the "
          f"end; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; export max |diff| image "
          f"{diffs['image']:.1e}, text {diffs['text']:.1e}\n")
    print("Encoder alone (random pixels, fp32):\n")
    print("\n".join(table(encoder_results, "torch")))
    if embed_results:
        print(f"\n`contrastive embed` of {Path(args.data).name} (decode + preprocess in 2 workers, images and captions "
              f"embedded, float16 shards written):\n")
        print("\n".join(table(embed_results, "torch")))


if __name__ == "__main__":
    main()
