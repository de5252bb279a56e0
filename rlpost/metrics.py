"""Averaging metric dicts (per mini-batch, per rank) where some keys exist only on some of them (pipeline stages)."""

from __future__ import annotations


def mean_dicts(dicts: list[dict], prefix: str = "") -> dict:
    keys = sorted({k for m in dicts for k in m})
    return {f"{prefix}{k}": sum(float(m[k]) for m in dicts if k in m) / sum(k in m for m in dicts) for k in keys}
