"""`rlpost serve sandbox`: Sandbox Fusion's HTTP API (POST /run_code, GET /v1/ping) for Python and bash, every run
isolated (rlpost.services.sandbox.isolation). Runs beyond the concurrency limit wait their turn. Binds loopback by
default: anyone who can reach the port can run code."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from rlpost.services.sandbox.isolation import Sandbox, SandboxUnavailable
from rlpost.services.sandbox.protocol import InvalidRequest, RunCodeRequest, command_result, run_code_response

log = logging.getLogger(__name__)


class SandboxServer:
    def __init__(self, sandbox: Sandbox, max_concurrency: int = 8):
        self.sandbox = sandbox
        self.slots = asyncio.Semaphore(max_concurrency)
        self.app = web.Application(client_max_size=256 << 20)
        self.app.router.add_post("/run_code", self.run_code)
        self.app.router.add_get("/v1/ping", self.ping)

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response("pong")

    async def run_code(self, request: web.Request) -> web.Response:
        try:
            req = RunCodeRequest.from_json(await asyncio.to_thread(json.loads, await request.read()))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return web.json_response(InvalidRequest("__root__", f"not valid JSON: {e}").detail(), status=422)
        except RecursionError:
            return web.json_response(InvalidRequest("__root__", "JSON nested too deeply").detail(), status=422)
        except InvalidRequest as e:
            return web.json_response(e.detail(), status=422)
        refusal = self.sandbox.check_request(req)
        if refusal:
            return web.json_response(run_code_response(command_result("Error", stderr=refusal), refusal))
        async with self.slots:
            response = await self.sandbox.run(req)
        if response["status"] == "SandboxError":
            log.warning("sandbox error: %s", response["message"])
        return web.json_response(response)


async def self_test(sandbox: Sandbox) -> None:
    """Fails at start-up, naming the cause, where bubblewrap cannot create its namespaces here."""
    for language, code in (("python", "print('ok')"), ("bash", "echo ok")):
        response = await sandbox.run(RunCodeRequest(code=code, language=language))
        if response["status"] != "Success" or response["run_result"]["stdout"] != "ok\n":
            why = response["message"] or response["run_result"]
            raise SandboxUnavailable(f"the sandbox cannot run {language}: {why}")


def serve(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 8080, max_concurrency: int = 8) -> None:
    async def started() -> web.Application:
        await self_test(sandbox)
        return SandboxServer(sandbox, max_concurrency).app

    print(f"rlpost sandbox serving on http://{host}:{port} (languages: {', '.join(sandbox.settings.languages())}); "
          f"{sandbox.bounds()}", flush=True)
    web.run_app(started(), host=host, port=port, access_log=None, print=None)
