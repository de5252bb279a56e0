"""Requests that arrive while the index is busy are answered together by its next call: one worker thread runs the
index (faiss and torch use every core for one call already), the event loop stays free for /health and new
requests, and concurrent clients share a batch (one forward pass of the embedding model for all their queries)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)
Hits = list[tuple[dict, float]]


class Batcher:
    def __init__(self, search: Callable[[list[str], int], list[Hits]], max_queries: int = 1024):
        self.search, self.max_queries = search, max_queries
        self.pending: list[tuple[list[str], int, asyncio.Future]] = []
        self.wakeup = asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="retrieval-index")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def __call__(self, queries: list[str], k: int) -> list[Hits]:
        """Each query's k best hits."""
        future = asyncio.get_running_loop().create_future()
        self.pending.append((queries, k, future))
        self.wakeup.set()
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                batch, count = [], 0
                while self.pending and (not batch or count + len(self.pending[0][0]) <= self.max_queries):
                    batch.append(self.pending.pop(0))
                    count += len(batch[-1][0])
                batch = [item for item in batch if not item[2].done()]  # clients that left
                if not batch:
                    continue
                k = max(item[1] for item in batch)
                queries = [q for item in batch for q in item[0]]
                try:
                    hits = await loop.run_in_executor(self.executor, self.search, queries, k)
                except Exception as e:
                    log.exception("search failed for a batch of %d queries", len(queries))
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    continue
                start = 0
                for item_queries, item_k, future in batch:
                    if not future.done():
                        future.set_result([h[:item_k] for h in hits[start:start + len(item_queries)]])
                    start += len(item_queries)
