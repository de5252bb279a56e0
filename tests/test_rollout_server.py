"""Contract test: the async client against `rlpost serve engine` (started by the launcher, as a real process) on
every endpoint, with SGLang's field names."""

import asyncio
import json
import threading
import time

import pytest
import torch

from rlpost.models.safetensors_dir import SafetensorsDir
from rlpost.net import free_port
from rlpost.protocol.weight_group import backend_for, broadcast, join, leave
from rlpost.protocol.wire import ServerError
from rlpost.resharding.servers import WeightServers
from rlpost.rollout.client import SGLangClient
from rlpost.rollout.launcher import ServerProcess, ServerSpec, server_command
from rlpost.testing.tiny_models import make_tiny_checkpoint

GREEDY = {"max_new_tokens": 8, "temperature": 0.0}
PROMPT = [15, 27, 99, 140, 200, 33]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("server_models")
    return make_tiny_checkpoint("qwen2", root / "base"), make_tiny_checkpoint("qwen2", root / "other", seed=1)


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    spec = ServerSpec(str(models[0]), port=free_port(), dtype="float32", max_running_requests=16,
                      deterministic_inference=True)
    with ServerProcess(spec, tmp_path_factory.mktemp("logs") / "server.log") as process:
        process.wait_healthy(timeout_s=120)
        yield process


def run(coro):
    return asyncio.run(coro)


async def greedy_ids(client, prompt=PROMPT):
    return (await client.generate(prompt, GREEDY))["output_ids"]


def reference_greedy(path, prompt=PROMPT, n=8):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_generate_fields_batches_n_and_logprobs(server):
    async def go():
        async with SGLangClient([server.spec.url]) as client:
            single = await client.generate(PROMPT, {"max_new_tokens": 5, "ignore_eos": True}, return_logprob=True,
                                           logprob_start_len=0, return_text_in_logprobs=True, rid="one",
                                           priority=1)  # unknown top-level fields are ignored, as by SGLang
            batch = await client.generate([PROMPT, PROMPT[:3]], {"max_new_tokens": 3, "n": 2})
            text = await client.generate(text="How many apples?", sampling_params={"max_new_tokens": 2})
            return single, batch, text

    single, batch, text = run(go())
    meta = single["meta_info"]
    assert set(single) == {"text", "output_ids", "meta_info"} and len(single["output_ids"]) == 5
    assert meta["id"] == "one" and meta["finish_reason"] == {"type": "length", "length": 5}
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (len(PROMPT), 5)
    assert {"cached_tokens", "e2e_latency", "weight_version"} <= set(meta)
    assert [t[1] for t in meta["output_token_logprobs"]] == single["output_ids"]
    assert all(isinstance(t[0], float) and isinstance(t[2], str) for t in meta["output_token_logprobs"])
    assert meta["input_token_logprobs"][0][0] is None and len(meta["input_token_logprobs"]) == len(PROMPT)
    assert [t[1] for t in meta["input_token_logprobs"]] == PROMPT
    assert isinstance(batch, list) and len(batch) == 4 and all(len(b["output_ids"]) <= 3 for b in batch)
    assert text["meta_info"]["prompt_tokens"] > 0 and len(text["output_ids"]) <= 2


def test_greedy_output_matches_transformers_over_http(server, models):
    assert run(_with_client(server, greedy_ids)) == reference_greedy(models[0])


async def _with_client(server, fn, *args):
    async with SGLangClient([server.spec.url]) as client:
        return await fn(client, *args)


def test_streaming_sends_growing_chunks_then_done(server):
    async def go(client):
        return [chunk async for chunk in client.generate_stream(PROMPT, {"max_new_tokens": 4, "ignore_eos": True})]

    chunks = run(_with_client(server, go))
    assert [len(c["output_ids"]) for c in chunks] == [1, 1, 1, 1]  # new ids per chunk, text cumulative
    assert all(chunks[i + 1]["text"].startswith(chunks[i]["text"]) for i in range(3))
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 4}
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])


def test_a_streamed_request_that_fails_raises_the_servers_message(server):
    """SGLang checks a streamed request after the stream opened: the error comes as a `data: {"error": ...}` chunk
    with HTTP 200, which the client used to yield as if it were output."""
    async def go(client):
        with pytest.raises(ServerError, match="HTTP 400.*outside the vocabulary"):
            async for _ in client.generate_stream([1, 10 ** 7], {"max_new_tokens": 2}):
                pass

    run(_with_client(server, go))


def _prompts(*prompts: list[int]):
    from rlpost.batch import Batch

    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return Batch(tensors={"prompt_ids": ids, "prompt_mask": mask},
                 fields={"uid": [f"p{i}" for i in range(len(prompts))]})


def test_seeded_samples_differ_and_replay_under_sglangs_seed_protocol(server):
    """With deterministic inference SGLang copies a request's sampling params, seed included, to its n samples, so
    a seeded n=4 request answers 4 identical responses (GRPO advantages all zero). rlpost asks for each sample with
    its own seed: the 4 differ, and the same seeds replay them exactly."""
    from rlpost.rollout.generate import generate

    sampling = {"temperature": 1.0, "ignore_eos": True}

    async def go(client):
        shared = await client.generate(PROMPT, {**sampling, "max_new_tokens": 12, "n": 4, "sampling_seed": 7})
        runs = [await generate(client, _prompts(PROMPT, PROMPT[:4]), n=4, sampling=sampling, max_new_tokens=12,
                               seed=3, key=("train", 0, 0)) for _ in range(2)]
        return shared, runs

    shared, (first, second) = run(_with_client(server, go))
    assert len({tuple(a["output_ids"]) for a in shared}) == 1
    for group in (first[:4], first[4:]):
        assert len({tuple(s.response_ids) for s in group}) == 4
    assert [s.response_ids for s in first] == [s.response_ids for s in second]


def test_without_deterministic_inference_seeds_are_ignored_as_by_sglang(models):
    from rlpost.rollout.engine.engine import Engine
    from rlpost.rollout.engine.server import HTTPThread

    engine = Engine(models[0], dtype="float32", max_running=8).start()
    port = free_port()
    http = HTTPThread(engine, "127.0.0.1", port)
    params = {"temperature": 1.0, "ignore_eos": True, "max_new_tokens": 16, "sampling_seed": 7}

    async def go():
        async with SGLangClient([f"http://127.0.0.1:{port}"]) as client:
            info = await client.request(client.servers[0], "/server_info", method="GET")
            return info, [(await client.generate(PROMPT, params))["output_ids"] for _ in range(2)]

    try:
        info, (a, b) = run(go())
    finally:
        http.stop()
        engine.shutdown()
    assert info["enable_deterministic_inference"] is False and a != b


def test_stop_string_is_trimmed_from_the_text(server):
    async def go(client):
        full = await client.generate(PROMPT, {**GREEDY, "ignore_eos": True})
        stop = full["text"][3:6] if full["text"][3:6].strip() else full["text"][2:6]
        cut = await client.generate(PROMPT, {**GREEDY, "ignore_eos": True, "stop": stop})
        kept = await client.generate(PROMPT, {**GREEDY, "ignore_eos": True, "stop": [stop], "no_stop_trim": True})
        return full, stop, cut, kept

    full, stop, cut, kept = run(_with_client(server, go))
    assert cut["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert stop not in cut["text"] and full["text"].startswith(cut["text"])
    assert kept["text"].endswith(stop) or stop in kept["text"]


def test_status_endpoints(server, models):
    async def go(client):
        url = server.spec.url
        return (await client.request(url, "/health", method="GET"),
                await client.request(url, "/health_generate", method="GET"),
                await client.request(url, "/get_model_info", method="GET"),
                await client.request(url, "/server_info", method="GET"),
                await client.request(url, "/get_server_info", method="GET"),  # deprecated in SGLang 0.5.23
                await client.request(url, "/flush_cache", {}))

    health, health_generate, info, server_info, deprecated, flushed = run(_with_client(server, go))
    assert health is None and health_generate is None
    assert info["model_path"] == str(models[0]) and info["is_generation"] is True
    assert server_info["max_running_requests"] == 16 and server_info["tp_size"] == 1 and "Cache flushed" in flushed
    assert server_info["enable_deterministic_inference"] is True and deprecated.keys() == server_info.keys()


def test_weight_update_from_tensor_disk_and_distributed_change_outputs(server, models):
    base, other = models
    expected_other, expected_base = reference_greedy(other), reference_greedy(base)
    reader = SafetensorsDir(other)
    named = [(n, reader.get(n)) for n in reader.files]
    weights = WeightServers([server.spec.url])

    def greedy():
        return run(_with_client(server, greedy_ids))

    def version():
        return run(_with_client(server, lambda c: c.request(server.spec.url, "/get_model_info", method="GET")))

    before = greedy()
    with weights.session():
        weights.update_from_tensor(named, flush_cache=True, version="v1")
    tensor, v1 = greedy(), version()["weight_version"]
    weights.update_from_disk(str(base))  # no session needed, as in SGLang
    disk = greedy()
    port, holder = free_port(), {}
    joined = threading.Thread(target=lambda: holder.update(group=join("127.0.0.1", port, 0, 2, "push", "gloo")))
    joined.start()
    weights.init_group("127.0.0.1", port, "push", "gloo")
    joined.join()
    sender = threading.Thread(target=lambda: [broadcast(holder["group"], t.contiguous()) for _, t in named])
    sender.start()
    with weights.session():
        weights.update_from_distributed(named, "push", flush_cache=True, version="v2")
    sender.join()
    distributed = greedy()
    weights.destroy_group("push")
    leave(holder["group"])
    weights.update_from_disk(str(base))
    restored = greedy()
    with pytest.raises(ServerError, match="HTTP 400.*unknown weight 'model.bogus'"), weights.session():
        weights.update_from_tensor([("model.bogus", torch.zeros(2))], flush_cache=True, version="v3")
    assert before == expected_base and v1 == "v1"
    assert tensor == expected_other == distributed != expected_base
    assert disk == expected_base == restored


def test_weight_group_backend_follows_the_device_and_the_servers():
    """Split placement with SGLang's GPU servers needs NCCL (a CUDA trainer, before: gloo always); the embedded
    engine runs on CPU and joins gloo groups, whatever the trainer's device."""
    assert backend_for("sglang", torch.device("cuda", 0)) == "nccl"
    assert backend_for("sglang", torch.device("cpu")) == "gloo"
    assert backend_for("embedded", torch.device("cuda", 0)) == "gloo"


def test_the_embedded_server_refuses_nccl_as_sglang_would_send_it(server):
    """A request without `backend` means nccl, as in SGLang, and the CPU-only engine refuses it with the reason
    instead of hanging in a rendezvous."""
    body = {"master_address": "127.0.0.1", "master_port": free_port(), "rank_offset": 1, "world_size": 2}
    with pytest.raises(ServerError, match="backend 'nccl': the embedded engine runs on CPU"):
        run(_with_client(server, lambda c: c.request(server.spec.url, "/init_weights_update_group", body)))


def test_a_refused_broadcast_fails_at_once_instead_of_waiting_in_the_collective(server):
    """The server joins the group, then refuses an announcement it cannot allocate (int64): the trainer's side
    raises the server's reason while its broadcast is still waiting for a receiver that never comes."""
    from rlpost.resharding.transports import BroadcastTransport, push_buckets

    transport = BroadcastTransport(WeightServers([server.spec.url]), "127.0.0.1", free_port(), "gloo")
    start = time.monotonic()
    with pytest.raises(ServerError, match="dtype 'int64' is not one of"):
        push_buckets([[("model.norm.weight", torch.zeros(64, dtype=torch.int64))]], transport, "v")
    assert time.monotonic() - start < 30
    weights = WeightServers([server.spec.url])
    with weights.session():  # the failed push closed its session
        pass


def test_weight_updates_outside_a_session_are_refused_as_by_sglang(server, models):
    """SGLang 0.5.23 answers 400 to tensor and broadcast updates outside /begin_weight_update ../end_weight_update
    (a client that never opens one dies at its first sync), and refuses a second session while one is open."""
    weights = WeightServers([server.spec.url])
    named = [("model.norm.weight", SafetensorsDir(models[0]).get("model.norm.weight"))]
    with pytest.raises(ServerError, match="HTTP 400.*must run between /begin_weight_update and /end_weight_update"):
        weights.update_from_tensor(named, flush_cache=True, version="outside")
    with pytest.raises(ServerError, match="HTTP 400.*must run between"):
        weights.update_from_distributed(named, "weight_update_group", flush_cache=True, version="outside")
    with weights.session():
        weights.update_from_tensor(named, flush_cache=True, version="inside")
        with pytest.raises(ServerError, match="session is already open"):
            run(_with_client(server, lambda c: c.request(server.spec.url, "/begin_weight_update", {})))
    with pytest.raises(ServerError, match="no weight-update session is open"):
        run(_with_client(server, lambda c: c.request(server.spec.url, "/end_weight_update", {})))
    version = run(_with_client(server, lambda c: c.request(server.spec.url, "/model_info", method="GET")))
    assert version["weight_version"] == "inside"


def test_release_and_resume_memory_then_reload(server, models):
    async def go(client):
        before = await greedy_ids(client)
        await client.release_memory()
        refused = await client.generate(PROMPT, GREEDY)
        await client.resume_memory()
        return before, refused

    before, refused = run(_with_client(server, go))
    WeightServers([server.spec.url]).update_from_disk(str(models[0]))
    after = run(_with_client(server, greedy_ids))
    assert refused["meta_info"]["finish_reason"]["type"] == "abort"
    assert "memory is released" in refused["meta_info"]["finish_reason"]["message"]
    assert after == before


def test_pause_continue_and_abort(server):
    async def go(client):
        await client.pause("in_place")
        try:
            held = asyncio.create_task(client.generate(PROMPT, {"max_new_tokens": 3}, rid="held"))
            doomed = asyncio.create_task(client.generate(PROMPT, {"max_new_tokens": 3}, rid="doomed"))
            for _ in range(100):  # until the request has reached the server
                await client.abort("doomed")
                done, _ = await asyncio.wait([doomed], timeout=0.1)
                if done:
                    break
            assert not held.done()
            aborted = await asyncio.wait_for(doomed, timeout=5)
        finally:
            await client.resume()
        return await asyncio.wait_for(held, timeout=30), aborted

    held, aborted = run(_with_client(server, go))
    assert held["meta_info"]["finish_reason"]["type"] in ("length", "stop")
    assert aborted["meta_info"]["finish_reason"]["type"] == "abort"


def test_chat_completions_shape(server):
    tools = [{"type": "function", "function": {"name": "calc", "description": "add", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}}]

    async def go(client):
        return await client.chat([{"role": "user", "content": "What is 2+3?"}], tools=tools, max_tokens=6,
                                 temperature=0, logprobs=True)

    answer = run(_with_client(server, go))
    assert answer["object"] == "chat.completion" and len(answer["choices"]) == 1
    choice = answer["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("length", "stop")
    assert len(choice["logprobs"]["content"]) == answer["usage"]["completion_tokens"]
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]


def test_bad_requests_get_400_with_a_message(server):
    async def go(client):
        errors = []
        for payload in [{"input_ids": PROMPT, "sampling_params": {"temprature": 1}},
                        {"input_ids": PROMPT, "text": "both"}, {"input_ids": [1, 10 ** 7]},
                        {"input_ids": PROMPT, "sampling_params": {"top_p": 2}}, {"input_ids": PROMPT, "rid": 5},
                        {"input_ids": [True, False]}]:
            with pytest.raises(ServerError) as info:
                await client.request(server.spec.url, "/generate", payload)
            errors.append((info.value.status, info.value.message))
        with pytest.raises(ServerError) as info:
            await client.request(server.spec.url, "/v1/chat/completions", {"messages": []})
        errors.append((info.value.status, info.value.message))
        return errors

    errors = run(_with_client(server, go))
    assert all(status == 400 for status, _ in errors)
    assert "did you mean 'temperature'" in errors[0][1] and "exactly one of" in errors[1][1]
    assert "outside the vocabulary" in errors[2][1] and "top_p" in errors[3][1] and "'rid' must be" in errors[4][1]
    assert "messages" in errors[6][1] and "input token id True is not an integer" in errors[5][1]


def test_200_concurrent_requests_all_answered(server):
    async def go(client):
        calls = [client.generate(PROMPT[: 2 + i % 5] + [i % 300], {"max_new_tokens": 1 + i % 7, "ignore_eos": True},
                                 rid=f"c{i}") for i in range(200)]
        return await asyncio.gather(*calls), await client.request(server.spec.url, "/health", method="GET")

    answers, health = run(_with_client(server, go))
    assert [a["meta_info"]["id"] for a in answers] == [f"c{i}" for i in range(200)]
    assert all(len(a["output_ids"]) == 1 + i % 7 for i, a in enumerate(answers)) and health is None


def test_client_balances_load_and_keeps_sessions_sticky():
    client = SGLangClient(["http://a:1", "http://b:2"])
    first, second = client.pick(), client.pick()
    assert {first.url, second.url} == {"http://a:1", "http://b:2"}
    first.outstanding = 3
    assert client.pick().url == second.url
    sticky = client.pick(session_id="conv")
    sticky.outstanding += 10
    assert client.pick(session_id="conv") is sticky
    sticky.down_since = time.monotonic()
    assert client.pick(session_id="conv") is not sticky


def test_client_retries_connection_errors_then_names_the_server():
    async def go():
        async with SGLangClient([f"http://127.0.0.1:{free_port()}"], max_retries=2, backoff_s=0.01) as client:
            with pytest.raises(ConnectionError, match="unreachable after 3 tries"):
                await client.generate(PROMPT)
            assert not client.servers[0].healthy
            with pytest.raises(TimeoutError, match="not healthy"):
                await client.wait_healthy(timeout_s=0.2, interval_s=0.05)

    run(go())


def test_launcher_commands_and_failure_report(tmp_path):
    spec = ServerSpec("/models/qwen", engine="sglang", port=30001, tp_size=2, mem_fraction_static=0.6,
                      enable_memory_saver=True, tool_call_parser="qwen25", base_gpu_id=2)
    cmd = server_command(spec)
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    for pair in [("--tp-size", "2"), ("--mem-fraction-static", "0.6"), ("--port", "30001"), ("--base-gpu-id", "2"),
                 ("--tool-call-parser", "qwen25"), ("--model-path", "/models/qwen")]:
        assert cmd[cmd.index(pair[0]) + 1] == pair[1]
    assert "--enable-memory-saver" in cmd
    # image prompts go as token ids with one pad per image: SGLang must keep them, not re-tokenise
    assert ServerProcess(spec).env["SGLANG_MM_AVOID_RETOKENIZE"] == "1"
    assert ServerProcess(ServerSpec("m")).env is None
    with pytest.raises(ValueError, match="tp_size 1"):
        server_command(ServerSpec("m", tp_size=2))
    broken = ServerProcess(ServerSpec(str(tmp_path / "missing"), port=free_port()), tmp_path / "broken.log")
    broken.start()
    with pytest.raises(RuntimeError, match="exited with code .* before becoming healthy"):
        broken.wait_healthy(timeout_s=60)


def test_stopping_the_launcher_kills_the_process_group(models, tmp_path):
    import os

    process = ServerProcess(ServerSpec(str(models[0]), port=free_port(), dtype="float32"), tmp_path / "s.log")
    process.start()
    process.wait_healthy(timeout_s=120)
    pgid = os.getpgid(process.process.pid)
    process.stop()
    assert process.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)


def test_chat_completions_return_parsed_tool_calls(tmp_path):
    from rlpost.testing.tiny_models import make_scripted_checkpoint

    call = '{"name": "calc", "arguments": {"x": 7}}'
    path = make_scripted_checkpoint(tmp_path / "scripted", ["<tool_call>", call, "</tool_call>"])
    tools = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]
    spec = ServerSpec(str(path), port=free_port(), dtype="float32")

    async def go(client):
        with_tools = await client.chat([{"role": "user", "content": "3+4?"}], tools=tools, temperature=0)
        without = await client.chat([{"role": "user", "content": "3+4?"}], temperature=0)
        return with_tools, without

    with ServerProcess(spec, tmp_path / "scripted.log") as process:
        process.wait_healthy(timeout_s=120)
        with_tools, without = run(_with_client(process, go))
    choice = with_tools["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    calls = choice["message"]["tool_calls"]
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "calc", {"x": 7})]
    assert without["choices"][0]["message"]["content"] == f"<tool_call>{call}</tool_call>"
    assert without["choices"][0]["finish_reason"] == "stop" and without["choices"][0]["message"]["tool_calls"] is None
