"""The README and docs/ pages point at things that exist.

Every relative Markdown link resolves to a file in the repository (and to a heading of that file when it names an
`#anchor`, slugged as GitHub does), every `configs/...` and `scripts/...` path the text names exists, and the README
stays a front door (at most 300 lines). Paths under `../` (e.g. `../bench-data/icons`, `../shared/bench/`) are
benchmark data built outside the checkout: they are not checked.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 300

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# a path that starts at configs/ or scripts/: not preceded by a path character, so `../scripts/x` is not one
REPO_PATH = re.compile(r"(?<![\w./-])((?:configs|scripts)/[\w./{},*-]*)")
SCRIPT_MODULE = re.compile(r"(?<![\w.])scripts\.(\w+)")  # `python -m scripts.bench` runs scripts/bench.py


def prose(text: str) -> str:
    """The text without fenced code blocks or inline code (where a link is not a link)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of `page` that name a missing file (or one outside `root`) or a heading it lacks."""
    bad = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists() or root not in (dest, *dest.parents):
            bad.append(f"{target} (no such file in the repository)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target} (no heading #{anchor} in {dest.relative_to(root)})")
    return bad


def missing_paths(page: Path, root: Path = ROOT) -> list[str]:
    """The `configs/...` and `scripts/...` paths and `scripts.<name>` modules named in `page` (code included) that
    do not exist."""
    text = page.read_text()
    bad = []
    for name in [*REPO_PATH.findall(text), *(f"scripts/{m}.py" for m in SCRIPT_MODULE.findall(text))]:
        name = name.rstrip(".,;:")
        if any(c in name for c in "{}*"):
            found = any(root.glob(re.sub(r"\{[^}]*\}", "*", name)))
        else:
            found = (root / name).exists()
        if not found:
            bad.append(name)
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_exist(page):
    assert missing_paths(page) == []


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/"


def test_every_docs_page_is_reached_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(prose((ROOT / "README.md").read_text()))}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_checks_catch_breakage(tmp_path):
    """A missing file, a missing heading, a link out of the repository and a missing script are each reported;
    links in code and paths under ../ are not."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "scripts" / "bench.py").write_text("")
    (tmp_path / "outside.md").write_text("")
    (repo / "other.md").write_text("# Some Heading: `a_b` → here\n\n## Repeated\n\n```\n# not a heading\n```\n\n"
                                   "## Repeated\n")
    page = repo / "page.md"
    page.write_text("[ok](other.md#some-heading-a_b--here) [ok](other.md#repeated-1) [ok](#top) [bad](missing.md)\n"
                    "[bad](other.md#not-a-heading) [bad](../outside.md) `[code](missing.md)`\n\n"
                    "```\n[code](missing.md)\n```\n\n# Top\n\n"
                    "`scripts/bench.py` and `scripts/no_such_script.py`, `../scripts/outside.py`\n"
                    "`python -m scripts.bench`, `python -m scripts.no_such_module`\n")
    assert broken_links(page, repo) == [
        "missing.md (no such file in the repository)",
        "other.md#not-a-heading (no heading #not-a-heading in other.md)",
        "../outside.md (no such file in the repository)"]
    assert missing_paths(page, repo) == ["scripts/no_such_script.py", "scripts/no_such_module.py"]
