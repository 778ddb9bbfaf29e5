"""Checkpoints: weights in safetensors, training state via `torch.load(weights_only=True)`, metadata in JSON.

A checkpoint is a directory `<run>/checkpoints/step_<8-digit step>/` holding
  model.safetensors   the model's weights (no code, no pickle)
  state.pt            optimizer, scaler, RNG states (tensors and plain containers only; loaded weights-only)
  meta.json           step, epoch, position in the epoch, config, tokenizer spec
  tokenizer.json      the tokenizer, for built-in tokenizers
It is written into a temporary directory, fsynced and renamed into place, so a crash mid-write leaves the previous
checkpoint intact; `latest` (a one-line text file) is replaced atomically after the rename. A write that fails (disk
full, permission denied) raises `CheckpointWriteError` and leaves the earlier checkpoints and `latest` as they were.

Fault injection for crash tests: `CONTRASTIVE_CHECKPOINT_WRITE_DELAY=<seconds>` sleeps after the files are written and
fsynced, before the rename, so a test can kill the process in the middle of a write.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, CheckpointWriteError, error_line

MODEL_FILE, STATE_FILE, META_FILE = "model.safetensors", "state.pt", "meta.json"
EMA_FILE = "ema.safetensors"  # the moving average of the weights, when the run keeps one (train.ema_decay)


DELAY_ENV = "CONTRASTIVE_CHECKPOINT_WRITE_DELAY"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with f.open("rb+") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write(path: Path, write) -> None:
    """Call `write(binary file)` on a temporary file beside `path`, fsync it and rename it onto `path`."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def untied(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous tensors, copies where two names share storage (safetensors refuses shared storage)."""
    out = {}
    seen: dict[int, str] = {}
    for k, v in tensors.items():
        key = v.data_ptr()
        out[k] = v.detach().clone().contiguous() if key in seen else v.detach().contiguous()
        seen.setdefault(key, k)
    return out


def save_checkpoint(directory: Path, weights: dict[str, torch.Tensor], state: dict[str, Any], meta: dict[str, Any],
                    extra_files: dict[str, str] | None = None,
                    ema_weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint directory atomically (`weights`: the model's state dict); returns its final path. Raises
    CheckpointWriteError on failure.
    `ema_weights`: the moving average of the weights, written beside them as `ema.safetensors`."""
    directory = Path(directory)
    tmp: Path | None = None
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp-"))
        save_file(untied(weights), str(tmp / MODEL_FILE), metadata={"format": "pt"})
        if ema_weights is not None:
            save_file(untied(ema_weights), str(tmp / EMA_FILE), metadata={"format": "pt"})
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        _fsync_tree(tmp)
        if float(os.environ.get(DELAY_ENV) or 0) > 0:
            time.sleep(float(os.environ[DELAY_ENV]))
        old = None
        if directory.exists():  # same step written before (a resumed run): move it aside, never delete it first
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
        os.replace(tmp, directory)
        tmp = None
        _fsync_dir(directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        atomic_write_text(directory.parent / "latest", directory.name + "\n")
    except (OSError, RuntimeError, SafetensorError) as e:  # torch.save reports write failures as RuntimeError
        reason = error_line(e, 200) or type(e).__name__
        raise CheckpointWriteError(f"could not write checkpoint {directory} ({reason})") from e
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def remove_partial_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Delete what interrupted writes left behind (`.step_*.tmp-*`, `.step_*.old-*`, `.latest.*`); returns them."""
    if not checkpoint_dir.is_dir():
        return []
    leftovers = [p for p in checkpoint_dir.iterdir()
                 if p.name.startswith(".step_") and (".tmp-" in p.name or ".old-" in p.name) or p.name.startswith(".latest.")]
    for p in leftovers:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return leftovers


def is_checkpoint(path: Path) -> bool:
    return (path / MODEL_FILE).is_file() and (path / META_FILE).is_file()


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    if not checkpoint_dir.is_dir():
        return []
    return sorted((p for p in checkpoint_dir.iterdir() if p.name.startswith("step_") and is_checkpoint(p)), key=lambda p: p.name)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest intact checkpoint: the one named in `latest`, else the highest complete step directory. A corrupt
    one (see `checkpoint_problem`) is passed over with a warning naming it and the one used instead; CheckpointError
    when every checkpoint there is corrupt."""
    candidates: list[Path] = []
    pointer = checkpoint_dir / "latest"
    if pointer.is_file():
        candidate = checkpoint_dir / pointer.read_text(errors="replace").strip()
        if candidate.parent == checkpoint_dir and is_checkpoint(candidate):
            candidates.append(candidate)
    candidates += [p for p in reversed(list_checkpoints(checkpoint_dir)) if p not in candidates]
    corrupt: list[tuple[Path, str]] = []
    for candidate in candidates:
        problem = checkpoint_problem(candidate)
        if not problem:
            for bad, why in corrupt:
                if bad not in _WARNED:
                    _WARNED.add(bad)
                    print(f"warning: checkpoint {bad} is corrupt ({why}); using {candidate.name} instead",
                          file=sys.stderr, flush=True)
            return candidate
        corrupt.append((candidate, problem))
    if corrupt:
        raise CheckpointError(f"every checkpoint in {checkpoint_dir} is corrupt (newest {corrupt[0][0].name}: "
                              f"{corrupt[0][1]}); start a new run or restore one from a backup")
    return None


_WARNED: set[Path] = set()  # corrupt checkpoints already reported by this process


def checkpoint_problem(path: Path) -> str:
    """Why the checkpoint at `path` cannot be used ("" when its files are whole): a weights file shorter than its
    header says, a meta.json that is not a JSON object, a state.pt without its archive directory (cut by a full disk
    or a copy). Reads headers only."""
    try:
        with (path / MODEL_FILE).open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or not 0 < n <= size - 8:
                return f"{MODEL_FILE} is truncated ({size} bytes)"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            return f"{MODEL_FILE} is truncated ({size} of {8 + n + end} bytes)"
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return f"{MODEL_FILE} is not a readable safetensors file"
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return f"{META_FILE} is not valid JSON"
    if not isinstance(meta, dict):
        return f"{META_FILE} is not a JSON object"
    state = path / STATE_FILE
    if state.exists() and not zipfile.is_zipfile(state):
        return f"{STATE_FILE} is truncated or not a torch archive"
    return ""


def read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / META_FILE).read_text())
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable {META_FILE} ({e.strerror or type(e).__name__})") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: {META_FILE} is corrupt (not valid JSON)") from None


def load_weights(path: Path, weights: str = "model") -> dict[str, torch.Tensor]:
    """The trained weights of a checkpoint, or with `weights="ema"` their moving average."""
    file = path / (EMA_FILE if weights == "ema" else MODEL_FILE)
    if weights == "ema" and not file.is_file():
        raise CheckpointError(f"{path} has no EMA weights ({EMA_FILE}); train with train.ema_decay > 0 to keep them")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def load_state(path: Path) -> dict[str, Any]:
    """Training state, loaded weights-only: a pickled object that would run code is refused."""
    try:
        return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:
        if "weights only load failed" in str(e).lower():  # torch's hint here (load it unsafely) is the wrong advice
            raise CheckpointError(f"{path / STATE_FILE}: refused: it holds objects that are not plain tensors or "
                                  "containers (a pickled payload could run code), so it will not be loaded") from None
        reason = e.strerror if isinstance(e, OSError) and e.strerror else error_line(e, 200) or type(e).__name__
        raise CheckpointError(f"{path / STATE_FILE}: unreadable ({reason})") from None


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory (-> its latest checkpoint), a `checkpoints/` folder, or a checkpoint directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such checkpoint or run directory: {path}")
    if p.is_file() and p.name.endswith(".safetensors"):
        p = p.parent
    if is_checkpoint(p):
        return p
    for folder in (p / "checkpoints", p):
        found = latest_checkpoint(folder)
        if found is not None:
            return found
    raise CheckpointError(f"{path} holds no checkpoint (expected model.safetensors + meta.json, or a run directory)")


def written_by(path: Path, run_id: str) -> bool:
    """Whether the checkpoint at `path` was written by the run `run_id` (its meta's `run_id`). One written before
    runs had an id counts as the run's when it holds training state (`state.pt`) and is no `wise-ft` output."""
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    if "run_id" in meta:
        return meta["run_id"] == run_id
    return (path / STATE_FILE).is_file() and "wise_ft" not in meta


def prune_checkpoints(checkpoint_dir: Path, keep: int, protect: set[str] = frozenset(),
                      run_id: str | None = None) -> None:
    """Delete all but the newest `keep` checkpoints (and any in `protect`, e.g. the best). With `run_id`, only the
    run's own (`written_by`) are counted and deleted: a checkpoint put there by anything else is left alone."""
    found = [p for p in list_checkpoints(checkpoint_dir) if run_id is None or written_by(p, run_id)]
    for p in found[: max(len(found) - keep, 0)]:
        if p.name not in protect:
            shutil.rmtree(p, ignore_errors=True)
