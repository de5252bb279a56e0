"""`rlpost serve engine`: the embedded engine behind SGLang's HTTP endpoints, field for field, so one client drives
either. Bad requests get HTTP 400 with {"error": {"message": ...}}, as SGLang answers them.

Where SGLang's behaviour decides whether a client works, this server enforces it: tensor and broadcast weight
updates only inside a /begin_weight_update ... /end_weight_update session; weight-update groups built with SGLang's
rendezvous layout (rlpost.protocol.weight_group); `sampling_seed` honoured only with --enable-deterministic-inference,
where the n copies of one request share its seed (so they sample the same tokens) and an unseeded request uses 42;
/update_weights_from_tensor reads its TP rank's entry of serialized_named_tensors; a streamed request that fails
after the stream opened ends with a `data: {"error": ...}` chunk. Its own extras: the CPU-only engine joins gloo groups
only and refuses `image_data` and other inputs it cannot serve, with the reason.

Like SGLang, /update_weights_from_tensor unpickles what it is sent (CPU tensors only, by an allowlist): bind to
loopback (the default) or a trusted network only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

from rlpost.dtypes import dtype_name, torch_dtype
from rlpost.protocol.weight_group import WeightUpdateGroup
from rlpost.protocol.wire import deserialize_named_tensors
from rlpost.rollout.engine.engine import Engine
from rlpost.rollout.engine.request import Request, RequestError, SamplingParams
from rlpost.rollout.tool_parser import parse_tool_calls

_UNSUPPORTED = {"lora_path", "custom_logit_processor", "return_hidden_states", "token_ids_logprob"}


def _error(request: web.Request, message: str, status: int = 400) -> web.Response:
    """SGLang's error bodies: nested for its native endpoints, OpenAI's flat form under /v1/."""
    if request.path.startswith("/v1/"):
        return _respond({"object": "error", "message": message, "type": "BadRequestError", "param": None,
                         "code": status}, status=status)
    return _respond({"error": {"message": message}}, status=status)


async def _json(request: web.Request) -> dict:
    """The body as a JSON object, parsed off the event loop (a large body must not hold up /health). aiohttp answers
    a body over the server's size limit with 413 before it is all read."""
    raw = await request.read() if request.can_read_body else b"{}"
    try:
        body = await asyncio.to_thread(json.loads, raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(f"request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise RequestError("request body is nested too deeply") from e
    if not isinstance(body, dict):
        raise RequestError("request body must be a JSON object")
    return body


def _finite(value):
    """Non-finite floats as null, as SGLang's orjson writes them: a bare NaN or Infinity is not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dumps(value) -> str:
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False)


def _respond(value, status: int = 200) -> web.Response:
    return web.json_response(value, status=status, dumps=_dumps)


async def _event_stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    return response


MAX_REQUEST_BYTES = 64 << 20  # weight updates pass tensors by shared memory or broadcast, so bodies stay small


class EngineServer:
    def __init__(self, engine: Engine, served_model_name: str | None = None,
                 max_request_bytes: int = MAX_REQUEST_BYTES):
        self.engine = engine
        self.served_model_name = served_model_name or engine.model_path
        self.groups: dict[str, WeightUpdateGroup] = {}
        self._rids: set[str] = set()  # of requests in flight: a second request with one of these is refused
        # tokenising a long text takes seconds: on its own thread, one at a time (a fast tokenizer is not re-entrant)
        self._tokenizing = ThreadPoolExecutor(1, thread_name_prefix="rlpost-tokenize")
        self._max_token_chars: int | None = None
        self.in_session = False  # between /begin_weight_update and /end_weight_update
        # SGLang's model-update lock: a weight update waits for in-flight generations (unless generation is
        # paused, which is what pausing is for) and holds new ones back, so no sequence mixes two policies
        self._gate: asyncio.Condition | None = None
        self._generating = 0
        self._updating = False
        self.app = web.Application(client_max_size=max_request_bytes, middlewares=[self._errors])
        get, post = ("GET",), ("POST",)
        both = ("GET", "POST")
        for path, handler, methods in [
            ("/generate", self.generate, post), ("/health", self.health, get),
            ("/health_generate", self.health_generate, get), ("/get_model_info", self.model_info, get),
            ("/model_info", self.model_info, get), ("/get_server_info", self.server_info, get),
            ("/server_info", self.server_info, get), ("/begin_weight_update", self.begin_update, post),
            ("/end_weight_update", self.end_update, post),
            ("/flush_cache", self.flush_cache, both), ("/update_weights_from_tensor", self.update_from_tensor, post),
            ("/update_weights_from_disk", self.update_from_disk, post),
            ("/init_weights_update_group", self.init_group, post),
            ("/update_weights_from_distributed", self.update_from_distributed, post),
            ("/destroy_weights_update_group", self.destroy_group, post),
            ("/release_memory_occupation", self.release_memory, both),
            ("/resume_memory_occupation", self.resume_memory, both),
            ("/pause_generation", self.pause, post), ("/continue_generation", self.continue_generation, post),
            ("/abort_request", self.abort, post), ("/get_weight_version", self.weight_version, get),
            ("/v1/chat/completions", self.chat_completions, post), ("/v1/models", self.models, get),
        ]:
            for method in methods:
                self.app.router.add_route(method, path, handler)

    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except RequestError as e:
            return _error(request, str(e))
        except (KeyError, ValueError, TypeError) as e:
            return _error(request, f"{type(e).__name__}: {e}")

    @contextlib.asynccontextmanager
    async def _generation(self):
        self._gate = self._gate or asyncio.Condition()
        async with self._gate:
            await self._gate.wait_for(lambda: not self._updating)
            self._generating += 1
        try:
            yield
        finally:
            async with self._gate:
                self._generating -= 1
                self._gate.notify_all()

    @contextlib.asynccontextmanager
    async def _exclusive(self):
        self._gate = self._gate or asyncio.Condition()
        async with self._gate:
            await self._gate.wait_for(lambda: not self._updating)
            self._updating = True
            await self._gate.wait_for(lambda: self._generating == 0 or self.engine.paused)
        try:
            yield
        finally:
            async with self._gate:
                self._updating = False
                self._gate.notify_all()

    async def _on_engine(self, fn) -> Any:
        return await asyncio.wrap_future(self.engine.call(fn))

    # ---- generation ----------------------------------------------------------------------------------------------

    async def _tokenize(self, texts: list[str], **kwargs) -> list[list[int]]:
        """Token ids of each text, refusing by length first a text that cannot fit the context: no token of this
        tokenizer spans more than _max_token_chars characters."""
        tok, context = self.engine.tokenizer, self.engine.context_length
        if self._max_token_chars is None:
            self._max_token_chars = max(map(len, tok.convert_ids_to_tokens(range(len(tok)))))
        for text in texts:
            if len(text) > context * self._max_token_chars:
                raise RequestError(f"the prompt text has {len(text)} characters, more than the context length of "
                                   f"{context} tokens can hold (a token of this tokenizer is at most "
                                   f"{self._max_token_chars} characters)")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizing, lambda: [tok(t, **kwargs)["input_ids"] for t in texts])

    async def _requests(self, body: dict) -> tuple[list[Request], bool, list[str]]:
        """The engine requests of one /generate body, whether the body was a batch, and the rid of each prompt."""
        # like SGLang, top-level fields this server does not know are ignored (clients send routing hints etc.);
        # sampling_params is strict, because a misspelt sampling setting silently changes the rollout
        unsupported = sorted(k for k in _UNSUPPORTED if body.get(k))
        if unsupported:
            raise RequestError(f"'{unsupported[0]}' is not supported by the embedded engine")
        text, ids = body.get("text"), body.get("input_ids")
        if (text is None) == (ids is None):
            raise RequestError("give exactly one of 'text' and 'input_ids'")
        if text is not None:
            batch = isinstance(text, list)
            texts = text if batch else [text]
            if not all(isinstance(t, str) for t in texts):
                raise RequestError("'text' must be a string or a list of strings")
            prompts = await self._tokenize(texts)
        else:
            batch = bool(ids) and isinstance(ids[0], list)
            prompts = ids if batch else [ids]
            if not all(isinstance(p, list) and all(isinstance(t, int) for t in p) for p in prompts):
                raise RequestError("'input_ids' must be a list of token ids or a list of such lists")
        per_prompt = body.get("sampling_params") or {}
        params_list = per_prompt if isinstance(per_prompt, list) else [per_prompt] * len(prompts)
        if len(params_list) != len(prompts):
            raise RequestError(f"{len(params_list)} sampling_params for {len(prompts)} prompts")
        rid = body.get("rid")
        if isinstance(rid, list):
            rids = rid
        elif rid is None:
            rids = [None] * len(prompts)
        else:
            rids = [f"{rid}_{i}" for i in range(len(prompts))] if batch else [rid]
        if len(rids) != len(prompts) or not all(r is None or isinstance(r, str) for r in rids):
            raise RequestError("'rid' must be a string, or a list of strings with one per prompt")
        rids = [r or uuid.uuid4().hex for r in rids]
        if len(set(rids)) < len(rids):
            raise RequestError("'rid' has the same id twice")

        def per(name: str, default):
            value = body.get(name)
            values = value if isinstance(value, list) else [value] * len(prompts)
            if len(values) != len(prompts):
                raise RequestError(f"{name} has {len(values)} entries for {len(prompts)} prompts")
            return [default if v is None else v for v in values]

        return_logprob, start, top_n = per("return_logprob", False), per("logprob_start_len", -1), per(
            "top_logprobs_num", 0)
        prepared = await self._prepare_images(prompts, _image_data(body.get("image_data"), batch, len(prompts)))
        requests = []
        for i, fields in enumerate(prepared):
            requests += self._samples(
                rids[i], SamplingParams.from_json(params_list[i]), return_logprob=bool(return_logprob[i]),
                logprob_start_len=int(start[i]), top_logprobs_num=int(top_n[i]), stream=bool(body.get("stream")),
                **fields)
        return requests, batch or len(requests) > 1, rids

    async def _prepare_images(self, prompts: list[list[int]], image_data: list[list]) -> list[dict]:
        """Each prompt's Request fields: image processing and the vision-token expansion off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._tokenizing, lambda: [
            self.engine.prepare_images(p, items) for p, items in zip(prompts, image_data)])

    def _samples(self, base: str, params: SamplingParams, input_ids: list[int], **fields) -> list[Request]:
        """The params.n checked requests of one prompt. As SGLang: with deterministic inference every copy samples
        with the request's seed (42 when it has none), otherwise from the engine's shared generator."""
        seed = (42 if params.sampling_seed is None else params.sampling_seed) if self.engine.deterministic else None
        requests = [Request(rid=base if params.n == 1 else f"{base}-{j}", input_ids=list(input_ids), params=params,
                            seed=seed, **fields) for j in range(params.n)]
        for req in requests:
            self.engine.check(req)
        return requests

    def _output(self, req: Request, text_in_logprobs: bool, upto: int | None = None) -> dict:
        """The response object; with upto, a streaming snapshot of the first upto tokens (not yet finished)."""
        tok = self.engine.tokenizer
        finish_reason = req.finish_reason if upto is None else None
        ids = req.output_ids[:upto] if upto is not None else list(req.output_ids)
        matched = (finish_reason or {}).get("matched")
        trim = not req.params.no_stop_trim
        shown = ids[:-1] if trim and isinstance(matched, int) else ids
        text = tok.decode(shown, skip_special_tokens=req.params.skip_special_tokens)
        if trim and isinstance(matched, str) and matched in text:
            text = text[: text.index(matched)]
        meta = {
            "id": req.rid, "finish_reason": finish_reason, "prompt_tokens": len(req.input_ids),
            "weight_version": req.weight_version, "completion_tokens": len(ids), "cached_tokens": req.cached_tokens,
        }
        if finish_reason is not None:
            meta["e2e_latency"] = (req.finished_at or time.time()) - req.created
        if req.return_logprob:
            def triples(values, ids):
                return [[v, t, tok.decode([t]) if text_in_logprobs else None] for v, t in zip(values, ids)]

            def tops(rows):
                return [None if row is None else triples([v for v, _ in row], [t for _, t in row]) for row in rows]

            if req.logprob_start_len < 0:  # SGLang's default: only the last prompt token, without a log-prob
                meta["input_token_logprobs"] = triples([None], req.input_ids[-1:])
                req.input_top_logprobs = [None]
            else:
                meta["input_token_logprobs"] = triples(req.input_logprobs, req.input_ids[req.logprob_start_len:])
            meta["output_token_logprobs"] = triples(req.output_logprobs[:len(ids)], ids)
            if req.top_logprobs_num:
                meta["input_top_logprobs"] = tops(req.input_top_logprobs)
                meta["output_top_logprobs"] = tops(req.output_top_logprobs[:len(ids)])
        return {"text": text, "output_ids": ids, "meta_info": meta}

    def _track(self, requests: list[Request]) -> asyncio.Queue:
        """Route engine-thread updates of these requests into an asyncio queue on this loop."""
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        for index, req in enumerate(requests):
            req.on_update = lambda r, i=index: loop.call_soon_threadsafe(
                queue.put_nowait, (i, len(r.output_ids), r.finished))
        return queue

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await _json(request)
        try:
            requests, batch, rids = await self._requests(body)
            busy = next((rid for rid in rids if rid in self._rids), None)
            if busy is not None:  # two requests under one rid would share its aborts
                raise RequestError(f"rid '{busy}' is already in flight")
        except RequestError as e:
            if body.get("stream"):  # SGLang checks a streamed request after the stream opened
                return await self._stream_error(request, str(e))
            raise
        text_in_logprobs = bool(body.get("return_text_in_logprobs", False))
        queue = self._track(requests)
        self._rids.update(rids)
        try:
            async with self._generation():
                if body.get("stream"):
                    return await self._stream(request, requests, batch, queue, text_in_logprobs)
                return await self._complete(requests, batch, queue, text_in_logprobs)
        finally:
            self._rids.difference_update(rids)

    async def _complete(self, requests, batch, queue, text_in_logprobs) -> web.Response:
        await self._run(requests, queue)
        outputs = [self._output(r, text_in_logprobs) for r in requests]
        return _respond(outputs if batch else outputs[0])

    async def _run(self, requests: list[Request], queue: asyncio.Queue) -> None:
        """Submit and wait until every request has finished."""
        for req in requests:
            self.engine.submit(req)
        try:
            remaining = len(requests)
            while remaining:
                _, _, finished = await queue.get()
                remaining -= finished
        except asyncio.CancelledError:  # the client went away: free the rows
            self._abort(requests)
            raise

    def _abort(self, requests: list[Request]) -> None:
        for req in requests:
            self.engine.call(lambda rid=req.rid: self.engine.abort(rid))

    async def _stream(self, request, requests, batch, queue, text_in_logprobs) -> web.StreamResponse:
        response = await _event_stream(request)
        for req in requests:
            self.engine.submit(req)
        remaining, sent = len(requests), [0] * len(requests)
        try:
            while remaining:
                index, count, finished = await queue.get()
                if count == sent[index] and not finished:
                    continue
                chunk = self._output(requests[index], text_in_logprobs, None if finished else count)
                chunk["output_ids"] = chunk["output_ids"][sent[index]:]  # new ids only; text stays cumulative
                sent[index] = len(requests[index].output_ids) if finished else count
                if batch:
                    chunk["index"] = index
                await response.write(f"data: {_dumps(chunk)}\n\n".encode())
                remaining -= finished
            await response.write(b"data: [DONE]\n\n")
        except (asyncio.CancelledError, ConnectionResetError):
            self._abort(requests)
            raise
        return response

    async def _stream_error(self, request: web.Request, message: str) -> web.StreamResponse:
        response = await _event_stream(request)
        error = {"message": message, "type": "invalid_request_error", "code": 400, "retryable": False}
        await response.write(f"data: {json.dumps({'error': error})}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    async def chat_completions(self, request: web.Request) -> web.Response:
        body = await _json(request)
        messages, tools = body.get("messages"), body.get("tools")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list")
        if body.get("stream"):
            raise RequestError("streaming chat completions are not supported by the embedded engine")
        tok = self.engine.tokenizer
        if not tok.chat_template:
            raise RequestError(f"the model's tokenizer ({self.engine.model_path}) has no chat template")
        tool_choice = body.get("tool_choice", "auto")
        use_tools = tools if tools and tool_choice != "none" else None
        messages, image_data = _image_parts(messages)
        prompt = await asyncio.get_running_loop().run_in_executor(self._tokenizing, lambda: tok.apply_chat_template(
            _with_parsed_arguments(messages), tools=use_tools, add_generation_prompt=True, tokenize=False))
        stop = body.get("stop")
        params = SamplingParams.from_json({
            "max_new_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or
            self.engine.context_length, "temperature": body.get("temperature", 1.0), "top_p": body.get("top_p", 1.0),
            "top_k": body.get("top_k", -1), "min_p": body.get("min_p", 0.0), "n": body.get("n", 1),
            "stop": [stop] if isinstance(stop, str) else stop, "sampling_seed": body.get("seed"),
            "frequency_penalty": body.get("frequency_penalty", 0.0),
            "presence_penalty": body.get("presence_penalty", 0.0),
            "skip_special_tokens": body.get("skip_special_tokens", True),
        })
        fields = (await self._prepare_images(await self._tokenize([prompt], add_special_tokens=False),
                                             [image_data]))[0]
        ids = fields["input_ids"]
        params.max_new_tokens = min(params.max_new_tokens, self.engine.context_length - len(ids))
        logprobs, top_n = bool(body.get("logprobs")), int(body.get("top_logprobs") or 0)
        base = uuid.uuid4().hex
        requests = self._samples(base, params, return_logprob=logprobs, top_logprobs_num=top_n, **fields)
        queue = self._track(requests)
        async with self._generation():
            await self._run(requests, queue)
        known = [t["function"]["name"] for t in tools or [] if isinstance(t, dict) and "function" in t]
        choices = [self._choice(j, req, use_tools is not None, known) for j, req in enumerate(requests)]
        completion = sum(len(r.output_ids) for r in requests)
        return _respond({
            "id": base, "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or self.served_model_name, "choices": choices,
            "usage": {"prompt_tokens": len(ids), "completion_tokens": completion,
                      "total_tokens": len(ids) + completion},
        })

    def _choice(self, index: int, req: Request, parse_tools: bool, known: list[str]) -> dict:
        tok = self.engine.tokenizer
        text = self._output(req, False)["text"]
        message: dict[str, Any] = {"role": "assistant", "content": text, "reasoning_content": None,
                                   "tool_calls": None}
        finish = req.finish_reason["type"]
        if parse_tools:
            parsed = parse_tool_calls(text, known or None)  # calls to undeclared tools are dropped, as SGLang does
            if parsed.tool_calls:
                message["content"] = parsed.content or None
                message["tool_calls"] = [
                    {"id": f"call_{uuid.uuid4().hex[:24]}", "index": k, "type": "function",
                     "function": {"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False)}}
                    for k, call in enumerate(parsed.tool_calls)
                ]
                finish = "tool_calls" if finish == "stop" else finish
        logprobs = None
        if req.return_logprob:
            logprobs = {"content": [
                {"token": tok.decode([t]), "logprob": lp, "bytes": list(tok.decode([t]).encode()),
                 "top_logprobs": [{"token": tok.decode([i]), "logprob": v, "bytes": list(tok.decode([i]).encode())}
                                  for v, i in (req.output_top_logprobs[k] if req.top_logprobs_num else [])]}
                for k, (t, lp) in enumerate(zip(req.output_ids, req.output_logprobs))
            ]}
        matched = req.finish_reason.get("matched")
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish,
                "matched_stop": matched if finish == "stop" else None}

    # ---- status --------------------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def health_generate(self, request: web.Request) -> web.Response:
        if self.engine.paused or self.engine.released:
            return web.Response(status=503, text="generation is paused or memory is released")
        req = Request(rid=f"HEALTH_CHECK_{uuid.uuid4().hex}", input_ids=[0], params=SamplingParams(max_new_tokens=1))
        queue = self._track([req])
        self.engine.submit(req)
        try:
            await asyncio.wait_for(queue.get(), timeout=20)
        except asyncio.TimeoutError:
            self.engine.call(lambda: self.engine.abort(req.rid))
            return web.Response(status=503, text="no generation within 20 s")
        if req.finish_reason["type"] == "abort":
            return web.Response(status=503, text=req.finish_reason.get("message", "unhealthy"))
        return web.Response(status=200)

    async def model_info(self, request: web.Request) -> web.Response:
        return _respond({
            "model_path": self.engine.model_path, "tokenizer_path": self.engine.model_path, "is_generation": True,
            "preferred_sampling_params": None, "weight_version": self.engine.weight_version,
            "has_image_understanding": False, "has_audio_understanding": False,
        })

    async def server_info(self, request: web.Request) -> web.Response:
        e = self.engine
        return _respond({
            "model_path": e.model_path, "dtype": dtype_name(e.model.dtype), "tp_size": 1,
            "context_length": e.context_length, "max_running_requests": e.max_running,
            "max_prefill_tokens": e.max_prefill_tokens, "prefix_cache_tokens": e.prefix_cache.max_tokens,
            "enable_deterministic_inference": e.deterministic, "weight_version": e.weight_version,
            "engine": "rlpost-embedded", "internal_states": [dict(e.stats)],
        })

    async def weight_version(self, request: web.Request) -> web.Response:
        return _respond({"weight_version": self.engine.weight_version})

    async def models(self, request: web.Request) -> web.Response:
        return _respond({"object": "list", "data": [
            {"id": self.served_model_name, "object": "model", "created": int(time.time()), "owned_by": "rlpost",
             "root": self.served_model_name, "max_model_len": self.engine.context_length}]})

    async def flush_cache(self, request: web.Request) -> web.Response:
        if await self._on_engine(self.engine.flush_cache):
            return web.Response(text="Cache flushed.\n", status=200)
        return web.Response(text="Cache not flushed: requests are in flight.\n", status=400)

    # ---- weights -------------------------------------------------------------------------------------------------

    def _result(self, success: bool, message: str, **extra) -> web.Response:
        return _respond({"success": success, "message": message, **extra}, status=200 if success else 400)

    async def _update(self, body: dict, named, what: str) -> web.Response:
        if body.get("abort_all_requests"):
            await self._on_engine(lambda: self.engine.abort())
        async with self._exclusive():
            try:
                count = await self._on_engine(lambda: self.engine.load_weights(
                    named() if callable(named) else named, bool(body.get("flush_cache", True)),
                    body.get("weight_version")))
            except Exception as e:  # noqa: BLE001 - any failure to read or check the tensors is the sender's;
                # Engine.load_weights checks every tensor before it copies any, so the weights are as they were
                return self._result(False, f"Failed to update weights from {what}: {type(e).__name__}: {e}")
        version = body.get("weight_version")
        suffix = f" Weight version updated to {version}." if version is not None else ""
        return self._result(True, f"Succeeded to update model weights ({count} tensors from {what}).{suffix}")

    async def begin_update(self, request: web.Request) -> web.Response:
        await _json(request)
        if self.in_session:
            return self._result(False, "a weight-update session is already open; call /end_weight_update first")
        self.in_session = True
        return self._result(True, "Success")

    async def end_update(self, request: web.Request) -> web.Response:
        await _json(request)
        if not self.in_session:
            return self._result(False, "no weight-update session is open; call /begin_weight_update first")
        self.in_session = False
        return self._result(True, "Success")

    def _outside_session(self, path: str) -> web.Response | None:
        if self.in_session:
            return None
        return self._result(False, f"{path} must run between /begin_weight_update and /end_weight_update")

    async def update_from_tensor(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if refusal := self._outside_session(request.path):
            return refusal
        serialized = body.get("serialized_named_tensors")
        if not isinstance(serialized, list) or len(serialized) != 1:
            raise RequestError("'serialized_named_tensors' must be a list with one entry per TP rank (the embedded "
                               "engine has tp_size 1)")
        if body.get("load_format") not in (None, "direct"):
            raise RequestError(f"load_format '{body['load_format']}' is not supported; use null or 'direct'")
        try:
            named = deserialize_named_tensors(serialized[0])
        except ValueError as e:
            raise RequestError(f"serialized_named_tensors[0] {e}") from e
        return await self._update(body, named, "tensor")

    async def update_from_disk(self, request: web.Request) -> web.Response:
        body = await _json(request)
        path = body.get("model_path")
        if not isinstance(path, str) or not (Path(path) / "config.json").is_file():
            return self._result(False, f"Failed to update weights from disk: '{path}' is not a model directory")
        from rlpost.models.safetensors_dir import SafetensorsDir

        def read() -> list:  # all of it before any weight changes: a corrupt file fails the update, not half of it
            reader, known = SafetensorsDir(path), set(self.engine.model._table)
            return [(n, reader.get(n)) for n in reader.files if n in known]

        response = await self._update(body, read, "disk")
        payload = json.loads(response.body)
        if payload["success"]:
            self.engine.model_path = path
        return _respond({**payload, "num_paused_requests": 0}, status=response.status)

    async def init_group(self, request: web.Request) -> web.Response:
        body = await _json(request)
        name = body.get("group_name", "weight_update_group")
        missing = [k for k in ("master_address", "master_port", "rank_offset", "world_size") if k not in body]
        if missing:
            raise RequestError(f"/init_weights_update_group needs {', '.join(missing)}")
        backend = body.get("backend", "nccl")  # SGLang's default
        if backend != "gloo":
            raise RequestError(f"backend '{backend}': the embedded engine runs on CPU and joins gloo groups only")
        if name in self.groups:
            return self._result(False, f"weight update group '{name}' already exists")
        try:
            group = await asyncio.to_thread(
                WeightUpdateGroup, body["master_address"], int(body["master_port"]), int(body["rank_offset"]),
                int(body["world_size"]), name, backend)
        except Exception as e:  # noqa: BLE001 - reported to the caller, as SGLang does
            return self._result(False, f"Failed to init group: {type(e).__name__}: {e}")
        self.groups[name] = group
        return self._result(True, f"Succeeded to initialize custom process group '{name}'.")

    async def update_from_distributed(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if refusal := self._outside_session(request.path):
            return refusal
        name = body.get("group_name", "weight_update_group")
        if name not in self.groups:
            raise RequestError(f"no weight update group '{name}'; call /init_weights_update_group first")
        names, dtypes, shapes = body.get("names"), body.get("dtypes"), body.get("shapes")
        if not (isinstance(names, list) and isinstance(dtypes, list) and isinstance(shapes, list)
                and len(names) == len(dtypes) == len(shapes)):
            raise RequestError("'names', 'dtypes' and 'shapes' must be lists of equal length")
        for dtype in dtypes:
            try:
                torch_dtype(dtype)  # a receiver that cannot allocate cannot take part in the broadcasts
            except ValueError as e:
                raise RequestError(str(e)) from e
        group = self.groups[name]
        return await self._update(body, lambda: group.receive(names, dtypes, shapes), "distributed")

    async def destroy_group(self, request: web.Request) -> web.Response:
        body = await _json(request)
        name = body.get("group_name", "weight_update_group")
        async with self._exclusive():
            group = self.groups.pop(name, None)
        if group is None:
            return self._result(False, f"no weight update group '{name}'")
        group.close()
        return self._result(True, f"Succeeded to destroy custom process group '{name}'.")

    # ---- memory and flow -----------------------------------------------------------------------------------------

    async def release_memory(self, request: web.Request) -> web.Response:
        body = await _json(request)
        await self._on_engine(lambda: self.engine.release_memory(body.get("tags")))
        return _respond(None)

    async def resume_memory(self, request: web.Request) -> web.Response:
        body = await _json(request)
        await self._on_engine(lambda: self.engine.resume_memory(body.get("tags")))
        return _respond(None)

    async def pause(self, request: web.Request) -> web.Response:
        body = await _json(request)
        await self._on_engine(lambda: self.engine.pause(body.get("mode", "abort")))
        if self._gate is not None:  # an update waiting for in-flight generations may now proceed
            async with self._gate:
                self._gate.notify_all()
        return _respond({"message": "Generation paused successfully.", "status": "ok"})

    async def continue_generation(self, request: web.Request) -> web.Response:
        await self._on_engine(self.engine.resume_generation)
        return _respond({"message": "Generation continued successfully.", "status": "ok"})

    async def abort(self, request: web.Request) -> web.Response:
        body = await _json(request)
        if body.get("abort_all"):
            await self._on_engine(lambda: self.engine.abort(None))
        elif body.get("rid"):  # an empty or unknown rid aborts nothing, as in SGLang
            await self._on_engine(lambda: self.engine.abort(str(body["rid"])))
        return web.Response(status=200)


class HTTPThread:
    """The HTTP side on a thread of its own, so the engine loop keeps whichever thread it runs on."""

    def __init__(self, engine: Engine, host: str, port: int, served_model_name: str | None = None):
        server = EngineServer(engine, served_model_name)
        self.loop = asyncio.new_event_loop()
        # handler_cancellation: a client that goes away cancels its handler, which aborts its requests
        self.runner = web.AppRunner(server.app, access_log=None, handle_signals=False, handler_cancellation=True)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, host, port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, name="rlpost-http", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def serve(engine: Engine, host: str = "127.0.0.1", port: int = 30000, served_model_name: str | None = None) -> None:
    """HTTP on a background thread, the engine loop on this (the main) thread; SIGTERM/SIGINT stop both."""
    http = HTTPThread(engine, host, port, served_model_name)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: engine.request_stop())
    try:
        engine.serve_forever()
    finally:
        http.stop()


def _image_data(value, batch: bool, n_prompts: int) -> list[list]:
    """SGLang's image_data per prompt: one item or a list of items for one prompt, a list of lists for a batch."""
    if value is None:
        return [[] for _ in range(n_prompts)]
    if not batch:
        return [value if isinstance(value, list) else [value]]
    if not isinstance(value, list) or len(value) != n_prompts:
        raise RequestError(f"image_data must hold one entry (a list of images, or null) per prompt: {n_prompts} "
                           f"prompts")
    return [[] if v is None else v if isinstance(v, list) else [v] for v in value]


def _image_parts(messages: list[dict]) -> tuple[list[dict], list[str]]:
    """OpenAI image parts ({type: image_url, image_url: {url}}) -> template image parts, and their URLs in order."""
    urls, out = [], []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    url = part.get("image_url")
                    urls.append(url.get("url") if isinstance(url, dict) else url)
                    parts.append({"type": "image"})
                else:
                    parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out, urls


def _with_parsed_arguments(messages: list[dict]) -> list[dict]:
    """OpenAI messages carry tool-call arguments as JSON strings; chat templates expect objects (they tojson them)."""
    out = []
    for message in messages:
        calls = message.get("tool_calls") if isinstance(message, dict) else None
        if calls:
            message = {**message, "tool_calls": [_parsed_call(c) for c in calls]}
        out.append(message)
    return out


def _parsed_call(call: dict) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        try:
            return {**call, "function": {**function, "arguments": json.loads(function["arguments"])}}
        except json.JSONDecodeError as e:
            raise RequestError(f"tool call '{function.get('name')}' has arguments that are not JSON: {e}") from e
    return call
