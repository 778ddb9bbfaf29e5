"""Shared pieces of the tests that are not tests themselves: tiny HF models, the distributed worker, crash and gradient checks, run overrides."""
