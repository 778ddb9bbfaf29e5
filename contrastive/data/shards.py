"""WebDataset shards: `.tar` files whose members `<key>.<ext>` group into samples, streamed.

Split: the shards are dealt out once to the world_size x num_workers streams (stream r*W + w is rank r's worker
w), so no shard is read twice in an epoch. Each stream reads its shards in an order drawn from (seed, epoch) through
a seeded shuffle buffer. Worker w makes the global batches b with b % W == w, which is the order in which a
DataLoader returns them (on resume, the workers' roles rotate so that the first one holds the first batch due), so
a rank's batch sequence depends only on the seed, the epoch, world_size and num_workers.

Epoch length: every rank must take the same number of steps, so an epoch has S = min over streams of what the
stream can fill (local shards are counted from their tar headers once, then read from the count index beside them:
see `shard_index`; remote ones need `data.samples_per_epoch`). Samples beyond that are left for later epochs'
reshuffles, as the incomplete last batch of a table is; keep shards of similar size. A stream that runs short
(because of bad samples) goes round its shards again.

Resampled (`data.resampled`): each stream draws every next shard with replacement from all the shards (OpenCLIP's
`--dataset-resampled`), from (seed, epoch, stream); an epoch is `data.samples_per_epoch` samples (else as many as
the shards hold) and only marks where the draws are reseeded.

Resume: the position is the batch index in the epoch, as for tables. Each batch carries its stream's cursor (raw
samples taken, bad ones included), which the checkpoint keeps. A resumed stream replays its order up to the cursor
and the per-shard counts alone (the shard draws and the shuffle buffer's picks, no reading), then reads only the
samples still in the buffer and the rest of the current shard, passing over the members before them unread: no
image already seen is decoded, and the cost does not grow with the position beyond the replay (microseconds a
sample). Without a cursor (a checkpoint from before cursors) the consumed part is re-read and its images decoded
at 1/8 scale to tell good from bad. Resume with the same world size and num_workers.
"""

from __future__ import annotations

import os
import tarfile
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..config import DataConfig
from ..errors import error_line, DataError
from .bad import BadRecord, BadSample
from .images import decode_image
from .samples import Collate, Sample, load_sample, sample_seed
from .shard_index import shard_counts
from .sources import RawSample, pick_caption, stable_id

DEFAULT_IMAGE_EXTS = "jpg;jpeg;png;webp"
DEFAULT_CAPTION_EXTS = "txt"


def expand_shards(pattern: str) -> list[str]:
    """`shards/{000000..000099}.tar` (braces, also several `::`-separated patterns) -> list of shard urls."""
    from braceexpand import braceexpand  # installed with webdataset

    urls = [u for part in pattern.split("::") for u in braceexpand(part)]
    local = [u for u in urls if not _is_remote(u)]
    missing = [u for u in local if not os.path.isfile(u)]
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
    return ((key, group) for _, key, group in read_groups(url))


def read_groups(url: str, keep: Callable[[int], bool] | None = None
                ) -> Iterator[tuple[int, str, dict[str, bytes] | None]]:
    """(k, key, {ext: bytes}) for each sample k of a shard, the bytes read only where `keep(k)` (else {}: the
    members are passed over unread); (k, why, None) once if the tar is unreadable from there on."""
    k, key, group = -1, None, None
    try:
        with _open(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name, ext = _split_name(member.name)
                if name != key:
                    if group is not None:
                        yield k, key, group
                    k, key, group = k + 1, name, {}
                if keep is None or keep(k):
                    group[ext] = tar.extractfile(member).read()
        if group is not None:
            yield k, key, group
    except (tarfile.TarError, OSError, EOFError) as e:
        yield max(k, 0), tar_error(e), None


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
        self.local, self.resampled = batch_size // world_size, data_cfg.resampled
        self.max_pixels, self.buffer = data_cfg.max_image_pixels, data_cfg.shuffle_buffer
        streams = world_size * self.workers
        if len(self.shards) < streams and not self.resampled:
            raise DataError(f"{len(self.shards)} shards cannot feed {world_size} ranks x {self.workers} workers; "
                            "use more shards, fewer data.num_workers or data.resampled=true")
        remote = any(_is_remote(u) for u in self.shards)
        if remote and data_cfg.samples_per_epoch == 0:
            raise DataError("remote shards cannot be counted; set data.samples_per_epoch")
        # samples per shard (None: remote, counted when a resume needs them)
        self.counts = None if remote else shard_counts(self.shards, count_samples)
        if data_cfg.samples_per_epoch > 0 or self.resampled:
            self.num_samples = data_cfg.samples_per_epoch or sum(self.counts)
            self.steps_per_epoch = self.num_samples // batch_size
        else:
            self.num_samples = sum(self.counts)
            per_stream = [sum(self.counts[s::streams]) for s in range(streams)]
            # stream s = rank * W + worker; worker w fills batches w, w + W, ... (see the module doc)
            self.steps_per_epoch = min((n // self.local) * self.workers + s % self.workers for s, n in enumerate(per_stream))
        self.epoch, self.start_batch = 0, 0
        self.cursors: dict[int, tuple[int, int, int]] = {}

    def set_position(self, epoch: int, start_batch: int, cursors: dict[int, tuple[int, int, int]] | None = None) -> None:
        """Start `epoch` at global batch `start_batch`; `cursors`: stream -> (epoch, batch, raw samples taken) of the
        last batch each stream delivered (the `stream_cursor` of the batches)."""
        self.epoch, self.start_batch, self.cursors = epoch, start_batch, dict(cursors or {})

    def shard_count(self, shard: int) -> int:
        """Samples of shard `shard` (an index into `self.shards`)."""
        if self.counts is not None:
            return self.counts[shard]
        return sum(1 for _ in read_groups(self.shards[shard], keep=lambda k: False))  # remote: headers only

    def shard_draws(self, stream: int, g: torch.Generator) -> Iterator[int | None]:
        """The shards `stream` reads, endlessly; None ends a round (the shuffle buffer is drained there)."""
        if self.resampled:
            while True:
                yield int(torch.randint(len(self.shards), (1,), generator=g))
        mine = list(range(stream, len(self.shards), self.world_size * self.workers))
        while True:
            for i in torch.randperm(len(mine), generator=g).tolist():
                yield mine[i]
            yield None

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

    def _cursor(self, stream: int, part: int) -> int | None:
        """Raw samples `stream` took before `start_batch`, when a cursor says so (None: unknown)."""
        if self.start_batch <= part:
            return 0
        epoch, batch, taken = self.cursors.get(stream, (-1, -1, 0))
        # the cursor of the stream's last batch before start_batch, of this epoch
        if epoch == self.epoch and batch % self.workers == part and batch < self.start_batch <= batch + self.workers:
            return taken
        return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        w, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.workers:
            raise RuntimeError(f"ShardStream was built for {self.workers} workers, runs in {workers}")
        # a DataLoader asks its workers in turn from worker 0, so worker 0 takes the stream that holds batch
        # start_batch; the batch -> stream map (b % W) is the same at every start, so the content is too
        part = (w + self.start_batch) % workers
        stream = self.rank * self.workers + part
        raw_samples = StreamReader(self, stream)
        first = part
        if (taken := self._cursor(stream, part)) is not None:
            raw_samples.skip(taken)
            first = part + max(-(-(self.start_batch - part) // workers), 0) * workers
        for b in range(first, self.steps_per_epoch, workers):
            batch = self._batch(b, raw_samples, skipping=b < self.start_batch)
            if batch is not None:
                batch["stream_cursor"] = (stream, self.epoch, b, raw_samples.taken)
                yield batch

    def _batch(self, b: int, raw_samples: StreamReader, skipping: bool) -> dict[str, Any] | None:
        """Global batch b's share of this rank, collated (None when only skipping past it: decoded at 1/8 scale
        to tell good samples from bad, see the module doc)."""
        samples: list[Sample] = []
        bad: list[BadRecord] = []
        while len(samples) < self.local:
            position = b * self.local * self.world_size + self.rank * self.local + len(samples)
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
        return None if skipping else self.collate(samples)


Token = tuple[int, int, int]  # (visit: the how-many-th shard draw of the stream, shard, sample in the shard)


class StreamReader:
    """One stream's raw samples, endlessly: its shard draws read through a seeded shuffle buffer. The order is kept
    as (shard, sample) tokens and the bytes beside them, so that `skip` can replay it from the counts alone."""

    def __init__(self, source: ShardStream, stream: int) -> None:
        self.source, self.stream = source, stream
        self.buffer: list[Token] = []  # the shuffle buffer
        self.loaded: dict[Token, tuple[RawSample | None, BadRecord | None]] = {}  # the samples of the tokens read
        self.counting = False  # replaying: tokens only, no reading
        self.taken = 0  # raw samples handed out (or skipped)
        self.tokens = self._order()

    def __next__(self) -> tuple[RawSample | None, BadRecord | None]:
        token = next(self.tokens)
        self.taken += 1
        return self.loaded.pop(token)

    def skip(self, n: int) -> None:
        """Pass over the next n raw samples without reading them; then read the ones left in the buffer."""
        self.counting = True
        for _ in range(n):
            next(self.tokens)
        self.counting = False
        self.taken += n
        wanted: dict[int, dict[int, list[Token]]] = {}  # shard -> sample -> its tokens (a shard drawn again)
        for token in self.buffer:
            wanted.setdefault(token[1], {}).setdefault(token[2], []).append(token)
        for shard, samples in wanted.items():
            url, last = self.source.shards[shard], max(samples)
            for k, key, group in read_groups(url, keep=samples.__contains__):
                for token in samples.get(k, ()):
                    self.loaded[token] = self.source._raw(url, key, group)
                if k >= last:
                    break

    def _order(self) -> Iterator[Token]:
        """The tokens in this stream's order: the shard draws and the buffer's picks from (seed, epoch, stream)."""
        s = self.source
        g = torch.Generator().manual_seed(sample_seed(s.seed, s.epoch, self.stream) ^ 0x5DEECE66D)
        for visit, shard in enumerate(s.shard_draws(self.stream, g)):
            if shard is None:  # drain before the next round, so a round yields each sample once before any repeats
                while self.buffer:
                    yield self.buffer.pop(int(torch.randint(len(self.buffer), (1,), generator=g)))
                continue
            for k in self._samples(visit, shard):
                self.buffer.append((visit, shard, k))
                if len(self.buffer) >= s.buffer:
                    yield self.buffer.pop(int(torch.randint(len(self.buffer), (1,), generator=g)))

    def _samples(self, visit: int, shard: int) -> Iterator[int]:
        """The sample numbers of one visit to a shard, counted while replaying, read (into `loaded`) after."""
        k, count = 0, None
        while self.counting:
            count = self.source.shard_count(shard) if count is None else count
            if k >= count:
                return
            yield k
            k += 1
        url, start = self.source.shards[shard], k
        for k, key, group in read_groups(url, keep=lambda i: i >= start):
            if k >= start:
                self.loaded[(visit, shard, k)] = self.source._raw(url, key, group)
                yield k


def _exts(key: str, default_name: str, default: str) -> list[str]:
    """`jpg;png` -> ["jpg", "png"]; the table default name (`image`, `caption`) means the usual extensions."""
    return [e.strip().lower().lstrip(".") for e in (default if key == default_name else key).split(";") if e.strip()]
