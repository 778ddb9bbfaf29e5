"""The package's shape: its modules import one another without a cycle, its rooms import only the rooms below them
(the table `MAY_IMPORT`), the root holds at most 15 entries, the top level is lazy, and no function is longer than
a screen.

Run alone with `python -m pytest -q tests/test_structure.py`; on failure the message names the cycle or the
functions.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "contrastive"
MAX_FUNCTION_LINES = 80
MAX_ROOT_ENTRIES = 15

# Which room of the package (a root module or sub-package) may import which: each line only lines above it.
# "" is the package's own __init__ (the lazy public API).
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "distributed": set(),
    "encoders": {"errors"},
    "data": {"errors", "config", "encoders"},  # encoders.hub: hub datasets read through the same offline rules
    "text": {"errors", "config", "encoders", "data"},  # the vocabulary is learned from the training captions
    "model": {"errors", "config", "encoders", "text"},
    "losses": {"errors", "config", "distributed"},
    "interop": {"errors", "config", "encoders", "data", "text", "model"},
    "evaluation": {"errors", "config", "data", "model", "interop"},
    "training": {"errors", "config", "distributed", "encoders", "data", "text", "model", "losses", "interop",
                 "evaluation"},
    "search": {"errors", "config", "data", "model", "interop", "evaluation"},
    "cli": {"errors", "config", "data", "text", "model", "interop", "evaluation", "training", "search"},
    "__main__": {"cli"},
    "": {"errors", "config", "encoders", "model", "losses", "interop"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, at module level or inside functions. `from pkg import a, b` of
    submodules depends on those submodules only; of other names, on `pkg` itself."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            subs = {f"{source}.{a.name}" for a in node.names} & modules
            found |= subs if len(subs) == len(node.names) else subs | ({source} & modules)
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imported_modules(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring nodes as on the stack)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def room(module: str) -> str:
    """`contrastive.training.step` -> "training"; the package itself -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def room_imports(graph: dict[str, set[str]]) -> dict[tuple[str, str], list[str]]:
    """(room, imported room) -> the module-level edges behind it, for imports that cross rooms."""
    edges: dict[tuple[str, str], list[str]] = {}
    for module, deps in graph.items():
        for dep in deps:
            if room(module) != room(dep):
                edges.setdefault((room(module), room(dep)), []).append(f"{module} -> {dep}")
    return edges


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a or 'contrastive'} may not import {b or 'contrastive'} ({edges[0]})"
            for (a, b), edges in sorted(room_imports(graph).items()) if b not in MAY_IMPORT.get(a, set())]


def test_the_cycle_finder_finds_a_cycle_and_passes_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_sees_relative_and_nested_imports():
    graph = import_graph()
    assert "contrastive.interop.checkpoint" in graph["contrastive.training.state"]  # `from ..checkpoint import ...`
    assert "contrastive.losses.batch" in graph["contrastive.training.step"]
    assert "contrastive.training.recipe" in graph["contrastive.training"]


def test_no_import_cycle_inside_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_layering_table_is_one_way_and_covers_every_room():
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
    assert rooms - {"__init__"} == set(MAY_IMPORT) - {""}
    assert find_cycle({name: set(allowed) for name, allowed in MAY_IMPORT.items()}) is None


def test_the_layering_check_catches_an_upward_import():
    graph = {"contrastive.data.sources": {"contrastive.training.recipe"}, "contrastive.training.recipe": set()}
    assert layering_violations(graph) == ["data may not import training (contrastive.data.sources -> "
                                          "contrastive.training.recipe)"]


def test_rooms_import_only_the_rooms_below_them():
    bad = layering_violations(import_graph())
    assert not bad, "imports against the layering table: " + "; ".join(bad)


def test_the_package_root_is_a_map():
    entries = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and not p.name.startswith("."))
    assert len(entries) <= MAX_ROOT_ENTRIES, entries


def test_help_and_config_errors_do_not_import_torch():
    """`contrastive --help`, each command's --help and every config or argument error answer before torch loads."""
    script = """
import sys, contextlib, io
import contrastive, contrastive.cli as cli
assert contrastive.__version__
calls = [["--help"], ["train", "--help"], ["config", "--help"], ["eval", "--help"], ["embed", "--help"],
         ["train", "optim.lrr=1"], ["config", "optim.lr=fast"], ["train", "--config", "missing.yaml"],
         ["eval", "--task", "retrieval", "--checkpoint", "x", "--data", "y", "--batch-size", "0"], ["trian"]]
codes = []
for argv in calls:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        codes.append(cli.main(argv))
print(codes, sorted(m for m in ("torch", "torchvision", "transformers", "numpy") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[0, 0, 0, 0, 0, 2, 2, 2, 2, 2] []", out


def test_the_public_api_loads_on_first_use():
    import contrastive

    assert contrastive.create_model is __import__("contrastive.model", fromlist=["create_model"]).create_model
    assert {"load", "create_model", "create_encoder", "clip_loss", "siglip_loss"} <= set(dir(contrastive))
    with __import__("pytest").raises(AttributeError, match="no attribute 'nope'"):
        contrastive.nope


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + ", ".join(long)
