"""Embed every image of a collection (and its captions) into an `EMB` folder (format: `store.py`).

Batched, without gradients, under autocast on a GPU, images decoded by DataLoader workers as training decodes them
(a bad image is skipped and counted, with the same reasons and limits); shards written atomically as they fill,
so a relaunch continues after the last shard written and no image is embedded twice. Each shard records the
fingerprint of the rows it covers (`collection.fingerprint`: paths and captions); a relaunch on a collection whose
rows were reordered or edited since is refused, as embeddings would no longer match their rows.

The model enters through an `Encoder`: `preprocess` (PIL image -> (3, S, S)), `encode_images` ((B, 3, S, S) ->
(B, D) normalised float32 on the CPU) and `encode_texts` (list of B strings -> (B, D)). `torch_encoder(checkpoint)`
builds one from a run, checkpoint or transformers directory; another runtime can replace `encode_images` (and
`encode_texts`) with `dataclasses.replace(encoder, encode_images=fn)`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.bad import BadRecord, BadSample, BadSampleTracker
from ..data.images import PIL_MAX_PIXELS, ImageTransform, decode_image
from ..data.loader import init_worker
from ..data.stopping import StopRequest
from ..errors import CheckpointError, DataError
from . import store
from .collection import Collection, describe, fingerprint, open_collection


@dataclass
class Encoder:
    name: str  # the architecture, e.g. "vit_tiny+text_tiny"
    source: str  # what was loaded: a run, checkpoint or transformers directory (absolute)
    checkpoint: str  # the directory the weights came from
    digest: str  # sha256 of the weights files (tells two models apart)
    embed_dim: int
    preprocess: Callable  # PIL RGB image -> (3, S, S) float tensor
    encode_images: Callable[[torch.Tensor], torch.Tensor]  # (B, 3, S, S) -> (B, D) normalised, float32, CPU
    encode_texts: Callable[[list[str]], torch.Tensor]  # B strings -> (B, D) normalised, float32, CPU

    def info(self) -> dict[str, Any]:
        """What the manifest records of the model."""
        return {"name": self.name, "source": self.source, "checkpoint": self.checkpoint, "digest": self.digest,
                "embed_dim": self.embed_dim}


def weights_digest(directory: str | Path) -> str:
    """sha256 over the weights files of a checkpoint or transformers directory (safetensors, else .bin/.pt)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise CheckpointError(f"{directory}: no weights file (*.safetensors) to identify the model by")
    h = hashlib.sha256()
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    return h.hexdigest()


def resolve_model(checkpoint: str | Path) -> tuple[Path, str]:
    """(directory holding the weights, architecture name) of a run, checkpoint or transformers directory."""
    from ..interop.checkpoint import read_meta, resolve_checkpoint

    path = Path(checkpoint)
    if (path / "config.json").is_file() and not (path / "meta.json").is_file():  # a transformers directory
        config = json.loads((path / "config.json").read_text())
        return path.resolve(), f"hf:{config.get('model_type', 'model')}:{path.resolve().name}"
    ckpt = resolve_checkpoint(path)
    model_cfg = read_meta(ckpt)["config"]["model"]
    return ckpt.resolve(), f"{model_cfg['image_encoder']}+{model_cfg['text_encoder']}"


def resolve_precision(device: torch.device, precision: str) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def torch_encoder(checkpoint: str | Path, device: str = "cpu", precision: str = "auto") -> Encoder:
    """An Encoder running the model of `checkpoint` (a run, checkpoint or transformers directory) with torch."""
    from ..interop.loading import load

    weights_dir, name = resolve_model(checkpoint)
    net, preprocess, tokenizer = load(checkpoint, device=device)
    return model_encoder(net, preprocess, tokenizer, device, precision, name=name, source=str(Path(checkpoint).resolve()),
                         checkpoint=str(weights_dir), digest=weights_digest(weights_dir))


def model_encoder(net, preprocess: Callable, tokenizer: Callable, device: str = "cpu", precision: str = "auto", *,
                  name: str = "", source: str = "", checkpoint: str = "", digest: str = "") -> Encoder:
    """An Encoder of a loaded `(model, preprocess, tokenizer)`: no grad, autocast unless fp32 (`auto`: bf16 or fp16
    on a GPU, fp32 on the CPU)."""
    from ..model import autocast_context
    from ..evaluation.embedding import embed_texts

    dev = torch.device(device)
    precision = resolve_precision(dev, precision)

    @torch.no_grad()
    def encode_images(pixels: torch.Tensor) -> torch.Tensor:
        with autocast_context(dev, precision):
            return net.encode_image(pixels.to(dev, non_blocking=True)).float().cpu()  # (B, D)

    def encode_texts(texts: list[str]) -> torch.Tensor:
        return embed_texts(net, texts, tokenizer, device=dev, precision=precision).cpu()  # (B, D)

    return Encoder(name, source, checkpoint, digest, int(net.embed_dim), preprocess, encode_images, encode_texts)


# ----------------------------------------------------------------------------------------------------------------------
# loading


class ImageRows(Dataset):
    """Row -> (row, pixels (3, S, S) or None, path, caption, BadRecord or None)."""

    def __init__(self, collection: Collection, preprocess: Callable, max_pixels: int) -> None:
        self.collection, self.preprocess, self.max_pixels = collection, preprocess, max_pixels
        self.min_side = preprocess.min_side if isinstance(preprocess, ImageTransform) else 0

    def __len__(self) -> int:
        return len(self.collection)

    def __getitem__(self, row: int):
        where = f"row {row}"
        try:
            where = self.collection.where(row)
            item = self.collection.item(row)
            with decode_image(item.image, self.max_pixels, self.min_side, "--max-image-pixels") as img:
                pixels = self.preprocess(img)
            return row, pixels, item.path, item.caption, None
        except BadSample as e:
            return row, None, "", None, BadRecord(e.reason, where, row, e.detail)
        except Exception as e:  # Pillow raises many types on odd files; one image never stops the job
            return row, None, "", None, BadRecord("corrupt_image", where, row, f"{type(e).__name__}: {str(e)[:120]}")


def collate(samples: list[tuple]) -> dict[str, Any]:
    good = [s for s in samples if s[1] is not None]
    return {
        "rows": [s[0] for s in good],
        "pixels": torch.stack([s[1] for s in good]) if good else None,  # (B', 3, S, S)
        "paths": [s[2] for s in good],
        "captions": [s[3] for s in good],
        "bad": [s[4] for s in samples if s[4] is not None],
        "loads": len(samples),
    }


def batch_plan(start: int, end: int, batch_size: int, shard_size: int) -> list[list[int]]:
    """Rows start..end-1 in batches that never cross a multiple of `shard_size` (a shard boundary)."""
    plan, row = [], start
    while row < end:
        stop = min(row + batch_size, (row // shard_size + 1) * shard_size, end)
        plan.append(list(range(row, stop)))
        row = stop
    return plan


# ----------------------------------------------------------------------------------------------------------------------
# the job


class ShardBuffer:
    """The embedded rows of the shard being filled."""

    def __init__(self, start: int) -> None:
        self.start, self.end = start, start
        self.images: list[np.ndarray] = []
        self.texts: list[np.ndarray] = []
        self.rows: list[int] = []
        self.paths: list[str] = []
        self.captions: list[str | None] = []
        self.bad: list[dict[str, Any]] = []

    def __len__(self) -> int:
        return len(self.rows)


def start_manifest(emb: Path, encoder: Encoder, collection: Collection, data: str, dtype: str, shard_size: int,
                   keys: dict[str, str]) -> dict[str, Any]:
    """The manifest to continue: the existing one when it fits this job (same model, data, rows and dtype), else new."""
    info = {**describe(collection, data), **keys}
    if (emb / store.MANIFEST).is_file():
        manifest = store.read_manifest(emb)
        old = manifest["model"]
        if old["digest"] != encoder.digest:
            raise CheckpointError(f"{emb} was embedded with another model ({old['name']} from {old['source']}); "
                                  "use the same --checkpoint to continue, or a new --output")
        for key in ("source", "kind", "root", "rows"):
            if manifest["collection"][key] != info[key]:
                raise DataError(f"{emb} holds embeddings of another collection ({key} {manifest['collection'][key]!r}, "
                                f"now {info[key]!r}); use a new --output")
        if manifest["dtype"] != dtype:
            raise DataError(f"{emb} holds {manifest['dtype']} embeddings; continue with --dtype {manifest['dtype']}")
        check_unchanged(emb, manifest, collection, data)
        return manifest
    if emb.exists() and (not emb.is_dir() or any(emb.iterdir())):
        raise DataError(f"--output {emb} exists and holds no embeddings; choose a new or empty folder")
    emb.mkdir(parents=True, exist_ok=True)
    return {"format": store.FORMAT_VERSION, "model": encoder.info(), "dtype": dtype, "collection": info,
            "shard_size": shard_size, "shards": [], "next_row": 0, "complete": False,
            "counts": {"rows": len(collection), "embedded": 0, "captions": 0, "bad": 0},
            "bad": {"loads": 0, "skips": 0, "counts": {}, "first": []}}


def check_unchanged(emb: Path, manifest: dict[str, Any], collection: Collection, data: str) -> None:
    """DataError unless every embedded shard's rows still are what they were (same paths and captions, in order)."""
    for shard in manifest["shards"]:
        start, end = shard["rows"]
        if "fingerprint" not in shard:
            raise DataError(f"{emb} was embedded by an earlier version that kept no fingerprint of the rows, so a "
                            f"continuation cannot be checked against {data}; start over with a new --output")
        if shard["fingerprint"] != fingerprint(collection, start, end):
            raise DataError(f"{data} changed since {emb} was embedded: rows {start}..{end - 1} are not the rows "
                            f"embedded in shard {shard['shard']} (reordered, edited, or replaced); the embeddings "
                            f"would not match their rows. Start over with a new --output (or delete {emb})")


def flush(emb: Path, manifest: dict[str, Any], buf: ShardBuffer, tracker: BadSampleTracker,
          collection: Collection) -> None:
    """Write the buffered shard and commit it in the manifest (changed only once the write succeeded)."""
    new = copy.deepcopy(manifest)
    shard = len(new["shards"])
    dtype = store.DTYPES[manifest["dtype"]]
    dim = manifest["model"]["embed_dim"]
    images = np.concatenate(buf.images).astype(dtype) if buf.images else np.zeros((0, dim), dtype)
    texts = None
    if manifest["collection"]["has_captions"]:
        texts = np.concatenate(buf.texts).astype(dtype) if buf.texts else np.zeros((0, dim), dtype)
    first_id = manifest["counts"]["embedded"]
    n = len(buf)
    store.write_shard(emb, shard, images, texts, {
        "id": list(range(first_id, first_id + n)), "row": buf.rows, "path": buf.paths, "caption": buf.captions,
        "shard": [shard] * n, "offset": list(range(n))})
    new["shards"].append({"shard": shard, "rows": [buf.start, buf.end], "embedded": n, "bad": buf.bad,
                          "fingerprint": fingerprint(collection, buf.start, buf.end)})
    new["next_row"] = buf.end
    counts = new["counts"]
    counts["embedded"] += n
    counts["captions"] += sum(c is not None for c in buf.captions)
    counts["bad"] += len(buf.bad)
    new["bad"] = {"loads": tracker.loads, "skips": tracker.skips, "counts": dict(tracker.counts),
                  "first": list(tracker.first)}
    store.write_json(emb / store.MANIFEST, new)
    manifest.update(new)


def add_batch(buf: ShardBuffer, batch: dict[str, Any], rows: list[int], encoder: Encoder, has_captions: bool) -> None:
    """Embed one loaded batch into the buffer."""
    buf.end = rows[-1] + 1
    buf.bad += [{"row": b.key, "reason": b.reason, "where": b.where} for b in batch["bad"]]
    if batch["pixels"] is None:
        return
    images = encoder.encode_images(batch["pixels"])  # (B', D)
    buf.images.append(images.numpy())
    if has_captions:
        texts = np.zeros_like(buf.images[-1])  # (B', D); rows without a caption stay zero
        with_caption = [i for i, c in enumerate(batch["captions"]) if c is not None]
        if with_caption:
            texts[with_caption] = encoder.encode_texts([batch["captions"][i] for i in with_caption]).numpy()
        buf.texts.append(texts)
    buf.rows += batch["rows"]
    buf.paths += batch["paths"]
    buf.captions += batch["captions"]


class Stopped(KeyboardInterrupt):
    """A signal stopped an embedding after a whole batch (its shard written); `exit_code` is the shell's for it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name}: stopped after the last whole batch; rerun the same command "
                         "to continue")
        self.exit_code = 128 + signum


def embed_collection(data: str, output: str | Path, encoder: Encoder, *, image_key: str = "image",
                     caption_key: str = "caption", split: str = "train", root: str | Path | None = None,
                     batch_size: int = 64, workers: int = 2, dtype: str = "float16", shard_size: int = 8192,
                     max_batches: int | None = None, max_pixels: int = PIL_MAX_PIXELS, max_bad_fraction: float = 0.1,
                     progress: bool = True) -> dict[str, Any]:
    """Embed `data` into `output` and return the manifest; a folder already holding part of this job continues.

    `root` is the folder no image may lead out of (default: the table's, image or dataset folder; see
    `collection`); rows leading out are skipped and counted as bad. `max_batches` stops after that many batches as
    an interrupted run would (the shard being filled is written); rerunning continues. Ctrl-C and SIGTERM do the
    same (`data.stopping.StopRequest`). More than `max_bad_fraction` of bad images (after 1000 loads) stops with a
    DataError; the shards written stay.
    """
    if dtype not in store.DTYPES:
        raise DataError(f"--dtype {dtype}: use one of {', '.join(store.DTYPES)}")
    from tqdm import tqdm

    emb = Path(output)
    collection = open_collection(data, image_key=image_key, caption_key=caption_key, split=split, root=root)
    shard_size = -(-shard_size // batch_size) * batch_size  # whole batches per shard
    manifest = start_manifest(emb, encoder, collection, data, dtype, shard_size,
                              {"image_key": image_key, "caption_key": caption_key, "split": split})
    tracker = BadSampleTracker("skip", max_bad_fraction, setting="--max-bad-fraction")
    bad = manifest["bad"]
    tracker.loads, tracker.skips, tracker.counts, tracker.first = bad["loads"], bad["skips"], dict(bad["counts"]), list(bad["first"])
    plan = batch_plan(manifest["next_row"], len(collection), batch_size, manifest["shard_size"])
    if max_batches is not None:
        plan = plan[:max_batches]
    loader = DataLoader(ImageRows(collection, encoder.preprocess, max_pixels), batch_sampler=plan, collate_fn=collate,
                        num_workers=workers if plan else 0, prefetch_factor=4 if workers and plan else None,
                        worker_init_fn=init_worker)  # a signal to the group: the main process stops
    bar = tqdm(total=len(collection), initial=manifest["next_row"], unit="img", desc="embed", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    buf = ShardBuffer(manifest["next_row"])
    speed = {"images": 0, "waiting_s": 0.0, "forward_s": 0.0, "start": time.perf_counter()}
    # SIGINT/SIGTERM (a scheduler's or `timeout`'s, often to the whole process group) stop after a whole batch, so
    # the shard being filled is written whole and the workers shut down; without it SIGTERM killed the process at
    # once, its workers (which ignore the signal) waited for ever on a queue nobody read, and Ctrl-C could land
    # between a batch's rows and its vectors.
    with StopRequest("finishing the current batch and writing its shard", "the shards written are kept") as stop:
        batches = iter(loader)
        try:
            clock = time.perf_counter()
            for rows, batch in zip(plan, batches):
                speed["waiting_s"] += time.perf_counter() - clock  # the main process idle: decoding is the bottleneck
                tracker.update(batch["loads"], batch["bad"])  # prints the first offenders; DataError past the limit
                clock = time.perf_counter()
                add_batch(buf, batch, rows, encoder, manifest["collection"]["has_captions"])
                speed["forward_s"] += time.perf_counter() - clock
                speed["images"] += len(rows)
                bar.update(len(rows))
                if tracker.total:
                    bar.set_postfix(bad=tracker.total, refresh=False)
                if buf.end % manifest["shard_size"] == 0 or buf.end == len(collection):
                    flush(emb, manifest, buf, tracker, collection)
                    buf = ShardBuffer(buf.end)
                if stop.requested:
                    raise Stopped(stop.signum)
                clock = time.perf_counter()
        finally:  # a stop (max_batches, a signal, too many bad images) keeps what was embedded
            del batches  # the loader's workers are shut down now, not whenever the exception's frames are freed
            bar.close()
            if buf.end > buf.start:
                flush(emb, manifest, buf, tracker, collection)
    manifest = finish(emb, manifest)
    wall = time.perf_counter() - speed.pop("start")
    # this call's speed (not written to the manifest file): rows/s, and the time spent waiting for the loader's
    # workers to decode vs in the towers' forward passes
    manifest["throughput"] = {**speed, "images_per_s": speed["images"] / max(wall, 1e-9), "wall_s": wall}
    return manifest


def finish(emb: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write metadata.parquet; mark the manifest complete when every row was seen."""
    if manifest["next_row"] >= manifest["counts"]["rows"]:
        if manifest["counts"]["embedded"] == 0:
            bad = manifest["bad"]
            raise DataError(f"none of the {manifest['counts']['rows']} images could be embedded "
                            f"({', '.join(f'{k}={v}' for k, v in sorted(bad['counts'].items()))}); "
                            f"first: {bad['first'][0] if bad['first'] else '-'}")
        manifest["complete"] = True
        store.write_json(emb / store.MANIFEST, manifest)
    store.write_metadata(emb, manifest)
    return manifest


def summary_line(manifest: dict[str, Any], emb: str | Path) -> str:
    c = manifest["counts"]
    bad = ", ".join(f"{k}={v}" for k, v in sorted(manifest["bad"]["counts"].items()))
    state = "complete" if manifest["complete"] else (f"stopped at row {manifest['next_row']} of {c['rows']}; "
                                                      "rerun the same command to continue")
    return (f"embedded {c['embedded']} images" + (f" and {c['captions']} captions" if c["captions"] else "")
            + f" of {c['rows']} rows into {emb} ({manifest['dtype']}, width {manifest['model']['embed_dim']}); "
            + (f"skipped {c['bad']} bad ({bad}); " if c["bad"] else "") + state + _speed(manifest))


def _speed(manifest: dict[str, Any]) -> str:
    s = manifest.get("throughput")
    if not s or not s["images"]:
        return ""
    return (f"; {s['images']} rows in {s['wall_s']:.1f} s ({s['images_per_s']:.0f} images/s: forward "
            f"{s['forward_s']:.1f} s, waiting for decoding {s['waiting_s']:.1f} s)")
