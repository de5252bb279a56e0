"""Security suite, rollout engine: hostile requests against `rlpost serve engine` (a real process on loopback) and the
engine loop itself. Each test is one finding of the adversarial review (issue 18); every loop is bounded."""

import asyncio
import base64
import json
import pickle
import threading
import time
from pathlib import Path

import aiohttp
import pytest
import torch

from rlpost.net import free_port
from rlpost.protocol.wire import ServerError, serialize_named_tensors
from rlpost.resharding.servers import WeightServers
from rlpost.rollout.client import SGLangClient
from rlpost.rollout.engine.engine import Engine
from rlpost.rollout.engine.request import Request, SamplingParams
from rlpost.rollout.launcher import ServerProcess, ServerSpec
from rlpost.testing.tiny_models import make_tiny_checkpoint

PROMPT = [15, 27, 99, 140, 200, 33]
GREEDY = {"max_new_tokens": 8, "temperature": 0.0}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_checkpoint("qwen2", tmp_path_factory.mktemp("security_model"))


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    spec = ServerSpec(str(model), port=free_port(), dtype="float32", max_running_requests=32,
                      deterministic_inference=True)
    with ServerProcess(spec, tmp_path_factory.mktemp("logs") / "server.log") as process:
        process.wait_healthy(timeout_s=120)
        yield process


def post(server, path: str, data: bytes | dict, timeout: float = 60) -> tuple[int, bytes]:
    """One raw HTTP request: the status and body exactly as the server sent them."""
    async def go():
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.post(server.spec.url + path, data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                return response.status, await response.read()

    return asyncio.run(go())


def generate(server, payload: dict) -> dict:
    status, body = post(server, "/generate", payload)
    assert status == 200, body
    return json.loads(body)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# ---- 1. one request must not abort everybody's generations ------------------------------------------------------

def test_a_request_with_boolean_token_ids_is_refused_and_the_others_finish(server):
    async def go():
        async with aiohttp.ClientSession() as session:
            async def one(payload):
                async with session.post(server.spec.url + "/generate", json=payload) as response:
                    return response.status, await response.json()

            good = [one({"input_ids": PROMPT + [i], "sampling_params": {"max_new_tokens": 24, "ignore_eos": True}})
                    for i in range(30)]
            bad = [one({"input_ids": [True, False]}) for _ in range(3)]
            return await asyncio.gather(*good, *bad)

    answers = asyncio.run(go())
    assert all(status == 200 and a["meta_info"]["finish_reason"]["type"] == "length" for status, a in answers[:30])
    assert all(status == 400 and "not an integer" in a["error"]["message"] for status, a in answers[30:])


def test_a_failure_inside_the_engine_fails_only_the_request_that_caused_it(model):
    """Whatever gets past the checks and then breaks a step (here a token id outside the vocabulary, slipped in behind
    the engine's back) fails its own request; the others, admitted with it or already decoding, finish as if it had
    never been there."""
    engine = Engine(model, dtype="float32", max_running=16, deterministic=True).start()
    try:
        def requests(tag: str) -> list[Request]:
            return [Request(f"{tag}{i}", PROMPT[: 3 + i], SamplingParams(max_new_tokens=12, temperature=0.0,
                                                                        ignore_eos=True)) for i in range(4)]

        alone = [r.output_ids for r in engine.run(requests("alone"), timeout_s=60)]
        first, second = requests("a"), requests("b")
        for req in first:
            engine.submit(req)
        poisoned = [Request(f"bad{i}", [1, 2, engine.model.dims.vocab + 7], SamplingParams(max_new_tokens=4))
                    for i in range(2)]

        def slip_in():  # bypasses Engine.check, as a bug in a check would
            engine.waiting.extend([poisoned[0], *second[:2], poisoned[1], *second[2:]])

        while not any(r.output_ids for r in first):
            time.sleep(0.001)
        engine.call(slip_in).result()
        deadline = time.monotonic() + 60
        while not all(r.finished_at for r in first + second + poisoned) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        engine.shutdown()
    for req in poisoned:
        assert req.finish_reason["type"] == "abort" and "IndexError" in req.finish_reason["message"]
    assert [r.finish_reason["type"] for r in first + second] == ["length"] * 8
    assert [r.output_ids for r in first] == alone and [r.output_ids for r in second] == alone


# ---- 2. a large body must not stall the server ------------------------------------------------------------------

def test_a_huge_prompt_is_refused_by_size_and_health_answers_meanwhile(server):
    before = rss_mb(server.process.pid)
    latencies, done = [], threading.Event()

    def watch():
        import urllib.request

        while not done.is_set():
            start = time.monotonic()
            urllib.request.urlopen(server.spec.url + "/health", timeout=10).read()
            latencies.append(time.monotonic() - start)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        start = time.monotonic()
        status, body = post(server, "/generate", {"text": "word " * 10_000_000, "sampling_params": GREEDY})
        refused_in = time.monotonic() - start
        too_big, _ = post(server, "/generate", b'{"text": "' + b"x" * (80 << 20) + b'"}')
    finally:
        done.set()
        watcher.join()
    assert status == 400 and "context length" in json.loads(body)["error"]["message"], body[:300]
    assert refused_in < 10 and too_big == 413
    assert max(latencies) < 2.0, max(latencies)
    assert rss_mb(server.process.pid) - before < 600
    assert generate(server, {"input_ids": PROMPT, "sampling_params": GREEDY})["meta_info"]["finish_reason"]


# ---- 3 and 4. weight updates: all or nothing, checked, and no code run by unpickling -----------------------------

def _norm(server) -> list[int]:
    return generate(server, {"input_ids": PROMPT, "sampling_params": GREEDY})["output_ids"]


def _version(server) -> str:
    return asyncio.run(_get(server, "/get_weight_version"))["weight_version"]


async def _get(server, path):
    async with aiohttp.ClientSession() as session, session.get(server.spec.url + path) as response:
        return await response.json()


@pytest.mark.parametrize("bad", ["int64", "bool", "complex64", "wrong_shape", "unknown_name"])
def test_a_weight_update_with_one_bad_tensor_changes_nothing(server, model, bad):
    from safetensors.torch import load_file

    weights = load_file(Path(model) / "model.safetensors")
    before, version = _norm(server), _version(server)
    good = [(name, torch.randn_like(weights[name]) * 3) for name in ("model.norm.weight", "lm_head.weight")]
    target = weights["model.layers.0.mlp.up_proj.weight"]
    last = {"int64": ("model.layers.0.mlp.up_proj.weight", target.to(torch.int64)),
            "bool": ("model.layers.0.mlp.up_proj.weight", target > 0),
            "complex64": ("model.layers.0.mlp.up_proj.weight", target.to(torch.complex64)),
            "wrong_shape": ("model.layers.0.mlp.up_proj.weight", target[:-1]),
            "unknown_name": ("model.layers.0.mlp.nothing.weight", target)}[bad]
    body = {"serialized_named_tensors": [serialize_named_tensors(good + [last])], "weight_version": "poisoned"}
    with WeightServers([server.spec.url]).session():
        status, answer = post(server, "/update_weights_from_tensor", body)
    assert status == 400 and not json.loads(answer)["success"]
    assert _norm(server) == before and _version(server) == version


def test_a_corrupt_safetensors_file_is_a_400_and_the_weights_stay(server, model, tmp_path):
    import shutil

    corrupt = tmp_path / "corrupt"
    shutil.copytree(model, corrupt)
    data = (corrupt / "model.safetensors").read_bytes()
    (corrupt / "model.safetensors").write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage"
    shutil.copytree(model, garbage)
    (garbage / "model.safetensors").write_bytes(b"\xff" * 64)
    before, version = _norm(server), _version(server)
    for path in (corrupt, garbage):
        status, answer = post(server, "/update_weights_from_disk", {"model_path": str(path), "weight_version": "x"})
        assert status == 400 and "Failed to update weights from disk" in json.loads(answer)["message"], answer
    assert _norm(server) == before and _version(server) == version


class _RunsAShellCommand:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_tensor_payload_that_would_run_code_is_refused_before_it_runs(server, tmp_path):
    """The embedded server unpickles /update_weights_from_tensor with an allowlist (CPU tensors only): SGLang's wire
    format, without running whatever the pickle names."""
    marker = tmp_path / "ran"
    payload = base64.b64encode(pickle.dumps([("model.norm.weight", _RunsAShellCommand(marker))])).decode()
    with WeightServers([server.spec.url]).session():
        status, answer = post(server, "/update_weights_from_tensor", {"serialized_named_tensors": [payload]})
    assert status == 400 and "refuses to load posix.system" in json.loads(answer)["error"]["message"]
    assert not marker.exists()


# ---- 5. smaller: non-finite parameters, deep JSON, short per-request lists, duplicate rids ----------------------

@pytest.mark.parametrize("raw, message", [
    (b'{"input_ids": [1, 2], "sampling_params": {"temperature": Infinity}}', "temperature must be finite"),
    (b'{"input_ids": [1, 2], "sampling_params": {"top_p": NaN}}', "top_p must be finite"),
    (b'{"input_ids": [1, 2], "sampling_params": {"repetition_penalty": 0}}', "repetition_penalty must be in (0, 2]"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"input_ids": [[1, 2], [3, 4], [5, 6]], "return_logprob": [true, false]}', "return_logprob has 2 entries"),
    (b'{"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 1e999}}', "max_new_tokens must be an integer"),
])
def test_malformed_generation_requests_get_400_naming_the_field(server, raw, message):
    status, body = post(server, "/generate", raw)
    assert status == 400 and message in json.loads(body)["error"]["message"], body[:300]


def test_responses_are_valid_json_even_where_a_log_prob_is_minus_infinity(server):
    """Every token but one banned (min_new_tokens bans eos), asked for every log-prob: SGLang (orjson) sends null where
    a value is not finite; bare -Infinity would make the response invalid JSON."""
    vocab = json.loads((Path(server.spec.model_path) / "config.json").read_text())["vocab_size"]
    status, body = post(server, "/generate", {
        "input_ids": PROMPT, "return_logprob": True, "top_logprobs_num": vocab,
        "sampling_params": {"max_new_tokens": 2, "min_new_tokens": 2, "temperature": 0.0}})
    assert status == 200
    json.loads(body, parse_constant=lambda c: pytest.fail(f"bare {c} in the response"))


def test_a_second_request_with_an_in_flight_rid_is_refused_and_the_first_unharmed(server):
    """Two requests under one rid used to share its aborts (a disconnect of one aborted the other). Generation is
    paused (in place) while the duplicates arrive, so the first request is surely still in flight."""
    async def go():
        client = SGLangClient([server.spec.url])
        try:
            await client.request(server.spec.url, "/pause_generation", {"mode": "in_place"})
            first = asyncio.create_task(client.generate(PROMPT, {"max_new_tokens": 64, "ignore_eos": True},
                                                        rid="shared"))
            await asyncio.sleep(0.3)
            async with aiohttp.ClientSession() as session:
                duplicates = []
                for stream in (False, True):
                    async with session.post(server.spec.url + "/generate", json={
                            "input_ids": PROMPT, "rid": "shared", "stream": stream}) as response:
                        duplicates.append((response.status, await response.text()))
        finally:
            await client.request(server.spec.url, "/continue_generation", {})
        try:
            return duplicates, await first
        finally:
            await client.close()

    (plain, streamed), first = asyncio.run(go())
    assert plain[0] == 400 and "rid 'shared' is already in flight" in json.loads(plain[1])["error"]["message"]
    assert streamed[0] == 200 and "rid 'shared' is already in flight" in streamed[1]  # SGLang's streamed error
    assert first["meta_info"]["finish_reason"]["type"] == "length" and len(first["output_ids"]) == 64


def test_the_server_still_serves_after_the_hostile_requests(server):
    with pytest.raises(ServerError):  # a final sanity check that errors still come back as errors
        asyncio.run(_with_client(server, lambda c: c.request(server.spec.url, "/generate", {"input_ids": []})))
    assert generate(server, {"input_ids": PROMPT, "sampling_params": GREEDY})["meta_info"]["finish_reason"]


async def _with_client(server, fn):
    client = SGLangClient([server.spec.url])
    try:
        return await fn(client)
    finally:
        await client.close()
