"""Tables through their memory-mapped row cache: the same rows as Python's line-by-line readers give (paths,
captions, other columns, bad rows) for CSV, TSV, JSONL and Parquet; a changed table is read again; an unwritable
data folder falls back to the cache folder; a DataLoader worker reading 10^5 rows copies no memory."""

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader, Dataset

from contrastive.data import BadSample, ImageTextDataset, ImageTransform, TableSource, read_records
from contrastive.data.sources import FIELD_LIMIT, iter_captions
from contrastive.data.tables import CACHE_ENV
from contrastive.errors import DataError
from tests.conftest import PYTHON, ROOT, subprocess_env

SHAPES = ROOT / "data/shapes"


def old_rows(path: Path, fmt: str, image_key: str, caption_key: str) -> list[tuple]:
    """(line, image, caption, other columns) per row, as the table reader read them before the row cache."""
    rows = []
    with path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        if fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        row = None
                    if not isinstance(row, dict):
                        rows.append((n, None, None, {}))
                        continue
                    others = {k: v for k, v in row.items() if k not in (image_key, caption_key)}
                    rows.append((n, row.get(image_key), row.get(caption_key), others))
            return rows
        reader = csv.DictReader(f, delimiter="," if fmt == "csv" else "\t")
        for row in reader:
            others = {k: v for k, v in row.items() if k not in (image_key, caption_key) and k is not None}
            rows.append((reader.line_num, row.get(image_key), row.get(caption_key), others))
    return rows


def new_rows(source: TableSource) -> list[tuple]:
    return [source.row(i) for i in range(len(source))]


def outcome(source: TableSource, index: int):
    try:
        raw = source.get(index)
        return raw.image, raw.captions, raw.where
    except BadSample as e:
        return e.reason


REGULAR_CSV = (b"image,caption,label,note\n"
               b"a.jpg,a red circle,1,x\n"
               b"b.jpg,\"a blue, big square\",2,\n"
               b"c.jpg,,3,y\n"  # empty caption: a bad row
               b"d.jpg,caf\xe9 au lait,4,z\n"  # not UTF-8: a bad row, the file still reads
               b",no image,5,w\n"
               b"e.jpg,\"say \"\"hi\"\"\",007,v\r\n")
IRREGULAR_CSV = (b"image,caption,label\n"
                 b"a.jpg,\"two\nlines\",1\n"  # a quoted line break
                 b"\n"  # a blank line
                 b"b.jpg,short\n"  # a row that lacks its last value
                 b"c.jpg,long,3,extra,values\n"
                 b"d.jpg,caf\xe9,4\n")
REGULAR_JSONL = "\n".join(json.dumps(r) for r in [
    {"image": "a.jpg", "caption": "one", "label": 1},
    {"image": "b.jpg", "caption": "two", "label": 2, "extra": 0.5},
    {"image": "c.jpg", "label": 3},  # no caption: a bad row
    {"image": "d.jpg", "caption": "", "label": 4},
]).encode() + b"\n"
IRREGULAR_JSONL = (b'{"image": "a.jpg", "caption": ["x", "y"]}\n'
                   b'\n'
                   b'[1, 2]\n'  # not an object: a bad row
                   b'{"image": "b.jpg", "caption": "caf\xe9"}\n'
                   b'{"image": "c.jpg", "caption": 7, "meta": {"k": 1}}\n'
                   b'not json\n')


@pytest.mark.parametrize("name,data,reader", [
    ("t.csv", REGULAR_CSV, "pyarrow"), ("t.csv", IRREGULAR_CSV, "lines"),
    ("t.tsv", REGULAR_CSV.replace(b",", b"\t"), "pyarrow"), ("t.tsv", IRREGULAR_CSV.replace(b",", b"\t"), "lines"),
    ("t.jsonl", REGULAR_JSONL, "pyarrow"), ("t.jsonl", IRREGULAR_JSONL, "lines"),
])
def test_mapped_rows_equal_the_line_by_line_reader(tmp_path, name, data, reader):
    path = tmp_path / name
    path.write_bytes(data)
    source = TableSource(str(path), "image", "caption")
    assert source.table.meta["reader"] == reader  # both of pyarrow's and the line reader's tables are covered
    expected = old_rows(path, path.suffix[1:], "image", "caption")
    assert new_rows(source) == expected
    for i, (line, image, caption, _) in enumerate(expected):
        assert source.where(i) == f"{path} row {line}"
        if not isinstance(image, str) or not image or caption is None:
            assert outcome(source, i) == "missing_columns"
        else:
            assert outcome(source, i) == (str(tmp_path / image), caption if isinstance(caption, list) else [caption],
                                          f"{path} row {line} ({image})")


def test_parquet_with_keys_paths_and_several_caption_columns(tmp_path):
    """img2dataset's layout: 00000.parquet beside a folder 00000/ of <key>.jpg, captions in two columns."""
    (tmp_path / "00000").mkdir()
    (tmp_path / "00000" / "000000001.jpg").write_bytes((SHAPES / "images/train/00000.jpg").read_bytes())
    (tmp_path / "00000" / "000000002.png").write_bytes(b"png")
    table = pa.table({
        "key": ["000000001", "000000002", "sub/x.jpg", None],
        "caption": ["a red circle", None, "a square", "lost"],
        "alt": [["round", "red"], ["green"], None, None],
        "status": ["success", "success", "success", "failed_to_download"],
        "width": [64, 64, None, None],
    })
    path = tmp_path / "00000.parquet"
    pq.write_table(table, path)
    source = TableSource(str(path), "key", "caption,alt")
    assert len(source) == 4
    a, b, c = source.get(0), source.get(1), source.get(2)
    assert (a.image, a.captions) == (str(tmp_path / "00000/000000001.jpg"), ["a red circle", "round", "red"])
    assert (b.image, b.captions) == (str(tmp_path / "00000/000000002.png"), ["green"])  # the suffix found on disk
    assert (c.image, c.captions) == (str(tmp_path / "sub/x.jpg"), ["a square"])  # a local path
    assert c.where == f"{path} row 3 (sub/x.jpg)"
    with pytest.raises(BadSample, match="missing_columns"):
        source.get(3)
    assert source.row(0)[3] == {"status": "success", "width": 64}
    records = read_records(str(path), "key", "caption,alt")
    assert [r.captions for r in records] == [["a red circle", "round", "red"], ["green"], ["a square"]]
    # the same rows as JSON lines read line by line
    (tmp_path / "same.jsonl").write_text("\n".join(json.dumps(r) for r in table.to_pylist()) + "\n")
    as_jsonl = TableSource(str(tmp_path / "same.jsonl"), "key", "caption")
    assert [s[1:3] for s in new_rows(as_jsonl)] == [(r["key"], r["caption"]) for r in table.to_pylist()]
    with pytest.raises(DataError, match="no column 'text'.*set data.caption_key"):
        TableSource(str(path), "key", "caption,text")


def test_a_caption_over_the_field_limit_is_one_bad_row_named(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(f"image,caption\na.jpg,short\nb.jpg,{'w' * (FIELD_LIMIT + 1)}\nc.jpg,fine\n")
    source = TableSource(str(path), "image", "caption")  # the table reads (Python's csv module stopped here)
    assert outcome(source, 0)[1] == ["short"] and outcome(source, 2)[1] == ["fine"]
    assert outcome(source, 1) == "long_caption"
    transform = ImageTransform(32, [0.5] * 3, [0.5] * 3, train=False)
    (tmp_path / "a.jpg").write_bytes((SHAPES / "images/train/00000.jpg").read_bytes())
    sample = ImageTextDataset(source, transform)[(1, 5)]
    assert sample.bad[0].reason == "long_caption" and sample.bad[0].where == f"{path} row 3"
    assert [c for c in iter_captions(str(path))] == ["short", "fine"]


def test_an_empty_table_names_the_columns_it_expected(tmp_path):
    (tmp_path / "t.csv").write_text("image,caption\n")
    with pytest.raises(DataError, match=r"no rows \(expected columns 'image' and 'caption'\)"):
        TableSource(str(tmp_path / "t.csv"), "image", "caption")


def test_a_changed_table_is_read_again_and_says_so(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("image,caption\na.jpg,one\n")
    first = TableSource(str(path), "image", "caption")
    assert Path(first.table.cache).parent == tmp_path / ".contrastive_cache"
    assert TableSource(str(path), "image", "caption").table.cache == first.table.cache
    assert "changed" not in capsys.readouterr().err
    stat = path.stat()
    path.write_text("image,caption\na.jpg,two\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime: only the content tells
    again = TableSource(str(path), "image", "caption")
    assert again.get(0).captions == ["two"]
    assert capsys.readouterr().err.strip() == \
        f"{path} changed since its row cache was built; reading it again into {first.table.cache}"


def test_one_table_reached_through_a_link_shares_its_cache(tmp_path, capsys):
    """A table (or its folder) reached through a symbolic link is the same table: one cache, never "changed"."""
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "t.csv"
    path.write_text("image,caption\na.jpg,one\n")
    (tmp_path / "linked").symlink_to(tmp_path / "data")
    (tmp_path / "t_link.csv").symlink_to(path)
    caches = {TableSource(str(p), "image", "caption").table.cache
              for p in (path, tmp_path / "linked" / "t.csv", tmp_path / "t_link.csv", path)}
    assert caches == {str(tmp_path / "data" / ".contrastive_cache" / "t.csv.arrow")}
    assert "changed" not in capsys.readouterr().err


def test_an_unwritable_data_folder_caches_in_the_cache_folder(tmp_path):
    """As root the reader runs without the capability to write past permissions (root writes anywhere)."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    (data / "t.csv").write_text("image,caption\na.jpg,one\nb.jpg,two\n")
    os.chmod(data, 0o555)
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv (util-linux) to drop the capability to write anywhere")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    code = ("import sys; from contrastive.data import TableSource; "
            "s = TableSource(sys.argv[1], 'image', 'caption'); print(s.table.cache); print(s.get(1).captions)")
    try:
        out = subprocess.run([*prefix, PYTHON, "-c", code, str(data / "t.csv")], capture_output=True, text=True,
                             env={**subprocess_env(), CACHE_ENV: str(cache)})
    finally:
        os.chmod(data, 0o755)
    assert out.returncode == 0, out.stderr
    where, captions = out.stdout.splitlines()
    assert Path(where).parent == cache / "tables" and Path(where).is_file()
    assert captions == "['two']"
    assert not (data / ".contrastive_cache").exists()


class _ReadAll(Dataset):
    """Reads every row of a table in the worker; returns the worker's private dirty memory before, halfway and
    after."""

    def __init__(self, source: TableSource) -> None:
        self.source = source

    def __len__(self) -> int:
        return 1

    def __getitem__(self, _):
        marks, n, half = [_private_dirty()], 0, len(self.source) // 2
        for lo, hi in ((0, half), (half, len(self.source))):
            for i in range(lo, hi):
                n += len(self.source.get(i).captions)
            marks.append(_private_dirty())
        return marks, n


def _private_dirty() -> int:
    """Bytes of memory this process has written privately (copy-on-write copies included)."""
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) * 1024 for line in f if line.startswith("Private_Dirty"))


def test_a_worker_reading_every_row_copies_no_memory(tmp_path):
    n = 100_000
    with (tmp_path / "t.csv").open("w") as f:
        f.write("image,caption,label,source\n")
        for i in range(n):
            f.write(f"images/{i:07d}.jpg,a photo of thing number {i} standing in a green field under a grey sky,"
                    f"{i % 10},https://example.com/{i}.jpg\n")
    source = TableSource(str(tmp_path / "t.csv"), "image", "caption")
    loader = DataLoader(_ReadAll(source), batch_size=None, num_workers=1, multiprocessing_context="fork")
    ((before, halfway, after), read), = list(loader)
    assert read == n
    # rows held as Python objects (the reader before the row cache) are copied page by page as their refcounts
    # change: ~30 MiB per 50,000 rows here. Mapped rows cost the allocator a few MiB, once (reusing the free memory
    # it inherited), and nothing per row after that.
    mib = (halfway - before) >> 20, (after - halfway) >> 20
    assert after - before < 32 << 20 and after - halfway < 8 << 20, f"the worker's private memory grew by {mib} MiB"


def test_the_vocabulary_sample_reads_a_bounded_number_of_rows(tmp_path):
    rows = "".join(f"{i}.jpg,caption {i}\n" for i in range(1000))
    (tmp_path / "t.csv").write_text("image,caption\n" + rows)
    every = list(iter_captions(str(tmp_path / "t.csv")))
    some = list(iter_captions(str(tmp_path / "t.csv"), limit=50, seed=3))
    assert len(every) == 1000 and len(some) == 50 and set(some) < set(every)
    assert some == sorted(some, key=every.index)  # in table order
    assert some == list(iter_captions(str(tmp_path / "t.csv"), limit=50, seed=3))


def test_the_caption_sample_reads_whole_runs_of_rows_from_few_places():
    from contrastive.data.sources import SAMPLE_RUN, sample_runs

    picked = sample_runs(10_000_000, 200_000, seed=0)
    assert len(picked) == len(set(picked)) == 200_000 and picked == sorted(picked)
    assert picked != sample_runs(10_000_000, 200_000, seed=1)  # seeded
    assert len({i // SAMPLE_RUN for i in picked}) == 200_000 // SAMPLE_RUN + 1  # ~0.2% of the table's runs
    runs = {i // SAMPLE_RUN for i in picked}
    assert max(runs) - min(runs) > 0.9 * 10_000_000 // SAMPLE_RUN  # spread over the whole table
    short = sample_runs(1000, 300, seed=2)  # 4 runs of 256, the last one 232 rows: trimmed to exactly 300
    assert len(short) == len(set(short)) == 300 and max(short) < 1000
    assert sample_runs(100, 100, seed=0) == list(range(100))
