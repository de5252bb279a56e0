"""Combining metric dicts (per micro-batch, mini-batch, rank) where some keys exist only on some of them (pipeline
stages). Keys ending in `_max` keep the largest value, the rest are averaged."""

from __future__ import annotations


def reduce_dicts(dicts: list[dict], prefix: str = "") -> dict:
    out = {}
    for k in sorted({k for m in dicts for k in m}):
        values = [float(m[k]) for m in dicts if k in m]
        out[f"{prefix}{k}"] = max(values) if k.endswith("_max") else sum(values) / len(values)
    return out
