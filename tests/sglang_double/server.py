"""SGLang 0.5.23's weight-update HTTP endpoints over real scheduler-rank processes (scheduler_rank.py), on loopback.
Request and answer fields, defaults and refusals follow sglang/srt/entrypoints/http_server.py and managers/io_struct.py:
updates from tensors or a broadcast only inside a /begin_weight_update session (else 400 with success false), the
group's backend defaulting to nccl, one serialized_named_tensors entry per TP rank, unpickled by that rank's process."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path

import torch
from aiohttp import web

from rlpost.net import free_port


class _Rank:
    def __init__(self, tp_rank: int):
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("scheduler_rank.py")),
                                         str(tp_rank), str(free_port())], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)
        self.lock = threading.Lock()

    def call(self, **command) -> dict:
        with self.lock:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
            return json.loads(self.process.stdout.readline())

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(30)


class SGLangDouble:
    """Use as a context manager; `loaded` lists what each update delivered: (endpoint, weight_version, per TP rank
    {name: tensor})."""

    def __init__(self, tp_size: int, workdir: Path):
        self.tp_size, self.workdir = tp_size, workdir
        self.ranks = [_Rank(r) for r in range(tp_size)]
        self.session_open = False
        self.backends: dict[str, str] = {}  # group name -> backend
        self.loaded: list[tuple[str, str | None, list[dict[str, torch.Tensor]]]] = []
        self.calls: list[str] = []
        self._updates = itertools.count()
        app = web.Application(client_max_size=1 << 30)
        app.add_routes([web.get("/server_info", self.server_info), web.get("/get_server_info", self.server_info),
                        web.post("/begin_weight_update", self.begin),
                        web.post("/end_weight_update", self.end), web.post("/init_weights_update_group", self.init),
                        web.post("/update_weights_from_distributed", self.from_distributed),
                        web.post("/update_weights_from_tensor", self.from_tensor),
                        web.post("/destroy_weights_update_group", self.destroy)])
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.port = free_port()
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> SGLangDouble:
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        for rank in self.ranks:
            rank.stop()

    @staticmethod
    def _answer(success: bool, message: str) -> web.Response:
        return web.json_response({"success": success, "message": message}, status=200 if success else 400)

    async def _all(self, **command) -> tuple[bool, str]:
        answers = await asyncio.gather(*(asyncio.to_thread(r.call, **command) for r in self.ranks))
        failed = [a["message"] for a in answers if not a["success"]]
        return (False, failed[0]) if failed else (True, "Success")

    async def server_info(self, request: web.Request) -> web.Response:
        """/get_server_info is deprecated in 0.5.23 and still answers."""
        return web.json_response({"tp_size": self.tp_size, "enable_deterministic_inference": False,
                                  "version": "0.5.23"})

    async def begin(self, request: web.Request) -> web.Response:
        self.calls.append("begin")
        if self.session_open:
            return self._answer(False, "a weight-update session is already open; call end_weight_update() first")
        self.session_open = True
        return self._answer(True, "Success")

    async def end(self, request: web.Request) -> web.Response:
        self.calls.append("end")
        if not self.session_open:
            return self._answer(False, "no weight-update session is open; call begin_weight_update() first")
        self.session_open = False
        self.backends: dict[str, str] = {}  # group name -> backend
        return self._answer(True, "Success")

    async def init(self, request: web.Request) -> web.Response:
        body = await request.json()
        name, backend = body.get("group_name", "weight_update_group"), body.get("backend", "nccl")
        ok, message = await self._all(op="init", master_address=body["master_address"],
                                      master_port=body["master_port"], rank_offset=body["rank_offset"],
                                      world_size=body["world_size"], group_name=name, backend=backend)
        if ok:
            self.backends[name] = backend
        return self._answer(ok, message)

    async def destroy(self, request: web.Request) -> web.Response:
        body = await request.json()
        return self._answer(*await self._all(op="destroy", group_name=body.get("group_name", "weight_update_group")))

    async def from_distributed(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("group_name", "weight_update_group")
        return await self._per_rank("distributed", body, lambda r: {
            "op": "update", "names": body["names"], "dtypes": body["dtypes"], "shapes": body["shapes"],
            "group_name": name, "backend": self.backends.get(name)})

    async def _per_rank(self, kind: str, body: dict, command) -> web.Response:
        """command(r) to every TP rank, each saving what it loaded; their tensors land in `loaded`. Refused outside
        a session."""
        self.calls.append(kind)
        if not self.session_open:
            return self._answer(False, f"update_weights_from_{kind} must run between begin_weight_update() and "
                                       "end_weight_update()")
        update = next(self._updates)
        outs = [str(self.workdir / f"update{update}_rank{r}.pt") for r in range(self.tp_size)]
        answers = await asyncio.gather(*(asyncio.to_thread(rank.call, **command(r), out=out)
                                         for r, (rank, out) in enumerate(zip(self.ranks, outs))))
        failed = [a["message"] for a in answers if not a["success"]]
        if failed:
            return self._answer(False, f"Failed to update weights: {failed[0]}")
        self.loaded.append((kind, body.get("weight_version"), [torch.load(o, map_location="cpu") for o in outs]))
        return self._answer(True, "Success")

    async def from_tensor(self, request: web.Request) -> web.Response:
        body = await request.json()
        entries = body["serialized_named_tensors"]
        return await self._per_rank("tensor", body, lambda r: {"op": "tensor", "entry": entries[r]})
