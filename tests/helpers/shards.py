"""WebDataset shards of the bundled shapes images, for the shard tests."""

import csv
import io
import tarfile
from pathlib import Path

from tests.conftest import ROOT

SHAPES = ROOT / "data/shapes"


def shape_rows(n: int) -> list[tuple[Path, str]]:
    """(image path, caption) of the first n rows of the shapes training table."""
    rows = [row[:2] for row in csv.reader((SHAPES / "train.csv").read_text().splitlines()[1:])]
    return [(SHAPES / img, cap) for img, cap in rows[:n]]


def write_shard(path: Path, members: list[dict[str, bytes]], prefix: str) -> None:
    """One tar of samples `<prefix>/<i>.<ext>`."""
    with tarfile.open(path, "w") as tar:
        for i, sample in enumerate(members):
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{prefix}/{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, n_shards: int, per_shard: int | list[int], bad_in_first: bool = False) -> str:
    """`n_shards` tars of shapes samples (`per_shard` each, or a count per shard); with `bad_in_first` the second
    image of the first shard is garbage. Returns the brace pattern of the shards."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = per_shard if isinstance(per_shard, list) else [per_shard] * n_shards
    rows = iter(shape_rows(sum(sizes)))
    for s, size in enumerate(sizes):
        members = []
        for i in range(size):
            path, cap = next(rows)
            members.append({"jpg": b"garbage" if bad_in_first and s == 0 and i == 1 else path.read_bytes(),
                            "txt": cap.encode()})
        write_shard(folder / f"shard-{s:02d}.tar", members, f"s{s:02d}")
    return str(folder / f"shard-{{00..{n_shards - 1:02d}}}.tar")
