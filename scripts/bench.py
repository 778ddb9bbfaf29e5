"""Training-speed benchmark against OpenCLIP: one command, no interaction.

    python -m scripts.bench                       # CPU: the tiny config, every step variant vs OpenCLIP
    python -m scripts.bench --data data/shapes/train.csv   # end to end: real images through the loader
    python -m scripts.bench --compile             # add torch.compile'd contenders (slow to compile on CPU)
    python -m scripts.bench                       # on a GPU: ViT-B/32 b512 and ViT-B/16 b256 (bf16, compiled too)
    python -m scripts.bench --specs b32,b16,l14   # add ViT-L/14 b128
    python -m scripts.bench --device cpu --specs b32,b16 --batch-size 8 --grad-checkpointing   # real sizes on a CPU

Prints JSON and appends a markdown table to docs/benchmarks.md (section "## Training speed"). OpenCLIP is the
optional `bench` extra (`pip install -e .[bench]`); it runs twice, as its training script builds AdamW (torch's
default implementation) and with the fused AdamW kernel the toolkit's default uses. Speed-ups are given over
OpenCLIP and over `plain`; without OpenCLIP the toolkit's variants are compared to `plain` alone. With `--data`,
OpenCLIP reads the table through its own pipeline (`open_clip_train.data.CsvDataset` and its transforms), the
toolkit through its training loader. `--grad-checkpointing` adds both sides with activations recomputed in the
backward (`default+grad_ckpt`, `openclip+fused_adamw+grad_ckpt`).

On the CPU each step is also timed in CPU seconds of the process, and the MFU is taken from those: FLOPs per CPU
second against the best GEMM rate per CPU second measured at the towers' own shapes, so that load from other
processes (which stretches wall-clock time, by a different amount at the probe than during the steps) cancels.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]

from scripts import speedbench as B

CPU_VARIANTS = ("plain,+foreach_adamw,+fused_adamw,+fused_qkv,+pooled_last_block,+trim_padding,+onednn_linear,default,"
                "default+sync")
CUDA_VARIANTS = "plain,+fused_adamw,+fused_qkv,+pooled_last_block,+trim_padding,default,default+sync,default+compile"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--specs", default="", help=f"comma list of {', '.join(B.SPECS)} (default: tiny on CPU, b32,b16 on CUDA)")
    p.add_argument("--batch-size", type=int, default=0, help="override the spec's batch size")
    p.add_argument("--precision", default="", help="fp32 | bf16 | fp16 (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--variants", default="", help=f"toolkit step variants (known: {', '.join(B.VARIANTS)})")
    p.add_argument("--compile", action="store_true", help="add default+compile and OpenCLIP compiled (on by default on CUDA)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="add default+grad_ckpt and openclip+fused_adamw+grad_ckpt (activations recomputed in the backward)")
    p.add_argument("--no-openclip", action="store_true", help="skip OpenCLIP (speedups are then relative to plain)")
    p.add_argument("--openclip-fused-only", action="store_true",
                   help="only OpenCLIP with fused AdamW (its faster setting; saves a model's memory at real sizes)")
    p.add_argument("--rounds", type=int, default=0, help="alternation rounds (default 5 CPU, 10 CUDA)")
    p.add_argument("--steps", type=int, default=0, help="steps per contender per round (default 2 CPU, 10 CUDA)")
    p.add_argument("--split-steps", type=int, default=2, help="synchronised steps for the time split")
    p.add_argument("--warmup-steps", type=int, default=2,
                   help="untimed steps per contender first (at least 1: the optimizer state is created in the first)")
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
                   compile_openclip: bool, grad_checkpointing: bool = False,
                   as_its_script: bool = True) -> list[B.Contender]:
    out = []
    if openclip:
        if as_its_script:
            torch.manual_seed(0)
            out.append(B.openclip_contender("openclip", spec, device, precision))
        torch.manual_seed(0)
        out.append(B.openclip_contender("openclip+fused_adamw", spec, device, precision, fused_adamw=True))
        if grad_checkpointing:
            torch.manual_seed(0)
            out.append(B.openclip_contender("openclip+fused_adamw+grad_ckpt", spec, device, precision, fused_adamw=True,
                                            grad_checkpointing=True))
        if compile_openclip:
            out.append(B.openclip_contender("openclip+compile", spec, device, precision, compile=True))
    for name in variants:
        torch.manual_seed(0)
        out.append(B.toolkit_contender(name, spec, device, precision, B.VARIANTS[name]))
    return out


def make_feeds(contenders: list[B.Contender], args: argparse.Namespace, spec: B.BenchSpec, device: torch.device,
               lengths: tuple[int, int] | None, folder: str) -> dict[str, Iterator[dict]]:
    """Each contender's batches: one synthetic batch repeated for all, or with --data each side's own pipeline
    (OpenCLIP's contenders share one, the toolkit's another)."""
    if not args.data:
        synthetic = itertools.repeat(B.synthetic_batch(spec, device, caption_lengths=lengths))
        return {c.name: synthetic for c in contenders}
    toolkit = B.loader_batches(args.data, spec, device, args.workers, pin_memory=not args.no_pin_memory,
                               copy_stream=not args.no_copy_stream)
    names = [c.name for c in contenders]
    openclip = (B.openclip_batches(args.data, spec, device, args.workers, folder)
                if any(n.startswith("openclip") for n in names) else None)
    return {n: openclip if n.startswith("openclip") else toolkit for n in names}


def count_flops(contenders: list[B.Contender], spec: B.BenchSpec, device: torch.device, precision: str,
                batch: dict) -> tuple[int, dict[str, int]]:
    """(useful, executed by contender name) FLOPs of one step on `batch`. Useful: the toolkit's `plain` step, the
    full computation a straightforward model does. Executed: an eager step of the contender's own kind (compiled
    kernels are invisible to the counter), so work a shortcut skips is not counted. The fused kernels (AdamW, q/k/v)
    run the same matmuls as the plain ones, so toolkit variants are counted per (pooled last block, trimmed padding,
    gradient checkpointing: the recomputed forward is executed work)."""
    def eager_twin(key: tuple) -> B.Contender:
        if key[0] == "openclip":
            return next(x for x in contenders if x.name.startswith("openclip") and ("grad_ckpt" in x.name) == key[1]
                        and "compile" not in x.name)
        return B.toolkit_contender("flops", spec, device, precision,
                                   B.dataclasses.replace(B.PLAIN, pooled_last_block=key[1], trim_padding=key[2],
                                                         grad_checkpointing=key[3]))

    counted: dict[tuple, int] = {}
    executed = {}
    for c in contenders:
        if c.name.startswith("openclip"):
            key: tuple = ("openclip", "grad_ckpt" in c.name)
        else:
            o = B.VARIANTS[c.name]
            key = ("toolkit", o.pooled_last_block, o.trim_padding, o.grad_checkpointing)
        if key not in counted:
            counted[key] = B.step_flops(eager_twin(key), batch, device)
        executed[c.name] = counted[key]
    plain = ("toolkit", False, False, False)
    if plain not in counted:
        counted[plain] = B.step_flops(eager_twin(plain), batch, device)
    return counted[plain], executed


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
    if args.grad_checkpointing and "default+grad_ckpt" not in variants:
        variants.append("default+grad_ckpt")
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
    contenders = contenders_for(spec, device, precision, variants, openclip, compile_all and openclip,
                                args.grad_checkpointing, as_its_script=not args.openclip_fused_only)
    reference = ("openclip+fused_adamw" if args.openclip_fused_only else "openclip") if openclip else variants[0]
    rounds = args.rounds or (10 if cuda else 5)
    steps = args.steps or (10 if cuda else 2)

    lengths = caption_lengths(args)
    tmp = tempfile.TemporaryDirectory()  # OpenCLIP's copy of the table in --data mode
    feeds = make_feeds(contenders, args, spec, device, lengths, tmp.name)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    # the MFU denominator: the best GEMM rate at the towers' shapes seen before and after the timed steps
    shapes = B.gemm_shapes(spec) + ([(8192, 8192, 8192)] if cuda else [])
    peak_rate = B.matmul_rate(device, dtype, shapes)
    first_step = {}
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    for c in contenders:  # warm-up: compilation, allocator caches, optimizer state, workers started
        B.synchronize(device)
        t0 = time.perf_counter()
        c.step(next(feeds[c.name]), scaler)
        B.synchronize(device)
        first_step[c.name] = time.perf_counter() - t0
        for _ in range(args.warmup_steps - 1):
            c.step(next(feeds[c.name]), scaler)
    print(f"[{spec_name}] warm-up done: " + ", ".join(f"{k} {v:.1f}s" for k, v in first_step.items()), file=sys.stderr)

    cpu_times: dict[str, list[float]] = {}
    if args.data:
        times = B.run_end_to_end(contenders, feeds, device, precision, rounds, steps)
    else:
        times = B.run_alternating(contenders, feeds[contenders[0].name], device, precision, rounds, steps,
                                  cpu_times=None if cuda else cpu_times)
    also = ("plain",) if reference != "plain" and "plain" in variants else ()
    if "openclip+fused_adamw" in times and reference != "openclip+fused_adamw":
        also = ("openclip+fused_adamw", *also)
    results = B.summarise(contenders, times, spec.batch_size, reference, also, cpu_times)

    peak_rate = max(peak_rate, B.matmul_rate(device, dtype, shapes))
    flop_batch = B.synthetic_batch(spec, device, seed=1, caption_lengths=lengths)
    useful, executed = count_flops(contenders, spec, device, precision, flop_batch)
    for c, r in zip(contenders, results):
        r.phases_s = {k: round(v, 4) for k, v in B.phase_split(c, feeds[c.name], device, precision, args.split_steps).items()}
        r.peak_memory_gib = round(B.peak_memory(c, flop_batch, device, precision) / 2**30, 3)
        r.useful_gflop_per_sample = round(useful / spec.batch_size / 1e9, 3)
        r.executed_gflop_per_sample = round(executed[c.name] / spec.batch_size / 1e9, 3)
        seconds = r.cpu_step_s or r.step_s  # CPU: CPU time, as the probe's (see the module docstring)
        r.mfu_useful = round(useful / seconds / peak_rate, 4)
        r.mfu_executed = round(executed[c.name] / seconds / peak_rate, 4)
        r.compile_s = round(first_step[c.name], 2)
    tmp.cleanup()
    return {
        "spec": spec_name,
        "sizes": B.dataclasses.asdict(spec),
        "precision": precision,
        "mode": (f"end-to-end ({args.data}, {args.workers} workers, each side's own pipeline)" if args.data else "synthetic batch on device"
                 + (f", captions of {args.caption_lengths} tokens" if args.caption_lengths else "")),
        "reference": reference,
        "rounds": rounds,
        "steps_per_round": steps,
        "peak_matmul_tflops": round(peak_rate / 1e12, 3),
        "cpu_timed": bool(cpu_times),
        "results": [B.as_dict(r) for r in results],
        "table": B.markdown_table(results, reference),
    }


def markdown_report(rep: dict, machine: str, command: str, stamp: str) -> str:
    return (f"\n### {rep['spec']} b{rep['sizes']['batch_size']} {rep['precision']}, {rep['mode']} ({stamp})\n\n"
            f"Machine: {machine}. Command: `{command}`. Medians of {rep['rounds']} alternating rounds of "
            f"{rep['steps_per_round']} steps (× columns: median over rounds of the named contender's step time over "
            f"this one's); MFU against a measured {rep['peak_matmul_tflops']} TFLOP/s GEMM at the towers' shapes"
            f"{' (per CPU second, as the steps: see scripts/bench.py)' if rep['cpu_timed'] else ''}, in useful FLOPs (the "
            f"plain step's, the same for every contender) / executed FLOPs (each contender's own step).\n\n"
            f"{rep['table']}\n")


def append_markdown(path: Path, reports: list[dict], machine: str, command: str) -> None:
    """Add the reports at the end of the file's "## Training speed" section (created at the end if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    heading = "\n## Training speed\n"
    if heading not in text:
        text = text.rstrip("\n") + "\n" + heading + "\nAppended by `scripts/bench.py`; newest last.\n"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = "".join(markdown_report(rep, machine, command, stamp) for rep in reports)
    start = text.index(heading) + len(heading)
    end = text.find("\n## ", start)
    end = len(text) if end < 0 else end
    text = text[:end].rstrip("\n") + "\n" + block + text[end:]
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    specs = [s for s in (args.specs or ("b32,b16" if device.type == "cuda" else "tiny")).split(",") if s]
    for s in specs:
        if s not in B.SPECS:
            raise SystemExit(f"unknown spec {s!r}; known: {', '.join(B.SPECS)}")
    load_before = os.getloadavg()[0]
    reports = [bench_spec(s, args, device) for s in specs]
    machine = f"{B.machine_description(device)}, load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    command = "python -m scripts.bench " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
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
