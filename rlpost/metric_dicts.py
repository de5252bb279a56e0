"""Averaging metric dicts (over mini-batches, epochs, ranks) where some keys exist only on some of them (pipeline
stages). Keys ending in `_max` keep the largest value."""

from __future__ import annotations


def average(dicts: list[dict], prefix: str = "") -> dict:
    out = {}
    for k in sorted({k for m in dicts for k in m}):
        values = [float(m[k]) for m in dicts if k in m]
        out[f"{prefix}{k}"] = max(values) if k.endswith("_max") else sum(values) / len(values)
    return out
