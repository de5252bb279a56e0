"""`rlpost serve retrieval`: Search-R1's retrieval API (POST /retrieve) and GET /health over one opened index.
Binds loopback by default."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from rlpost.services.retrieval.batcher import Batcher
from rlpost.services.retrieval.index import OpenedIndex
from rlpost.services.retrieval.protocol import MAX_TOPK, InvalidRequest, RetrieveRequest, parse_json, result

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 << 20  # 512 queries of 4096 characters, escaped, fit; more gets 413


class RetrievalServer:
    def __init__(self, opened: OpenedIndex, default_topk: int = 3):
        if not 1 <= default_topk <= min(MAX_TOPK, len(opened.corpus)):
            raise ValueError(f"--topk {default_topk} must be from 1 to {min(MAX_TOPK, len(opened.corpus))} (the "
                             f"corpus holds {len(opened.corpus)} documents)")
        self.opened, self.default_topk = opened, default_topk
        self.batcher: Batcher | None = None
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.app.router.add_post("/retrieve", self.retrieve)
        self.app.router.add_get("/health", self.health)
        self.app.on_startup.append(self._start)
        self.app.on_cleanup.append(self._stop)

    async def _start(self, app: web.Application) -> None:
        self.batcher = Batcher(self.opened.search)
        self.batcher.start()

    async def _stop(self, app: web.Application) -> None:
        await self.batcher.stop()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "retriever": self.opened.retriever,
                                  "documents": len(self.opened.corpus)})

    async def retrieve(self, request: web.Request) -> web.Response:
        try:
            raw = await request.read()
            body = await asyncio.to_thread(parse_json, raw) if len(raw) > 65536 else parse_json(raw)
            req = RetrieveRequest.from_json(body, self.default_topk, len(self.opened.corpus))
        except InvalidRequest as e:
            return web.json_response(e.body(), status=400)
        try:
            hits = await self.batcher(req.queries, req.topk)
        except Exception as e:
            return web.json_response({"error": {"message": f"search failed: {type(e).__name__}: {e}",
                                                "type": "server_error", "param": None}}, status=500)
        payload = {"result": [result(h, req.return_scores) for h in hits]}
        text = await asyncio.to_thread(json.dumps, payload) if len(hits) * req.topk > 256 else json.dumps(payload)
        return web.Response(text=text, content_type="application/json")


def serve(opened: OpenedIndex, host: str = "127.0.0.1", port: int = 8000, default_topk: int = 3) -> None:
    app = RetrievalServer(opened, default_topk).app
    print(f"rlpost retrieval serving on http://{host}:{port}: {opened.describe()}", flush=True)
    web.run_app(app, host=host, port=port, access_log=None, print=None)
