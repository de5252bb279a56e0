"""Keys/values of finished sequences, kept so the next turn of a conversation skips re-reading its history.

A multi-turn rollout sends prompt + answer + tool result as the next prompt; copying the saved keys/values of
the shared prefix costs far less than recomputing them. Entries live in LRU order under a token budget; prefixes
shorter than `min_tokens` are not worth the lookup.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class PrefixCache:
    def __init__(self, max_tokens: int, min_tokens: int = 16):
        self.max_tokens, self.min_tokens = max_tokens, min_tokens
        self.entries: OrderedDict[int, tuple[np.ndarray, object]] = OrderedDict()
        self.tokens = 0
        self._next = 0

    def put(self, tokens: list[int], kv) -> None:
        if len(tokens) < self.min_tokens or len(tokens) > self.max_tokens:
            return
        while self.tokens + len(tokens) > self.max_tokens:
            _, (old, _) = self.entries.popitem(last=False)
            self.tokens -= len(old)
        self.entries[self._next] = (np.asarray(tokens, dtype=np.int64), kv)
        self._next += 1
        self.tokens += len(tokens)

    def match(self, tokens: list[int], limit: int) -> tuple[int, object | None]:
        """Longest saved prefix of tokens, at most limit long: (length, saved kv) or (0, None)."""
        if not self.entries or limit < self.min_tokens:
            return 0, None
        query = np.asarray(tokens[:limit], dtype=np.int64)
        best, best_key = 0, None
        for key, (saved, _) in self.entries.items():
            m = min(len(saved), len(query))
            if m <= best:
                continue
            diff = np.flatnonzero(saved[:m] != query[:m])
            common = int(diff[0]) if diff.size else m
            if common > best:
                best, best_key = common, key
        if best < self.min_tokens:
            return 0, None
        self.entries.move_to_end(best_key)
        return best, self.entries[best_key][1]

    def clear(self) -> None:
        self.entries.clear()
        self.tokens = 0
