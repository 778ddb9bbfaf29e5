"""Peak memory and time of a contrastive loss forward + backward: plain vs exact tiled (vs OpenCLIP's ClipLoss).

    python -m scripts.bench_loss --device cpu --dim 256 --batch-sizes 1024,4096,8192,16384,65536 \\
        --chunk-size 1024 --max-memory-gb 4.5 --threads 1 --output docs/benchmarks.md

On CPU every measurement runs in a forked child process that resets its peak resident set just before the
loss (Linux `clear_refs`; `ru_maxrss` elsewhere) and reports the growth of the peak, so allocator caches of
other runs cannot hide anything. On CUDA it reports `torch.cuda.max_memory_allocated` above the memory held by
the inputs. Plain methods are skipped at batch sizes whose (B, B) matrices would not fit in --max-memory-gb.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import platform
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


from contrastive.losses import LOSSES  # noqa: E402

SECTION = "## Loss memory and time"
PLAIN_MATRICES = 6  # (B, B) fp32 buffers a plain forward + backward holds at once (logits, softmaxes, grads)


def make_inputs(bsz: int, dim: int, device: str) -> list[torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    image = F.normalize(torch.randn(bsz, dim, generator=gen), dim=-1).to(device).requires_grad_()
    text = F.normalize(torch.randn(bsz, dim, generator=gen), dim=-1).to(device).requires_grad_()
    scale = torch.tensor(14.3, device=device, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, requires_grad=True)
    return [image, text, scale, bias]


def loss_fn(method: str, loss: str, chunk: int):
    if method == "open_clip":
        from open_clip.loss import ClipLoss, SigLipLoss

        module = ClipLoss() if loss == "clip" else SigLipLoss()
        return lambda image, text, scale, bias: module(image, text, scale, bias)
    kwargs = {"chunk_size": chunk} if method == "tiled" else {}
    return lambda image, text, scale, bias: LOSSES[loss](image, text, scale, bias, **kwargs)


def run_once(fn, inputs: list[torch.Tensor]) -> None:
    for t in inputs:
        t.grad = None
    fn(*inputs).backward()


def measure(method: str, loss: str, bsz: int, dim: int, chunk: int, device: str, repeats: int) -> dict:
    """Peak memory above the inputs (MiB) and best-of-`repeats` seconds for one forward + backward."""
    fn = loss_fn(method, loss, chunk)
    run_once(fn, make_inputs(min(bsz, 256), dim, device))  # load kernels; small, so no allocator cache is reused
    inputs = make_inputs(bsz, dim, device)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _reset_peak_rss_kib()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_once(fn, inputs)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mib = (_peak_rss_kib() - base) / 1024
    return {"method": method, "batch": bsz, "peak_mib": peak_mib, "seconds": min(times)}


def _status_kib(field: str) -> int | None:
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) for line in f if line.startswith(field)), None)


def _reset_peak_rss_kib() -> int:
    """Reset the peak resident set to the current one (Linux clear_refs) and return it, in KiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS:")
    except OSError:  # no reset available: measure against the peak so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_kib() -> int:
    try:
        return _status_kib("VmHWM:")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_in_child(args: argparse.Namespace, method: str, bsz: int) -> dict:
    """Fork a child for one measurement, so no allocator cache of another run is in its resident set."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child() -> None:
        try:
            queue.put(measure(method, args.loss, bsz, args.dim, args.chunk_size, args.device, args.repeats))
        except Exception as err:  # reported in the table, e.g. out of memory
            queue.put({"method": method, "batch": bsz, "error": f"{type(err).__name__}: {err}"[:80]})

    proc = ctx.Process(target=child)
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"method": method, "batch": bsz, "error": f"child exited with {proc.exitcode}"}
    return queue.get()


def plain_fits(bsz: int, max_gb: float) -> bool:
    return PLAIN_MATRICES * 4 * bsz * bsz <= max_gb * 2**30


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} thread(s)"


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = ["| method | B | D | chunk | peak memory (MiB) | fwd+bwd (s) |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        chunk = str(args.chunk_size) if r["method"] == "tiled" else "-"
        if "error" in r:
            lines.append(f"| {r['method']} | {r['batch']:,} | {args.dim} | {chunk} | {r['error']} | |")
        elif "skipped" in r:
            lines.append(f"| {r['method']} | {r['batch']:,} | {args.dim} | {chunk} | {r['skipped']} | |")
        else:
            lines.append(f"| {r['method']} | {r['batch']:,} | {args.dim} | {chunk} | {r['peak_mib']:,.0f} "
                         f"| {r['seconds']:.2f} |")
    return "\n".join(lines)


def append_to_doc(path: Path, text: str) -> None:
    """Insert `text` at the end of the loss section of `path`, creating the file or section if needed."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = doc.rstrip("\n").split("\n")
    if SECTION not in lines:
        lines += ["", SECTION]
    start = lines.index(SECTION)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    block = ["", *text.strip("\n").split("\n"), ""]
    while end > start + 1 and lines[end - 1] == "":
        end -= 1
    lines[end:end] = block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip("\n") + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--loss", choices=sorted(LOSSES), default="clip")
    p.add_argument("--dim", type=int, default=256, help="feature dimension D")
    p.add_argument("--batch-sizes", default="1024,4096,16384,65536", help="comma-separated batch sizes B")
    p.add_argument("--chunk-size", type=int, default=1024, help="tile size of the tiled loss")
    p.add_argument("--methods", default="plain,tiled,open_clip", help="any of plain, tiled, open_clip")
    p.add_argument("--max-memory-gb", type=float, default=8.0,
                   help="skip plain methods whose (B, B) matrices would exceed this")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU intra-op threads")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per measurement (best is reported)")
    p.add_argument("--output", type=Path, help="markdown file whose loss section gets the table appended")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    methods = args.methods.split(",")
    if "open_clip" in methods:
        try:
            import open_clip.loss  # noqa: F401
        except ImportError:
            methods.remove("open_clip")
    rows = []
    for bsz in sizes:
        for method in methods:
            if method != "tiled" and not plain_fits(bsz, args.max_memory_gb):
                need = PLAIN_MATRICES * 4 * bsz * bsz / 2**30
                rows.append({"method": method, "batch": bsz, "skipped": f"skipped (≈{need:.0f} GiB)"})
            elif args.device.startswith("cuda"):
                rows.append(measure(method, args.loss, bsz, args.dim, args.chunk_size, args.device, args.repeats))
            else:
                rows.append(measure_in_child(args, method, bsz))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = table(rows, args)
    print(result)
    if args.output:
        command = "python -m scripts.bench_loss " + " ".join(sys.argv[1:] if argv is None else argv)
        header = (f"### {args.loss} loss, {args.device}: {machine(args.device)}, torch {torch.__version__} "
                  f"({datetime.date.today().isoformat()})\n\n`{command}`\n")
        append_to_doc(args.output, header + "\n" + result)


if __name__ == "__main__":
    main()
