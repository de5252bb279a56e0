"""Slot KV cache: one row per running sequence, rows 0..n-1 always the running ones.

Keeping the running rows contiguous lets a decode step attend over a view of the cache instead of gathering
rows (on CPU a gather per layer costs as much as the matmuls). A finished sequence's row is refilled by moving the
last running row into it. The time axis grows on demand: memory is max_running rows times the longest sequence
seen since the last release (it does not shrink).
"""

from __future__ import annotations

import torch

_GROWTH = 256


class KVCache:
    def __init__(self, num_layers: int, rows: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 max_length: int):
        self.shape = (num_layers, rows, kv_heads, head_dim)
        self.dtype, self.max_length = dtype, max_length
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def ensure(self, length: int) -> None:
        """Room for positions [0, length) in every row."""
        if length <= self.capacity:
            return
        if length > self.max_length:
            raise ValueError(f"sequence of {length} tokens exceeds the context length {self.max_length}")
        capacity = min(self.max_length, max(2 * self.capacity, -(-length // _GROWTH) * _GROWTH))
        layers, rows, heads, dim = self.shape
        for store in (self.k, self.v):
            grown = [torch.zeros(rows, heads, capacity, dim, dtype=self.dtype) for _ in range(layers)]
            for old, new in zip(store, grown):
                new[:, :, : self.capacity] = old
            store[:] = grown
        self.capacity = capacity

    def release(self) -> None:
        self.k, self.v, self.capacity = [], [], 0

    def write(self, layer: int, row: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: [tokens, heads, dim] for positions start.. of one row."""
        self.k[layer][row, :, start: start + k.shape[0]] = k.transpose(0, 1)
        self.v[layer][row, :, start: start + v.shape[0]] = v.transpose(0, 1)

    def write_tokens(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> None:
        """One token per row: k, v [n, heads, dim] at (rows[i], positions[i])."""
        self.k[layer][rows, :, positions] = k
        self.v[layer][rows, :, positions] = v

    def read(self, layer: int, row: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer][row, :, :length], self.v[layer][row, :, :length]

    def read_rows(self, layer: int, n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[layer][:n, :, :length], self.v[layer][:n, :, :length]

    def move(self, src: int, dst: int, length: int) -> None:
        for store in (self.k, self.v):
            for layer in store:
                layer[dst, :, :length] = layer[src, :, :length]

    def extract(self, row: int, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Copies of a row's first positions, kept for prefix reuse after its sequence leaves."""
        return ([layer[row, :, :length].clone() for layer in self.k],
                [layer[row, :, :length].clone() for layer in self.v])

    def insert(self, row: int, saved: tuple[list[torch.Tensor], list[torch.Tensor]], length: int) -> None:
        for store, tensors in zip((self.k, self.v), saved):
            for layer, t in zip(store, tensors):
                layer[row, :, :length] = t[:, :length]
