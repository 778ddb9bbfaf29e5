"""Tables read once into a memory-mapped Arrow file, so that no per-row Python object lives for a run.

A CSV/TSV/JSONL/Parquet table is read by pyarrow's readers, batch by batch, into an Arrow IPC file (the row cache):
`.contrastive_cache/<name>.arrow` beside the table, or under `$CONTRASTIVE_CACHE/tables/` (default
`$XDG_CACHE_HOME/contrastive`, `~/.cache/contrastive`) when that folder cannot be written. Later starts map the file (`pa.memory_map`): the main
process and every DataLoader worker read rows from the same clean, shared page cache, which no process copies.
The cache is keyed by the table's absolute path, size, mtime and an xxh3 hash of its bytes; a changed table is
read again, and says so. A start does not hash an untouched table: the cache also records the file's inode and
ctime (which every write changes and no one can set back), and the bytes are hashed only when those differ (a copy,
a touch, an edit).

Rows keep the meaning the line-by-line readers gave them. pyarrow reads a table when every physical line is one
row (the common case, checked by counting lines); a table with quoted line breaks, blank lines, rows of the wrong
width, NUL bytes, bytes that are not UTF-8 in JSON, or values of changing types is read line by line instead, into
the same kind of file. CSV/TSV values are kept as bytes (decoded on read, undecodable bytes as surrogates), so only
the row holding them is bad. Source columns are stored by position (`0`, `1`, ...) with their names in the
file's metadata (names may repeat or not be UTF-8), plus `line`: the row's last line in the file (JSONL: its line;
Parquet: its row number, from 1).
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as ipc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import xxhash

from ..errors import DataError

CACHE_VERSION = 1
CACHE_ENV = "CONTRASTIVE_CACHE"  # where caches go when the table's folder cannot be written
BLOCK_BYTES = 16 << 20  # the hash's and the line count's read size
# pyarrow's read block: a row must fit in one (a longer row sends the table to the line-by-line reader). 1 MiB
# keeps the build's memory flat in the table's size (16 MiB blocks: +0.25 GiB at 10^6 rows, +0.53 GiB at 3x10^6)
# and reads as fast
READ_BLOCK_BYTES = 1 << 20
SAY_BUILD_BYTES = 16 << 20  # tables at least this large say when their cache is built
RAW = "raw"  # the single source column of JSONL read line by line: each row's JSON text


class MappedRows:
    """The rows of one table, mapped from its cache. `value(i, c)` is row i's value of source column c (None where
    the row lacks it); `raw` tables (JSONL read line by line) hold one column: the row's JSON text."""

    def __init__(self, cache: str) -> None:
        self.cache = cache
        reader = ipc.open_file(pa.memory_map(cache, "r"))
        meta = {k.decode(): v.decode() for k, v in (reader.schema.metadata or {}).items()}
        self.meta = meta
        self.columns: list[str] = json.loads(meta["columns"])
        self.fmt, self.raw, self.text = meta["format"], meta["raw"] == "1", meta["text"] == "1"
        self.batches = [reader.get_batch(k) for k in range(reader.num_record_batches)]
        self.starts = np.cumsum([0] + [b.num_rows for b in self.batches])  # first row of each batch, then the total

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _at(self, index: int) -> tuple[pa.RecordBatch, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        b = bisect.bisect_right(self.starts, index) - 1
        return self.batches[b], index - int(self.starts[b])

    def line(self, index: int) -> int:
        batch, j = self._at(index)
        return batch.column(batch.num_columns - 1)[j].as_py()

    def value(self, index: int, column: int) -> Any:
        batch, j = self._at(index)
        return _py(batch.column(column)[j].as_py(), self.text)

    def column_batches(self, column: int) -> Iterator[list[Any]]:
        """Column `column`'s values, one Python list per stored batch (for passes over every row)."""
        for batch in self.batches:
            yield [_py(v, self.text) for v in batch.column(column).to_pylist()]

    def take(self, indices: list[int], column: int) -> list[Any]:
        """Column `column`'s values at `indices` (any order), read batch by batch (no column is concatenated)."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        batch_of = np.searchsorted(self.starts, idx[order], side="right") - 1  # ascending
        out: list[Any] = [None] * len(idx)
        bounds = np.flatnonzero(np.diff(batch_of)) + 1
        for sel in np.split(order, bounds):
            if not len(sel):
                continue
            b = int(np.searchsorted(self.starts, idx[sel[0]], side="right") - 1)
            values = self.batches[b].column(column).take(pa.array(idx[sel] - self.starts[b])).to_pylist()
            for position, value in zip(sel.tolist(), values):
                out[position] = _py(value, self.text)
        pa.default_memory_pool().release_unused()
        return out


def _py(value: Any, text: bool) -> Any:
    """A stored value as the line-by-line reader gave it: CSV bytes as text, undecodable bytes as surrogates."""
    return value.decode("utf-8", "surrogateescape") if text and isinstance(value, bytes) else value


def map_table(path: str, fmt: str) -> MappedRows:
    """The rows of the table at `path` (`fmt`: csv, tsv, jsonl or parquet), from its cache, built when missing or
    stale. Raises DataError for a table that cannot be read at all."""
    stat = _stat_key(path)
    key: dict[str, str] | None = None
    stale = None
    for cache in _cache_paths(path):
        if cache.is_file():
            try:
                rows = MappedRows(str(cache))
            except (pa.ArrowException, OSError, KeyError, ValueError):
                stale = cache  # cut short by a kill, or written by another version
                continue
            if all(rows.meta.get(k) == v for k, v in stat.items()):
                return rows  # the very file the cache was built from, untouched since (its ctime would change)
            key = key or _file_key(path, stat)
            if all(rows.meta.get(k) == key[k] for k in ("version", "source", "size", "mtime_ns", "hash")):
                return rows  # copied or touched, same bytes
            stale = cache
    if stale is not None:
        print(f"{path} changed since its row cache was built; reading it again into {stale}", file=sys.stderr)
    return MappedRows(_build(path, fmt, key or _file_key(path, stat)))


def _stat_key(path: str) -> dict[str, str]:
    """What the file system says of the file: any write to it changes its ctime, which no one can set back."""
    st = os.stat(path)
    return {"version": str(CACHE_VERSION), "source": os.path.realpath(path), "size": str(st.st_size),
            "mtime_ns": str(st.st_mtime_ns), "ctime_ns": str(st.st_ctime_ns), "inode": f"{st.st_dev}:{st.st_ino}"}


def _file_key(path: str, stat: dict[str, str]) -> dict[str, str]:
    h = xxhash.xxh3_64()
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK_BYTES):
            h.update(chunk)
    return {**stat, "hash": h.hexdigest()}


def cache_root() -> Path:
    """The toolkit's cache folder, for what cannot be written beside the data: `$CONTRASTIVE_CACHE`, else
    `$XDG_CACHE_HOME/contrastive`, else `~/.cache/contrastive`."""
    return Path(os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "contrastive")


def _cache_paths(path: str) -> list[Path]:
    """Where the cache of `path` may be: beside it, then in the cache folder (named by a hash of the full path)."""
    p = Path(os.path.realpath(path))
    root = cache_root()
    tag = hashlib.blake2b(str(p).encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return [p.parent / ".contrastive_cache" / f"{p.name}.arrow", root / "tables" / f"{tag}-{p.name}.arrow"]


def _build(path: str, fmt: str, key: dict[str, str]) -> str:
    """Write the cache of `path` where it can be written (atomically: a kill leaves no half file); its path."""
    started, errors = time.perf_counter(), []
    for cache in _cache_paths(path):
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            rows = _write(path, fmt, key, tmp)
            os.replace(tmp, cache)
        except OSError as e:  # a read-only folder or file system: try the next place
            errors.append(f"{cache.parent}: {e.strerror or e}")
            continue
        finally:
            tmp.unlink(missing_ok=True)
        pa.default_memory_pool().release_unused()  # the reader's blocks, before DataLoader workers fork from here
        if key["size"] and int(key["size"]) >= SAY_BUILD_BYTES:
            print(f"read {path} ({rows} rows) into {cache} in {time.perf_counter() - started:.1f}s; later runs map it",
                  file=sys.stderr)
        return str(cache)
    raise DataError(f"{path}: cannot write its row cache ({'; '.join(errors)}); set {CACHE_ENV} to a writable folder")


def _write(path: str, fmt: str, key: dict[str, str], out: Path) -> int:
    """Read the table into the IPC file `out`; its number of rows."""
    if fmt == "parquet":
        return _write_parquet(path, key, out)
    if fmt == "jsonl":
        fast = _jsonl_by_pyarrow
        slow = _jsonl_by_lines
    else:
        fast = _csv_by_pyarrow
        slow = _csv_by_lines
    try:
        return fast(path, fmt, key, out)
    except _Irregular:
        out.unlink(missing_ok=True)  # a new file: the abandoned writer keeps only its own
        return slow(path, fmt, key, out)


class _Irregular(Exception):
    """The table is not one row per line (or pyarrow reads it otherwise than the line-by-line reader): read it
    line by line."""


class _Writer:
    """Batches of rows into an IPC file: source columns by position, then `line`."""

    def __init__(self, out: Path, key: dict[str, str], fmt: str, columns: list[str], text: bool, reader: str,
                 raw: bool = False) -> None:
        self.out, self.columns, self.rows, self.writer = out, columns, 0, None
        self.meta = {**key, "format": fmt, "columns": json.dumps(columns), "text": str(int(text)), "raw": str(int(raw)),
                     "reader": reader}

    def write(self, batch: pa.RecordBatch, lines: np.ndarray) -> None:
        arrays = [*batch.columns, pa.array(lines, pa.int64())]
        names = [str(i) for i in range(len(self.columns))] + ["line"]
        batch = pa.RecordBatch.from_arrays(arrays, names=names)
        if self.writer is None:
            self.writer = ipc.new_file(str(self.out), batch.schema.with_metadata(self.meta))
        self.writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self, empty_schema: pa.Schema | None = None) -> int:
        if self.writer is None:  # no rows: an empty file that still names the columns
            types = empty_schema.types if empty_schema is not None else [pa.binary()] * len(self.columns)
            fields = [pa.field(str(i), t) for i, t in enumerate(types)] + [pa.field("line", pa.int64())]
            self.writer = ipc.new_file(str(self.out), pa.schema(fields).with_metadata(self.meta))
        self.writer.close()
        return self.rows


# ----------------------------------------------------------------------------------------------------------------------
# CSV / TSV


def _line_count(path: str) -> tuple[int, bool]:
    """(physical lines, whether every line break is \\n or \\r\\n and no NUL byte occurs)."""
    lines, plain, last = 0, True, b""
    with open(path, "rb") as f:
        while chunk := f.read(BLOCK_BYTES):
            lines += chunk.count(b"\n")
            plain = plain and b"\0" not in chunk and chunk.count(b"\r") == chunk.count(b"\r\n")
            last = chunk[-1:]
    return lines + (last not in (b"\n", b"")), plain


def _csv_header(path: str, fmt: str) -> tuple[list[str], int]:
    """The header's names (as the line-by-line reader decodes them) and the line it ends on."""
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t")
        try:
            header = next(reader, [])
        except csv.Error as e:
            raise DataError(f"{path}: malformed table ({e})") from None
    if not any(h.strip() for h in header):
        raise DataError(f"{path}: the first line is blank; it must be the header naming the columns")
    return header, reader.line_num


def _csv_by_pyarrow(path: str, fmt: str, key: dict[str, str], out: Path) -> int:
    header, header_lines = _csv_header(path, fmt)
    lines, plain = _line_count(path)
    if header_lines != 1 or not plain:
        raise _Irregular
    names = [str(i) for i in range(len(header))]
    reader_opts = pa_csv.ReadOptions(column_names=names, skip_rows=1, block_size=READ_BLOCK_BYTES)
    parse = pa_csv.ParseOptions(delimiter="," if fmt == "csv" else "\t", newlines_in_values=False)
    convert = pa_csv.ConvertOptions(column_types={n: pa.binary() for n in names}, strings_can_be_null=False)
    writer = _Writer(out, key, fmt, header, text=True, reader="pyarrow")
    try:
        reader = pa_csv.open_csv(path, reader_opts, parse, convert)
        for batch in reader:
            writer.write(batch, np.arange(writer.rows + 2, writer.rows + 2 + batch.num_rows))
        rows = writer.close()
    except pa.ArrowException:  # rows of the wrong width, a row larger than a block, ...
        raise _Irregular from None
    if rows != lines - 1:  # blank lines, or quoted line breaks
        raise _Irregular
    return rows


def _csv_by_lines(path: str, fmt: str, key: dict[str, str], out: Path) -> int:
    """Python's csv module, as the table was read before it was cached: a short row lacks its last values, a long
    one's extra values are dropped, blank lines are skipped, and a quote never closed is a DataError."""
    header, _ = _csv_header(path, fmt)
    writer = _Writer(out, key, fmt, header, text=True, reader="lines")
    width, limit = len(header), csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # an over-long caption is one bad row (see sources), not an unreadable file
    try:
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t")
            next(reader)
            end = reader.line_num
            last, last_start, last_end = [], end, end  # the latest row, its first and last line
            values: list[list] = [[] for _ in range(width)]
            lines: list[int] = []
            for row in reader:
                start, end = end + 1, reader.line_num
                if not row:
                    continue
                last, last_start, last_end = row, start, end
                for c in range(width):
                    values[c].append(row[c].encode("utf-8", "surrogateescape") if c < len(row) else None)
                lines.append(end)
                if len(lines) >= 65536:
                    _flush(writer, values, lines)
            _flush(writer, values, lines)
            # a quote never closed swallows the rest of the file into one value of the last row
            if last_end > last_start or len(last) < width or any(v.endswith(("\n", "\r")) for v in last):
                _check_quote_closed(path, fmt, f, last_start)
    except csv.Error as e:  # NUL bytes: the file is not a table we can read
        raise DataError(f"{path}: malformed table ({e})") from None
    finally:
        csv.field_size_limit(limit)
    return writer.close()


def _flush(writer: _Writer, values: list[list], lines: list[int]) -> None:
    if lines:
        writer.write(pa.RecordBatch.from_arrays([pa.array(v, pa.binary()) for v in values],
                                                names=[str(i) for i in range(len(values))]), np.array(lines))
    for v in values:
        v.clear()
    lines.clear()


def _check_quote_closed(path: str, fmt: str, f, start: int) -> None:
    """Raise DataError when the row beginning at line `start` (the file's last) opens a quote it never closes."""
    f.seek(0)
    tail = itertools.islice(f, start - 1, None)
    try:
        for _ in csv.reader(tail, delimiter="," if fmt == "csv" else "\t", strict=True):
            pass
    except csv.Error as e:
        if "end of data" in str(e):
            raise DataError(f"{path} line {start}: a quoted field opens here and is never closed "
                            "(unterminated \"); the rest of the file was read as one value") from None


# ----------------------------------------------------------------------------------------------------------------------
# JSONL

_PLAIN_JSON = (pa.types.is_string, pa.types.is_int64, pa.types.is_float64, pa.types.is_boolean, pa.types.is_null)


def _plain(t: pa.DataType) -> bool:
    """A type whose values read back as json.loads gives them (no structs, no timestamps parsed from text)."""
    if pa.types.is_list(t):
        return _plain(t.value_type)
    return any(check(t) for check in _PLAIN_JSON)


def _jsonl_by_pyarrow(path: str, fmt: str, key: dict[str, str], out: Path) -> int:
    lines, plain = _line_count(path)
    if not plain:
        raise _Irregular
    writer = None
    try:
        reader = pa_json.open_json(path, read_options=pa_json.ReadOptions(block_size=READ_BLOCK_BYTES))
        schema = reader.schema
        if not all(_plain(t) for t in schema.types):
            raise _Irregular
        writer = _Writer(out, key, fmt, schema.names, text=False, reader="pyarrow")
        for batch in reader:
            writer.write(batch, np.arange(writer.rows + 1, writer.rows + 1 + batch.num_rows))
        rows = writer.close(schema)
    except pa.ArrowException:  # a line that is not an object, bytes that are not UTF-8, a type that changes
        raise _Irregular from None
    if rows != lines:  # blank lines
        raise _Irregular
    return rows


def _jsonl_by_lines(path: str, fmt: str, key: dict[str, str], out: Path) -> int:
    """Each non-blank line's text, parsed when the row is read (so a line that is not an object is one bad row)."""
    writer = _Writer(out, key, fmt, [RAW], text=True, reader="lines", raw=True)
    texts: list[bytes] = []
    lines: list[int] = []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                texts.append(line.encode("utf-8", "surrogateescape"))
                lines.append(n)
            if len(lines) >= 65536:
                _flush(writer, [texts], lines)
    _flush(writer, [texts], lines)
    return writer.close()


def parse_json_row(text: str) -> dict | None:
    """A raw JSONL row's object, or None when the line is not a JSON object."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None


# ----------------------------------------------------------------------------------------------------------------------
# Parquet


def _write_parquet(path: str, key: dict[str, str], out: Path) -> int:
    try:
        file = pq.ParquetFile(path)
        schema = file.schema_arrow
        writer = _Writer(out, key, "parquet", schema.names, text=False, reader="pyarrow")
        for batch in file.iter_batches(batch_size=65536):
            writer.write(batch, np.arange(writer.rows + 1, writer.rows + 1 + batch.num_rows))
        return writer.close(schema)
    except pa.ArrowException as e:
        raise DataError(f"{path}: not a readable Parquet file ({str(e)[:200]})") from None


def column_index(columns: list[str], name: str) -> int | None:
    """The stored position of column `name` (the last of repeated names, as csv.DictReader keeps), or None."""
    found = [i for i, c in enumerate(columns) if c == name]
    return found[-1] if found else None


def row_values(rows: MappedRows, index: int, names: list[str], positions: list[int | None]) -> list[Any]:
    """Row `index`'s values of the columns `names` (stored at `positions`; None: not a column), None where absent."""
    if rows.raw:
        obj = parse_json_row(rows.value(index, 0))
        return [None if obj is None else obj.get(n) for n in names]
    return [None if p is None else rows.value(index, p) for p in positions]

