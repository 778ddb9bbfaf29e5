"""Image-name sources built offline (npm packages): run from the repository root as
`python -m benchmarks.<name>.prepare OUT_DIR`."""
