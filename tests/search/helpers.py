"""Small collections of the bundled shapes images for the search tests."""

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHAPES = ROOT / "data/shapes"


def shapes_table(folder: Path, n: int, *, split: str = "val", copy: bool = False) -> Path:
    """A CSV of the first `n` shapes images of `split` with their captions; the images copied into `folder` (so
    the table's folder is the collection root) or named by absolute path."""
    lines = (SHAPES / f"{split}.csv").read_text().splitlines()
    header, rows = lines[0], lines[1 : n + 1]
    out = []
    for line in rows:
        image, rest = line.split(",", 1)
        if copy:
            (folder / "images").mkdir(parents=True, exist_ok=True)
            shutil.copy(SHAPES / image, folder / "images" / Path(image).name)
            image = f"images/{Path(image).name}"
        else:
            image = str(SHAPES / image)
        out.append(f"{image},{rest}")
    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "images.csv"
    table.write_text("\n".join([header, *out]) + "\n")
    return table


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`contrastive ARGS` in this process (the CLI's own entry point): (exit code, stdout, stderr)."""
    from contrastive.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
