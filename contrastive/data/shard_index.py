"""Samples per shard without opening the shards: a small index file beside them.

`<shard folder>/.contrastive-shards.json` maps each shard's file name to `[size, mtime_ns, samples]`; an entry
counts only while the shard's size and modification time (one `stat`, no open) still match, so a rewritten,
replaced or added shard is counted again (from its tar headers) and the index updated. When the folder is not
writable the index goes to the cache folder (`shard-counts/` in `tables.cache_root()`, keyed by the folder's
path). A `sizes.json` beside the shards (OpenCLIP's convention: `{file name: samples}`) is read too, for shards the
index does not hold; it carries no sizes or times, so it is trusted as it stands.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

from .tables import cache_root

INDEX_NAME = ".contrastive-shards.json"
SIZES_NAME = "sizes.json"
FORMAT_VERSION = 1
PARALLEL_FROM = 256  # shards to count per extra process
MAX_COUNTERS = 8


def shard_counts(paths: list[str], count: Callable[[str], int]) -> list[int]:
    """Samples of each local shard in `paths` (in order): from the index when it is current, else `count(path)`
    (then written to the index). Shards of several folders keep one index per folder."""
    counts: dict[str, int] = {}
    by_folder: dict[str, list[str]] = {}
    for p in paths:  # (string functions: pathlib costs more than the stat at 10^4 shards)
        by_folder.setdefault(os.path.dirname(p), []).append(p)
    for folder, members in by_folder.items():
        counts.update(_folder_counts(Path(folder or ".").resolve(), members, count))
    return [counts[p] for p in paths]


def _folder_counts(folder: Path, paths: list[str], count: Callable[[str], int]) -> dict[str, int]:
    indexes = [_read_index(path) for path in index_paths(folder)]  # beside the shards, in the cache
    index = indexes[0] or indexes[1]
    sizes = _read_json(folder / SIZES_NAME)
    counts, missing = {}, {}
    for p in paths:
        name, st = os.path.basename(p), os.stat(p)
        found = [e[2] for e in (i.get(name) for i in indexes)
                 if isinstance(e, list) and len(e) == 3 and e[:2] == [st.st_size, st.st_mtime_ns]]
        if found:
            counts[p] = int(found[0])
        elif isinstance(sizes.get(name), int):
            counts[p] = sizes[name]
        else:
            missing[p] = st
    for (p, st), n in zip(missing.items(), count_all(count, list(missing))):
        counts[p] = n
        index[os.path.basename(p)] = [st.st_size, st.st_mtime_ns, n]
    if missing:
        _write_index(folder, index)
    return counts


def _leave_ctrl_c() -> None:
    """A counting process leaves Ctrl-C to the main process (which stops the start-up with one line)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def count_all(count: Callable[[str], int], paths: list[str]) -> list[int]:
    """`count` of each path; many paths are counted in a pool of processes (one per core, up to `MAX_COUNTERS`), as
    reading tar headers is Python work that one process does at about 500-1,000 shards a second."""
    processes = min(os.cpu_count() or 1, MAX_COUNTERS, len(paths) // PARALLEL_FROM)
    if processes < 2:
        return [count(p) for p in paths]
    fork = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(processes, mp_context=fork, initializer=_leave_ctrl_c) as pool:
        return list(pool.map(count, paths, chunksize=max(1, len(paths) // (4 * processes))))


def index_paths(folder: Path) -> list[Path]:
    """Where the index of `folder` may be: beside the shards, then in the cache folder."""
    cache = cache_root() / "shard-counts"
    key = hashlib.blake2b(str(folder).encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return [folder / INDEX_NAME, cache / f"{key}.json"]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent, unreadable or half-written: counted again
        return {}
    return data if isinstance(data, dict) else {}


def _read_index(path: Path) -> dict:
    data = _read_json(path)
    shards = data.get("shards") if data.get("format") == FORMAT_VERSION else None
    return shards if isinstance(shards, dict) else {}


def _write_index(folder: Path, shards: dict) -> None:
    """Write atomically (ranks and workers may write the same index at once); beside the shards, else in the cache;
    an index that cannot be written anywhere only costs a count at the next start."""
    text = json.dumps({"format": FORMAT_VERSION, "shards": shards}, separators=(",", ":"))
    for path in index_paths(folder):
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
            return
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
