"""Helpers for tests and benchmarks: small real checkpoints and tokenizers built offline."""
