"""Where commands write: one process per output at a time, and never over what is not theirs.

One writer: a run directory, an `embed` folder or a `wise-ft` output is held by one process (`hold`). The lock is
`fcntl.flock` on a hidden sibling file `.<name>.lock` (beside the output, not in it: `train.overwrite=true` moves the
old run aside and `wise-ft` renames its output into place, and a lock inside would move with them). The kernel drops
it when the process ends, however it ends, so a SIGKILL leaves no stale lock; the file holds the holder's PID for
the message the next process prints. Forked children (DataLoader workers) close their copy, so a killed run's
workers cannot keep its lock.

Not over what is not theirs (the rules `export` set): an output is a new path, or an existing one of the command's
own kind replaced on an explicit `--overwrite`; never a checkpoint or a run's `checkpoints/` folder (resume and
checkpoint rotation read those), and elsewhere inside a run only with `--overwrite`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError, RunError

# ----------------------------------------------------------------------------------------------------------------------
# one writer

_HELD: dict[Path, int] = {}  # output (resolved) -> the open lock file this process holds


def lock_path(output: Path) -> Path:
    return output.with_name(f".{output.name}.lock")


def hold(output: str | Path, what: str) -> None:
    """Hold `output` for this process until `release` or its end; RunError naming the holder's PID when another
    process holds it. Call it before touching anything in `output` (holding it twice is a no-op)."""
    key = Path(output).resolve()
    if key in _HELD:
        return
    key.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(key), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunError(f"{output} is in use by process {holder} ({what}); wait for it to end or stop it "
                       "(one process writes there at a time)") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = fd


def release(output: str | Path) -> None:
    """Let go of `output` (the lock file stays: deleting it would let two processes lock two different files)."""
    fd = _HELD.pop(Path(output).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open file drops the flock


@contextmanager
def held(output: str | Path, what: str) -> Iterator[Path]:
    """`hold(output)` for the duration of the block."""
    already = Path(output).resolve() in _HELD
    hold(output, what)
    try:
        yield Path(output)
    finally:
        if not already:
            release(output)


def _forget_in_child() -> None:
    # a forked child shares the parent's open lock files: closing its copies leaves the parent's lock alone
    for fd in _HELD.values():
        os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


# ----------------------------------------------------------------------------------------------------------------------
# not over what is not theirs


def training_output(path: Path) -> tuple[Path, bool] | None:
    """The checkpoint, run's `checkpoints/` folder or run directory that `path` is or lies in, nearest first, and
    whether it is one a command may never write into (a checkpoint or a `checkpoints/` folder); None: none."""
    from .checkpoint import is_checkpoint, list_checkpoints

    for p in (path, *path.parents):
        if not p.is_dir():
            continue
        if is_checkpoint(p) or (p.name == "checkpoints" and (p.parent / "config.yaml").is_file()) \
                or list_checkpoints(p):
            return p, True
        if (p / "checkpoints").is_dir():
            return p, False
    return None


def check_place(output: Path, option: str, overwrite: bool) -> None:
    """Never inside a checkpoint or a run's `checkpoints/` folder; elsewhere in a run only with `overwrite`."""
    found = training_output(output.resolve())
    if found is None:
        return
    place, never = found
    if never:
        raise ConfigError(f"{option} {output} is inside the run or checkpoint {place}, which only its run writes; "
                          "choose a path outside it (--overwrite does not allow this)")
    if not overwrite:
        raise ConfigError(f"{option} {output} is inside the run or checkpoint {place}; choose a path outside it, or "
                          "pass --overwrite")


def check_file_output(output: str | Path, option: str, suffixes: Sequence[str], kind: str,
                      overwrite: bool = False) -> Path:
    """A file a command is about to write: a new path, or with `overwrite` an existing file of its own kind (one of
    `suffixes`, e.g. `(".json",)`; `kind` names it in the message). ConfigError in one line otherwise."""
    output = Path(output)
    if output.is_dir():
        raise ConfigError(f"{option} {output} is a folder; name a file")
    check_place(output, option, overwrite)
    if output.exists():
        if output.suffix.lower() not in suffixes:
            raise ConfigError(f"{option} {output} exists and is not a {kind} file ({'/'.join(suffixes)}); this "
                              f"command writes {kind}: choose a new path")
        if not overwrite:
            raise ConfigError(f"{option} {output} exists; choose a new path, or pass --overwrite to replace it")
    return output


def check_folder_output(output: str | Path, option: str = "--output", overwrite: bool = False,
                        sources: Sequence[Path] = ()) -> Path:
    """A folder a command is about to fill: new or empty, or with `overwrite` one to replace; never one of `sources`
    (what the command reads) or a folder holding them, never a checkpoint or a run's `checkpoints/` folder.
    ConfigError in one line otherwise."""
    output = Path(output)
    target = output.resolve()
    for source in sources:
        if target == source or target in source.parents:
            raise ConfigError(f"{option} {output} would replace the checkpoint being read ({source}); choose a new "
                              "folder")
    if output.exists() and not output.is_dir():
        raise ConfigError(f"{option} {output} is a file, not a folder")
    check_place(output, option, overwrite)
    if not overwrite and output.is_dir() and any(output.iterdir()):
        raise ConfigError(f"{option} {output} is not empty; choose a new folder, or pass --overwrite to replace it")
    return output
