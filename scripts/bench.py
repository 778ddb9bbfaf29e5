"""Training-speed benchmark against OpenCLIP: one command, no interaction.

    python scripts/bench.py                       # CPU: the tiny config, every step variant vs OpenCLIP
    python scripts/bench.py --data data/shapes/train.csv   # end to end: real images through the loader
    python scripts/bench.py --compile             # add torch.compile'd contenders (slow to compile on CPU)
    python scripts/bench.py                       # on a GPU: ViT-B/32 b512 and ViT-B/16 b256 (bf16, compiled too)
    python scripts/bench.py --specs b32,b16,l14   # add ViT-L/14 b128

Prints JSON and appends a markdown table to docs/benchmarks.md (section "## Training speed"). OpenCLIP is the
optional `bench` extra (`pip install -e .[bench]`); without it the toolkit's variants are compared to `plain`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import speedbench as B  # noqa: E402  (scripts/, beside this file)

CPU_VARIANTS = "plain,+foreach_adamw,+fused_adamw,+fused_qkv,+pooled_last_block,+trim_padding,default,default+sync"
CUDA_VARIANTS = "plain,+fused_adamw,+fused_qkv,+pooled_last_block,+trim_padding,default,default+sync,default+compile"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--specs", default="", help=f"comma list of {', '.join(B.SPECS)} (default: tiny on CPU, b32,b16 on CUDA)")
    p.add_argument("--batch-size", type=int, default=0, help="override the spec's batch size")
    p.add_argument("--precision", default="", help="fp32 | bf16 | fp16 (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--variants", default="", help=f"toolkit step variants (known: {', '.join(B.VARIANTS)})")
    p.add_argument("--compile", action="store_true", help="add default+compile and OpenCLIP compiled (on by default on CUDA)")
    p.add_argument("--no-openclip", action="store_true", help="skip OpenCLIP (speedups are then relative to plain)")
    p.add_argument("--rounds", type=int, default=0, help="alternation rounds (default 5 CPU, 10 CUDA)")
    p.add_argument("--steps", type=int, default=0, help="steps per contender per round (default 2 CPU, 10 CUDA)")
    p.add_argument("--split-steps", type=int, default=2, help="synchronised steps for the time split")
    p.add_argument("--caption-lengths", default="", metavar="LO-HI",
                   help="synthetic captions of LO..HI tokens (uniform) instead of full-length ones, e.g. 8-40")
    p.add_argument("--data", default="", help="end-to-end mode: a training table read through the real loader")
    p.add_argument("--workers", type=int, default=2, help="loader workers in end-to-end mode")
    p.add_argument("--no-pin-memory", action="store_true", help="end-to-end on CUDA: pageable instead of pinned batches")
    p.add_argument("--no-copy-stream", action="store_true",
                   help="end-to-end on CUDA: copy batches on the compute stream instead of a side stream")
    p.add_argument("--json", default="", help="also write the JSON report here")
    p.add_argument("--markdown", default=str(ROOT / "docs" / "benchmarks.md"), help="append the table here ('' = no)")
    return p.parse_args(argv)


def caption_lengths(args: argparse.Namespace) -> tuple[int, int] | None:
    if not args.caption_lengths:
        return None
    try:
        lo, hi = (int(x) for x in args.caption_lengths.split("-"))
    except ValueError:
        sys.exit(f"--caption-lengths wants LO-HI (e.g. 8-40), got '{args.caption_lengths}'")
    return lo, hi


def contenders_for(spec: B.BenchSpec, device: torch.device, precision: str, variants: list[str], openclip: bool,
                   compile_openclip: bool) -> list[B.Contender]:
    out = []
    if openclip:
        torch.manual_seed(0)
        out.append(B.openclip_contender("openclip", spec, device, precision))
        if compile_openclip:
            out.append(B.openclip_contender("openclip+compile", spec, device, precision, compile=True))
    for name in variants:
        torch.manual_seed(0)
        out.append(B.toolkit_contender(name, spec, device, precision, B.VARIANTS[name]))
    return out


def bench_spec(spec_name: str, args: argparse.Namespace, device: torch.device) -> dict:
    spec = B.SPECS[spec_name]
    if args.batch_size:
        spec = B.dataclasses.replace(spec, batch_size=args.batch_size)
    cuda = device.type == "cuda"
    precision = args.precision or ("bf16" if cuda else "fp32")
    variants = [v for v in (args.variants or (CUDA_VARIANTS if cuda else CPU_VARIANTS)).split(",") if v]
    compile_all = args.compile or cuda
    if compile_all and "default+compile" not in variants:
        variants.append("default+compile")
    unknown = [v for v in variants if v not in B.VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(B.VARIANTS)}")
    openclip = not args.no_openclip
    if openclip:
        try:
            import open_clip  # noqa: F401
        except ImportError:
            print("open_clip is not installed (pip install -e .[bench]); comparing variants only", file=sys.stderr)
            openclip = False
    contenders = contenders_for(spec, device, precision, variants, openclip, compile_all and openclip)
    reference = "openclip" if openclip else variants[0]
    rounds = args.rounds or (10 if cuda else 5)
    steps = args.steps or (10 if cuda else 2)

    lengths = caption_lengths(args)
    if args.data:
        batches = B.loader_batches(args.data, spec, device, args.workers, pin_memory=not args.no_pin_memory,
                                    copy_stream=not args.no_copy_stream)
    else:
        batches = itertools.repeat(B.synthetic_batch(spec, device, caption_lengths=lengths))

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    matmul_n = 8192 if cuda else 1024
    # the MFU denominator: the best matmul rate seen before and after the timed steps (a shared CPU varies)
    peak_rate = max(B.matmul_rate(device, dtype, matmul_n) for _ in range(3))
    first_step = {}
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    for c in contenders:  # warm-up: compilation, allocator caches, optimizer state
        B.synchronize(device)
        t0 = time.perf_counter()
        c.step(next(batches), scaler)
        B.synchronize(device)
        first_step[c.name] = time.perf_counter() - t0
        c.step(next(batches), scaler)
    print(f"[{spec_name}] warm-up done: " + ", ".join(f"{k} {v:.1f}s" for k, v in first_step.items()), file=sys.stderr)

    run = B.run_end_to_end if args.data else B.run_alternating
    times = run(contenders, batches, device, precision, rounds, steps)
    results = B.summarise(contenders, times, spec.batch_size, reference)

    peak_rate = max([peak_rate] + [B.matmul_rate(device, dtype, matmul_n) for _ in range(3)])
    flop_batch = B.synthetic_batch(spec, device, seed=1, caption_lengths=lengths)
    flops = {}
    for c, r in zip(contenders, results):
        kind = "openclip" if c.name.startswith("openclip") else "toolkit"
        if kind not in flops:
            # model FLOPs: an eager step of each kind (compiled kernels are invisible to the counter); the toolkit's
            # is counted on `plain`, the full computation, so work its shortcuts skip does not count as throughput
            if kind == "openclip":
                eager = next(x for x in contenders if x.name.startswith("openclip") and "compile" not in x.name)
            else:
                eager = B.toolkit_contender("flops", spec, device, precision, B.VARIANTS["plain"])
            flops[kind] = B.step_flops(eager, flop_batch, device)
        r.phases_s = {k: round(v, 4) for k, v in B.phase_split(c, batches, device, precision, args.split_steps).items()}
        r.peak_memory_gib = round(B.peak_memory(c, flop_batch, device, precision) / 2**30, 3)
        r.gflop_per_sample = round(flops[kind] / spec.batch_size / 1e9, 3)
        r.mfu = round(flops[kind] / r.step_s / peak_rate, 4)
        r.compile_s = round(first_step[c.name], 2)
    return {
        "spec": spec_name,
        "sizes": B.dataclasses.asdict(spec),
        "precision": precision,
        "mode": (f"end-to-end ({args.data}, {args.workers} workers)" if args.data else "synthetic batch on device"
                 + (f", captions of {args.caption_lengths} tokens" if args.caption_lengths else "")),
        "reference": reference,
        "rounds": rounds,
        "steps_per_round": steps,
        "peak_matmul_tflops": round(peak_rate / 1e12, 3),
        "results": [B.as_dict(r) for r in results],
        "table": B.markdown_table(results, reference),
    }


def append_markdown(path: Path, reports: list[dict], machine: str, command: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if "## Training speed" not in text:
        text = text.rstrip("\n") + "\n\n## Training speed\n\nAppended by `scripts/bench.py`; newest last.\n"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for rep in reports:
        text += (f"\n### {rep['spec']} b{rep['sizes']['batch_size']} {rep['precision']}, {rep['mode']} ({stamp})\n\n"
                 f"Machine: {machine}. Command: `{command}`. Medians of {rep['rounds']} alternating rounds of "
                 f"{rep['steps_per_round']} steps; MFU against a measured {rep['peak_matmul_tflops']} TFLOP/s matmul.\n\n"
                 f"{rep['table']}\n")
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    specs = [s for s in (args.specs or ("b32,b16" if device.type == "cuda" else "tiny")).split(",") if s]
    for s in specs:
        if s not in B.SPECS:
            raise SystemExit(f"unknown spec {s!r}; known: {', '.join(B.SPECS)}")
    machine = B.machine_description(device)
    reports = [bench_spec(s, args, device) for s in specs]
    command = "python scripts/bench.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    report = {"machine": machine, "command": command.strip(), "reports": reports}
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    for rep in reports:
        print(f"\n{rep['spec']} ({rep['precision']}, {rep['mode']})\n{rep['table']}", file=sys.stderr)
    if args.markdown:
        append_markdown(Path(args.markdown), reports, machine, command.strip())


if __name__ == "__main__":
    main()
