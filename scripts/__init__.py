"""Benchmarks and data builders beside the library. Run them from the repository root as modules,
`python -m scripts.<name> ...`, so that they import one another (`scripts.speedbench`) and tests import them as
`from scripts import <name>`, without path edits."""
