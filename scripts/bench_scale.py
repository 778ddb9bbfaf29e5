"""Growth with the size of the data: start-up, memory, throughput and resume of the training loader, this package's
and OpenCLIP's, at 10^4..10^7 table rows and 10^2..10^4 WebDataset shards.

Generates the collections into `--work` (tables of `image,caption` rows pointing at the bundled images in
data/shapes, captions drawn word by word from a Zipfian distribution over a 20,000-word vocabulary; shards of the
same small JPEGs with their captions; every row drawn anew, 10^7 included), then runs each measurement in a fresh
process while this one samples the memory of that process and of its DataLoader workers (psutil, every 0.2 s):

- first batch: seconds from the start of the process's work to the first batch (imports excluded). For this package
  it covers the table's row cache (built, or mapped when cached), the bounded caption sample the vocabulary is
  learned from, TrainData and the first batch; for OpenCLIP the CsvDataset (pandas) or WebDataset pipeline and the
  first batch. Runs, one after the other in one process: `fresh` (no cache), `cached` (a second start), `resume` (a
  third start, at 90% of the epoch).
- main peak RSS: the process's own high-water mark (ru_maxrss) when that start was done; main USS and worker
  USS/RSS: the largest sampled value of the process and of any worker over the process's life (USS is private
  memory: what copy-on-write or the process's own reading cost).
- samples/s: the loader's steady rate over `--batches` batches after the first.
- cache build: the fresh start's set-up time less the second start's (this package's tables).

Prints the table and the growth exponent of each figure with N (the slope of log figure on log N), and writes both
to docs/benchmarks.md ("Scale: tables and loaders"). Needs open_clip_torch (`pip install ".[bench]"`).

    python -m scripts.bench_scale --sizes 2000,1e4,1e5,1e6 --shards 100,1000 --work /tmp/scale
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted((ROOT / "data/shapes/images/train").glob("*.jpg"))
BATCH, WORKERS, SEED = 32, 2, 0


# ----------------------------------------------------------------------------------------------------------------------
# collections


def vocabulary(n: int = 20_000, seed: int = 0) -> list[str]:
    """n distinct pronounceable words (syllables drawn at random), most frequent first."""
    rng = np.random.default_rng(seed)
    onsets, vowels = list("bcdfghjklmnprstvwz") + ["st", "tr", "ch", "sh"], ["a", "e", "i", "o", "u", "ai", "ou"]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        w = "".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))]
                     for _ in range(1 + min(int(rng.geometric(0.5)), 4)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def captions(rng: np.random.Generator, words: np.ndarray, n: int, exponent: float = 1.1) -> list[str]:
    """n captions of 4..20 words, each word drawn with probability proportional to 1 / rank^exponent."""
    p = 1.0 / np.arange(1, len(words) + 1) ** exponent
    lengths = rng.integers(4, 21, n)
    drawn = words[rng.choice(len(words), int(lengths.sum()), p=p / p.sum())]
    ends = np.cumsum(lengths)
    return [" ".join(drawn[e - k:e]) for e, k in zip(ends, lengths)]


def make_table(path: Path, rows: int, seed: int = 0) -> Path:
    """A CSV of `rows` rows `image,caption,label` (absolute paths of the bundled images, in turn)."""
    if path.is_file():
        return path
    rng, words = np.random.default_rng(seed), np.array(vocabulary())
    images = [str(p) for p in IMAGES]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        f.write("image,caption,label\n")
        for lo in range(0, rows, 100_000):
            n = min(100_000, rows - lo)
            caps = captions(rng, words, n)
            f.write("".join(f"{images[(lo + i) % len(images)]},{c},{(lo + i) % 10}\n" for i, c in enumerate(caps)))
    tmp.replace(path)
    return path


def make_shards(folder: Path, shards: int, per_shard: int, seed: int = 0) -> str:
    """`shards` tar files of `per_shard` samples (<key>.jpg, <key>.txt); their brace pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    pattern = str(folder / f"{{00000..{shards - 1:05d}}}.tar")
    if (folder / f"{shards - 1:05d}.tar").is_file():
        return pattern
    rng, words = np.random.default_rng(seed), np.array(vocabulary())
    jpegs = [p.read_bytes() for p in IMAGES]
    for s in range(shards):
        caps = captions(rng, words, per_shard)
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i, cap in enumerate(caps):
                key = f"{s:05d}{i:05d}"
                for ext, data in (("jpg", jpegs[(s * per_shard + i) % len(jpegs)]), ("txt", cap.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, _Bytes(data))
    return pattern


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) - self.pos if n < 0 else n
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


# ----------------------------------------------------------------------------------------------------------------------
# one measurement (in its own process)


def child_toolkit(data: str, starts: list[float], batches: int) -> dict:
    """One start per entry of `starts` (the fraction of the epoch to start at), one after the other in this process:
    the first builds the row cache (the parent removed it), the next ones map it."""
    import gc

    sys.path.insert(0, str(ROOT))
    from contrastive.config import load_config
    from contrastive.data import TrainData
    from contrastive.text.tokenizer import build_tokenizer
    from contrastive.text.vocab import training_captions

    cfg = load_config(ROOT / "configs/shapes_tiny.yaml", [
        f"data.train={data}", "data.val=", f"data.num_workers={WORKERS}", f"train.batch_size={BATCH}",
        "model.tokenizer=byte", "model.context_length=32"])
    runs = []
    for fraction in starts:
        t0 = time.perf_counter()
        sample = training_captions(cfg.data)  # what the vocabulary is learned from at start-up
        t_captions = time.perf_counter() - t0
        train = TrainData(cfg.data, cfg.model, build_tokenizer("byte", 32), BATCH, SEED)
        t_open = time.perf_counter() - t0
        start = int(fraction * train.steps_per_epoch)
        runs.append({**_drain(train.batches(0, start), t0, batches), "open_s": t_open, "captions_s": t_captions,
                     "captions": len(sample), "rows": train.num_samples})
        del train  # its workers end before the next start
        gc.collect()
    return {"runs": runs}


def child_openclip_csv(table: str, batches: int) -> dict:
    import open_clip
    import torch
    from open_clip_train.data import CsvDataset
    from torch.utils.data import DataLoader

    transform, tokenizer = open_clip.image_transform(64, is_train=True), open_clip.get_tokenizer("ViT-B-32")
    t0 = time.perf_counter()
    ds = CsvDataset(table, transform, img_key="image", caption_key="caption", sep=",", tokenizer=tokenizer)
    t_open = time.perf_counter() - t0
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=WORKERS, drop_last=True,
                        generator=torch.Generator().manual_seed(SEED))
    return {**_drain(iter(loader), t0, batches), "open_s": t_open, "rows": len(ds)}


def child_openclip_wds(pattern: str, samples: int, batches: int) -> dict:
    import functools
    from types import SimpleNamespace

    import open_clip
    import open_clip_train.data as openclip_data
    from open_clip_train.data import get_wds_dataset

    # webdataset 1.0 ends each shard with an empty marker sample that OpenCLIP's key grouping does not expect
    openclip_data.tar_file_expander = functools.partial(openclip_data.tar_file_expander, eof_value=None)

    transform, tokenizer = open_clip.image_transform(64, is_train=True), open_clip.get_tokenizer("ViT-B-32")
    args = SimpleNamespace(train_data=pattern, train_num_samples=samples, batch_size=BATCH, workers=WORKERS,
                           world_size=1, seed=SEED, dataset_resampled=False, train_data_upsampling_factors=None,
                           val_data=None, val_num_samples=None)
    t0 = time.perf_counter()
    info = get_wds_dataset(args, transform, is_train=True, epoch=0, tokenizer=tokenizer)
    t_open = time.perf_counter() - t0
    return {**_drain(iter(info.dataloader), t0, batches), "open_s": t_open, "rows": samples}


def _drain(batches, t0: float, n: int) -> dict:
    import resource

    next(batches)
    t_first = time.perf_counter() - t0
    t1, seen = time.perf_counter(), 0
    for _ in range(n):
        try:
            next(batches)
        except StopIteration:
            break
        seen += 1
    rate = seen * BATCH / (time.perf_counter() - t1) if seen else float("nan")
    return {"first_s": t_first, "samples_per_s": rate, "main_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


# ----------------------------------------------------------------------------------------------------------------------
# the parent: runs a child and samples its memory


def measure(argv: list[str], env: dict) -> dict:
    import psutil

    proc = subprocess.Popen([sys.executable, __file__, "--child", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    peak = {"main_uss": 0, "worker_uss": 0, "worker_rss": 0}
    stop = threading.Event()

    def sample() -> None:
        main = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak["main_uss"] = max(peak["main_uss"], main.memory_full_info().uss)
                for w in main.children(recursive=True):
                    m = w.memory_full_info()
                    peak["worker_uss"], peak["worker_rss"] = max(peak["worker_uss"], m.uss), max(peak["worker_rss"], m.rss)
            except psutil.Error:
                pass
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, err = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"measurement {argv} failed:\n{err[-3000:]}")
    built = [line for line in err.splitlines() if line.startswith("read ")]
    return {**json.loads(out.strip().splitlines()[-1]), **peak, "stderr": built}


def _peaks(m: dict) -> dict:
    return {k: m[k] for k in ("main_uss", "worker_uss", "worker_rss")}


def run_tables(sizes: list[int], work: Path, batches: int, env: dict) -> list[dict]:
    rows = []
    for n in sizes:
        t = time.perf_counter()
        table = make_table(work / f"rows_{n}.csv", n)
        print(f"table of {n} rows: {table.stat().st_size / 2**20:.0f} MiB, made in {time.perf_counter() - t:.0f}s",
              file=sys.stderr, flush=True)
        shutil.rmtree(work / ".contrastive_cache", ignore_errors=True)
        ours = measure(["toolkit", str(table), "0,0,0.9", str(batches)], env)
        fresh, cached, resume = ({**run, **_peaks(ours)} for run in ours["runs"])
        openclip = measure(["openclip_csv", str(table), str(batches)], env)
        rows.append({"kind": "table", "n": n, "toolkit": fresh, "cached": cached, "resume": resume, "openclip": openclip})
        print(json.dumps({k: v for k, v in rows[-1].items()}), file=sys.stderr, flush=True)
        (work / f"rows_{n}.csv").unlink(missing_ok=True) if n >= 10**7 else None
        shutil.rmtree(work / ".contrastive_cache", ignore_errors=True)
    return rows


def run_shards(shards: list[int], per_shard: int, work: Path, batches: int, env: dict) -> list[dict]:
    rows = []
    for s in shards:
        pattern = make_shards(work / f"shards_{s}", s, per_shard)
        samples = s * per_shard
        ours = measure(["toolkit", pattern, "0,0.9", str(batches)], env)
        fresh, resume = ({**run, **_peaks(ours)} for run in ours["runs"])
        openclip = measure(["openclip_wds", pattern, str(samples), str(batches)], env)
        rows.append({"kind": "shards", "n": s, "samples": samples, "toolkit": fresh, "resume": resume, "openclip": openclip})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# report


def gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def mib(b: float) -> str:
    return f"{b / 2**20:.0f}"


COLUMNS = ["data", "N", "pipeline", "first batch s", "main peak RSS GiB", "main USS GiB", "worker USS MiB",
           "worker RSS MiB", "samples/s", "second start s", "resume at 90% s", "cache build s"]


def table_lines(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        for name, m in (("contrastive", r["toolkit"]), ("OpenCLIP", r["openclip"])):
            ours = name == "contrastive"
            second = f"{r['cached']['first_s']:.1f}" if ours and "cached" in r else "-"
            resume = f"{r['resume']['first_s']:.1f}" if ours else "-"
            build = f"{m['open_s'] - r['cached']['open_s']:.1f}" if ours and "cached" in r else "-"
            n = f"{r['n']:,}" + (f" ({r['samples']:,} samples)" if r["kind"] == "shards" else "")
            lines.append("| " + " | ".join([
                r["kind"], n, name + (" CsvDataset" if not ours and r["kind"] == "table" else "")
                + (" wds" if not ours and r["kind"] == "shards" else ""),
                f"{m['first_s']:.1f}", gib(m["main_peak_rss"]), gib(m["main_uss"]), mib(m["worker_uss"]),
                mib(m["worker_rss"]), f"{m['samples_per_s']:.0f}", second, resume, build]) + " |")
    return lines


FIGURES = {"first batch": lambda m: m["first_s"], "main peak RSS": lambda m: m["main_peak_rss"],
           "worker USS": lambda m: m["worker_uss"], "samples/s": lambda m: m["samples_per_s"]}


def exponents(rows: list[dict]) -> list[str]:
    """The slope of log(figure) on log(N) for each pipeline, data kind and figure."""
    lines = []
    for kind in ("table", "shards"):
        sel = [r for r in rows if r["kind"] == kind]
        if len(sel) < 2:
            continue
        x = np.log([r["n"] for r in sel])
        for who in ("toolkit", "cached", "resume", "openclip"):
            if who not in sel[0]:
                continue
            parts = []
            for fig, get in FIGURES.items():
                y = [get(r[who]) for r in sel]
                if all(v > 0 and math.isfinite(v) for v in y):
                    parts.append(f"{fig} N^{np.polyfit(x, np.log(y), 1)[0]:.2f}")
            label = {"toolkit": "contrastive", "cached": "contrastive, second start", "resume": "contrastive, resume",
                     "openclip": "OpenCLIP"}[who]
            lines.append(f"- {'table rows' if kind == 'table' else 'shards'}, {label}: " + ", ".join(parts))
    return lines


def machine() -> str:
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = re.search(r"Model name:\s*(.+)", info).group(1).strip()
    except (OSError, AttributeError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


SECTION = "Scale: tables and loaders"


def write_doc(doc: Path, lines: list[str]) -> None:
    text = doc.read_text() if doc.is_file() else "# Benchmarks\n"
    section = "\n".join([f"## {SECTION}", "", *lines]) + "\n"
    m = re.search(rf"^## {SECTION}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    text = text[:m.start()] + section + ("\n" + text[m.end():] if m.end() < len(text) else "") if m else \
        text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


def report(rows: list[dict], commands: str, doc: Path) -> None:
    rows = sorted(rows, key=lambda r: (r["kind"] != "table", r["n"]))
    lines = [f"{commands}, on {machine()}; batch {BATCH}, {WORKERS} workers, 64-pixel crops of the bundled 64x64 "
             "JPEGs, captions Zipfian over 20,000 words.", "",
             *table_lines(rows), "", "Growth exponents (figure ~ N^k):", "", *exponents(rows)]
    print("\n".join(lines))
    write_doc(doc, lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        if kind == "toolkit":
            out = child_toolkit(rest[0], [float(f) for f in rest[1].split(",")], int(rest[2]))
        elif kind == "openclip_csv":
            out = child_openclip_csv(rest[0], int(rest[1]))
        else:
            out = child_openclip_wds(rest[0], int(rest[1]), int(rest[2]))
        print(json.dumps(out))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000,1e4,1e5,1e6", help="table rows, comma-separated (1e7 allowed)")
    ap.add_argument("--shards", default="100,1000,10000", help="shard counts, comma-separated ('' for none)")
    ap.add_argument("--per-shard", type=int, default=10, help="samples in each shard")
    ap.add_argument("--batches", type=int, default=20, help="batches timed for the steady rate")
    ap.add_argument("--work", default="/tmp/bench_scale", help="folder for the generated collections")
    ap.add_argument("--keep", action="store_true", help="keep the generated collections")
    ap.add_argument("--doc", default=str(ROOT / "docs/benchmarks.md"), help="markdown file to write the section to")
    ap.add_argument("--report", nargs="*", metavar="RESULTS",
                    help="only write the section from earlier runs' results.json files (their commands given by --command)")
    ap.add_argument("--command", action="append", default=[], help="with --report: a command that made the results")
    args = ap.parse_args()
    if args.report:
        latest = {(r["kind"], r["n"]): r for f in args.report for r in json.loads(Path(f).read_text())}
        rows = list(latest.values())  # a size measured again is taken from the later file
        report(rows, " and ".join(f"`{c}`" for c in args.command), Path(args.doc))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", "CONTRASTIVE_CACHE": str(work / "cache")}
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    shards = [int(float(s)) for s in args.shards.split(",") if s]
    started = time.perf_counter()
    rows = run_tables(sizes, work, args.batches, env) + run_shards(shards, args.per_shard, work, args.batches, env)
    command = "python -m scripts.bench_scale " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    (work / "results.json").write_text(json.dumps(rows, indent=1))
    report(rows, f"`{command}` ({time.perf_counter() - started:.0f}s)", Path(args.doc))
    if not args.keep:
        for p in work.iterdir():
            if p.name != "results.json":
                shutil.rmtree(p) if p.is_dir() else p.unlink()


if __name__ == "__main__":
    main()
