"""Local WebDataset shards read by position: an index of every sample's members built from the tar headers, so a
shard set answers `len` and `get(i)` like a table (one seek and read per member).

A mixture of sources (`mixture.py`) draws each source's samples by position, which a stream cannot give; this index
lets shards take part. Only local, uncompressed `.tar` files can be read by position: a remote or compressed shard
is a DataError that says to stream it as the only source, or to unpack or download it. Start-up reads every
member header once (the same read `data.samples_per_epoch=0` costs a streamed shard set); the index holds four
integers per sample, not Python objects per row.
"""

from __future__ import annotations

import sys
import tarfile

import numpy as np

from ..errors import DataError
from .bad import BadSample
from .shards import DEFAULT_CAPTION_EXTS, DEFAULT_IMAGE_EXTS, _exts, _is_remote, _split_name, expand_shards, tar_error
from .sources import RawSample


class IndexedShards:
    """The samples of local `.tar` shards, by position (the Source protocol of `sources.py`).

    `image_key` / `caption_key` name the member extensions (`jpg;png`, `txt`); the table defaults `image` /
    `caption` mean the usual ones, as for streamed shards. A sample lacking either is a bad sample when drawn."""

    def __init__(self, pattern: str, image_key: str = "image", caption_key: str = "caption") -> None:
        self.shards = expand_shards(pattern)
        if remote := [u for u in self.shards if _is_remote(u)]:
            raise DataError(f"{remote[0]}: a mixture of sources reads shards by position, which needs local .tar "
                            "files; download them, or train on the shards alone")
        self.image_exts = _exts(image_key, "image", DEFAULT_IMAGE_EXTS)
        self.caption_exts = _exts(caption_key, "caption", DEFAULT_CAPTION_EXTS)
        self.keys: list[str] = []
        rows: list[tuple[int, int, int, int, int]] = []  # (shard, image offset, image size, text offset, text size)
        for s, url in enumerate(self.shards):
            for key, members in self._groups(url):
                image = next((members[e] for e in self.image_exts if e in members), (-1, 0))
                text = next((members[e] for e in self.caption_exts if e in members), (-1, 0))
                self.keys.append(key)
                rows.append((s, *image, *text))
        if not rows:
            raise DataError(f"{pattern}: the shards hold no samples")
        self.index = np.asarray(rows, dtype=np.int64)  # (N, 5)

    @staticmethod
    def _groups(url: str):
        """(key, {ext: (data offset, size)}) per sample of one shard, from its headers."""
        key, group = None, {}
        try:
            with tarfile.open(url, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    k, ext = _split_name(member.name)
                    if k != key and group:
                        yield key, group
                        group = {}
                    key = k
                    group[ext] = (member.offset_data, member.size)
        except tarfile.ReadError as e:
            if key is None:
                raise DataError(f"{url}: not a readable uncompressed tar file ({tar_error(e)}); a mixture reads shards "
                                "by position, so compressed shards must be unpacked") from None
            print(f"{url}: unreadable past sample {key} ({tar_error(e)}); the samples before it are used",
                  file=sys.stderr)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{url}: not a readable tar file ({tar_error(e)})") from None
        if group:
            yield key, group

    def __len__(self) -> int:
        return len(self.keys)

    def where(self, index: int) -> str:
        return f"{self.shards[int(self.index[index, 0])]} sample {self.keys[index]}"

    def get(self, index: int) -> RawSample:
        shard, image_at, image_size, text_at, text_size = (int(v) for v in self.index[index])
        where = self.where(index)
        if image_at < 0 or text_at < 0:
            raise BadSample("missing_columns", f"needs one of .{', .'.join(self.image_exts)} and "
                                               f".{', .'.join(self.caption_exts)}")
        try:
            with open(self.shards[shard], "rb") as f:
                f.seek(image_at)
                image = f.read(image_size)
                f.seek(text_at)
                text = f.read(text_size)
        except OSError as e:
            raise BadSample("unreadable_file", f"{type(e).__name__}: {e.strerror or e}") from None
        return RawSample(image, [text], where, f"{self.shards[shard]}/{self.keys[index]}")
