"""WebDataset shards: `.tar` files whose members `<key>.<ext>` group into samples, streamed.

Split: the shards are dealt out once to the world_size x num_workers streams (stream r*W + w is rank r's worker
w), so no shard is read twice in an epoch. Each stream reads its shards in an order drawn from (seed, epoch) through
a seeded shuffle buffer. Worker w makes the global batches b with b % W == w, which is the order in which a
DataLoader returns them (on resume, the workers' roles rotate so that the first one holds the first batch due), so
a rank's batch sequence depends only on the seed, the epoch, world_size and num_workers.

Epoch length: every rank must take the same number of steps, so an epoch has S = min over streams of what the
stream can fill (local shards are counted from their tar headers at start-up; remote ones need
`data.samples_per_epoch`). Samples beyond that are left for later epochs' reshuffles, as the incomplete last batch
of a table is; keep shards of similar size. A stream that runs short (because of bad samples) goes round its
shards again.

Resume: the position is the batch index in the epoch, as for tables. A resumed stream re-reads the part of its
epoch already consumed and decodes those images at 1/8 scale only to tell good from bad, so it continues exactly
with the next unseen sample; that costs a read of the consumed part, not a training pass. Resume with the same
world size and num_workers.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..config import DataConfig
from ..errors import error_line, DataError
from .bad import BadRecord, BadSample
from .images import decode_image
from .samples import Collate, Sample, load_sample, sample_seed
from .sources import RawSample, pick_caption, stable_id

DEFAULT_IMAGE_EXTS = "jpg;jpeg;png;webp"
DEFAULT_CAPTION_EXTS = "txt"


def expand_shards(pattern: str) -> list[str]:
    """`shards/{000000..000099}.tar` (braces, also several `::`-separated patterns) -> list of shard urls."""
    from braceexpand import braceexpand  # installed with webdataset

    urls = [u for part in pattern.split("::") for u in braceexpand(part)]
    local = [u for u in urls if not _is_remote(u)]
    missing = [u for u in local if not Path(u).is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(urls)} shards not found, e.g. {missing[0]}")
    return urls


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def _open(url: str):
    if _is_remote(url):
        from webdataset import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def _split_name(name: str) -> tuple[str, str]:
    """`dir/00042.seg.jpg` -> (`dir/00042`, `seg.jpg`): the key ends at the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def iter_groups(url: str) -> Iterator[tuple[str, dict[str, bytes] | None]]:
    """(key, {ext: bytes}) for each sample of a shard; (why, None) once if the tar is unreadable from there on."""
    key, group = None, {}
    try:
        with _open(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                k, ext = _split_name(member.name)
                if k != key and group:
                    yield key, group
                    group = {}
                key = k
                group[ext] = tar.extractfile(member).read()
        if group:
            yield key, group
    except (tarfile.TarError, OSError, EOFError) as e:
        yield tar_error(e), None


def tar_error(e: BaseException) -> str:
    """One line for an error of `tarfile`: for the list it gives when no compression fits, the plain tar reason."""
    text = str(e)
    if "- method tar:" in text:  # "file could not be opened successfully:\n- method gz: ...\n- method tar: ReadError(...)"
        text = text.split("- method tar:", 1)[1].strip().rstrip(")")
        text = text.split("(", 1)[1].strip("'\"") if "(" in text else text
    return error_line(text) or type(e).__name__


def count_samples(url: str) -> int:
    """Samples in a local shard, from its headers (member data is skipped, not read)."""
    keys = 0
    last = None
    try:
        with tarfile.open(url, mode="r:*") as tar:
            for member in tar:
                if member.isfile():
                    k, _ = _split_name(member.name)
                    if k != last:
                        keys, last = keys + 1, k
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{url}: not a readable tar file ({tar_error(e)})") from None
    return keys


class ShardStream(IterableDataset):
    """Yields this rank's collated batches of an epoch from WebDataset shards (use with DataLoader(batch_size=None))."""

    def __init__(self, data_cfg: DataConfig, transform: Callable, tokenizer: Callable, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.shards = expand_shards(data_cfg.train)
        self.image_exts = _exts(data_cfg.image_key, "image", DEFAULT_IMAGE_EXTS)
        self.caption_exts = _exts(data_cfg.caption_key, "caption", DEFAULT_CAPTION_EXTS)
        self.transform, self.collate, self.seed = transform, Collate(tokenizer, data_cfg.trim_padding), seed
        self.rank, self.world_size, self.workers = rank, world_size, max(data_cfg.num_workers, 1)
        self.local = batch_size // world_size
        self.max_pixels, self.buffer = data_cfg.max_image_pixels, data_cfg.shuffle_buffer
        streams = world_size * self.workers
        if len(self.shards) < streams:
            raise DataError(f"{len(self.shards)} shards cannot feed {world_size} ranks x {self.workers} workers; "
                            "use more shards or fewer data.num_workers")
        if data_cfg.samples_per_epoch > 0:
            self.num_samples = data_cfg.samples_per_epoch
            self.steps_per_epoch = self.num_samples // batch_size
        elif any(_is_remote(u) for u in self.shards):
            raise DataError("remote shards cannot be counted; set data.samples_per_epoch")
        else:
            counts = [count_samples(u) for u in self.shards]
            self.num_samples = sum(counts)
            per_stream = [sum(counts[s::streams]) for s in range(streams)]
            # stream s = rank * W + worker; worker w fills batches w, w + W, ... (see the module doc)
            self.steps_per_epoch = min((n // self.local) * self.workers + s % self.workers for s, n in enumerate(per_stream))
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, start_batch: int) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _raw_samples(self, stream: int) -> Iterator[tuple[RawSample | None, BadRecord | None]]:
        """This stream's samples, endlessly (round after round of its shards), through the shuffle buffer."""
        mine = self.shards[stream :: self.world_size * self.workers]
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, stream) ^ 0x5DEECE66D)
        buffer: list[tuple[RawSample | None, BadRecord | None]] = []
        while True:
            for i in torch.randperm(len(mine), generator=g).tolist():
                for key, group in iter_groups(mine[i]):
                    buffer.append(self._raw(mine[i], key, group))
                    if len(buffer) >= self.buffer:
                        yield buffer.pop(int(torch.randint(len(buffer), (1,), generator=g)))
            while buffer:  # drain before the next round, so a round yields each sample once before any repeats
                yield buffer.pop(int(torch.randint(len(buffer), (1,), generator=g)))

    def _raw(self, url: str, key: str, group: dict[str, bytes] | None) -> tuple[RawSample | None, BadRecord | None]:
        if group is None:  # `key` says why the rest of the shard cannot be read
            return None, BadRecord("corrupt_image", url, stable_id(f"{url}: {key}"),
                                   f"the shard cannot be read past this point: {key}")
        where = f"{url} sample {key}"
        image = next((group[e] for e in self.image_exts if e in group), None)
        captions = [group[e] for e in self.caption_exts if e in group]
        if image is None or not captions:
            return None, BadRecord("missing_columns", where, stable_id(where),
                                   f"needs one of .{', .'.join(self.image_exts)} and .{', .'.join(self.caption_exts)}")
        return RawSample(image, captions[:1], where, f"{url}/{key}"), None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"ShardStream was built for {self.workers} workers, runs in {workers}")
        # a DataLoader asks its workers in turn from worker 0, so worker 0 takes the stream that holds batch
        # start_batch; the batch -> stream map (b % W) is the same at every start, so the content is too
        part = (w + self.start_batch) % workers
        raw_samples = self._raw_samples(self.rank * self.workers + part)
        batch_size = self.local * self.world_size
        for b in range(part, self.steps_per_epoch, workers):
            skipping = b < self.start_batch
            samples: list[Sample] = []
            bad: list[BadRecord] = []
            while len(samples) < self.local:
                position = b * batch_size + self.rank * self.local + len(samples)
                g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, position))
                raw, record = next(raw_samples)
                try:
                    if record is not None:
                        raise BadSample(record.reason, record.detail)
                    if skipping:  # only good-or-bad matters: the cheapest decode that tells them apart
                        pick_caption(raw.captions, g)
                        decode_image(raw.image, self.max_pixels, min_side=1)
                        samples.append(Sample(None, "", "", []))
                    else:
                        pixels, caption = load_sample(raw, self.transform, g, self.max_pixels)
                        samples.append(Sample(pixels, caption, raw.image_id, bad))
                        bad = []
                except BadSample as e:
                    where = record.where if record is not None else raw.where
                    bad.append(BadRecord(e.reason, where, stable_id(where), e.detail))
            if not skipping:
                yield self.collate(samples)


def _exts(key: str, default_name: str, default: str) -> list[str]:
    """`jpg;png` -> ["jpg", "png"]; the table default name (`image`, `caption`) means the usual extensions."""
    return [e.strip().lower().lstrip(".") for e in (default if key == default_name else key).split(";") if e.strip()]
