"""Tools that call services, loaded from verl's tool YAML unchanged: SandboxFusionTool against `rlpost serve sandbox`,
SearchTool against a loopback double of Search-R1's retrieval server (which needs a GPU index and cannot run here),
retries, and the limits (verl's rate_limit in flight, rlpost's requests_per_second), shared across Ray workers
(rlpost.cluster.shared_rate_limit)."""

import asyncio
import contextlib
import threading
import time

import pytest
from aiohttp import web

from rlpost.net import free_port
from rlpost.tools import load_tools
from rlpost.tools.rate_limit import TokenBucket

SANDBOX_TOOLS = """
tools:
  - class_name: "verl.tools.sandbox_fusion_tools.SandboxFusionTool"
    config:
      sandbox_fusion_url: "{url}"
      num_workers: 10
      enable_global_rate_limit: true
      rate_limit: 10
      default_timeout: 30
      default_language: "python"
      memory_limit_mb: 1024
      type: native
    tool_schema:
      type: "function"
      function:
        name: "code_interpreter"
        description: "A tool for executing code."
        parameters:
          type: "object"
          properties:
            code:
              type: "string"
              description: "The code to execute."
          required: ["code"]
"""
SEARCH_TOOLS = """
tools:
  - class_name: verl.tools.search_tool.SearchTool
    config:
      retrieval_service_url: {url}
      num_workers: 120
      rate_limit: 120
      timeout: 30
      type: native
      {extra}
    tool_schema:
      type: function
      function:
        name: search
        description: Searches the web for relevant information based on the given query.
        parameters:
          type: object
          properties:
            query_list:
              type: array
              item:
                type: string
              description: A list of fully-formed semantic queries.
          required:
            - query_list
"""


def load(tmp_path, text: str, **values):
    (tmp_path / "tools.yaml").write_text(text.format(**values))
    return load_tools(tmp_path / "tools.yaml")


def execute(tool, *calls: dict) -> list[str]:
    async def go():
        instance, _ = await tool.create()
        answers = [await tool.execute(instance, call) for call in calls]
        await tool.release(instance)
        return [response.text for response, _, _ in answers]

    return asyncio.run(go())


def test_sandbox_tool_from_verls_yaml_runs_code_in_the_local_sandbox(sandbox, tmp_path):
    tool = load(tmp_path, SANDBOX_TOOLS, url=f"{sandbox.url}/run_code")["code_interpreter"]
    printed, crashed, looped, shell, empty = execute(
        tool, {"code": "print(2 ** 10)"}, {"code": "1 / 0"}, {"code": "while True: pass", "timeout": 1},
        {"code": "echo $((3 + 4))", "language": "bash"}, {"code": ""})
    assert printed == "1024\n"
    assert "ZeroDivisionError" in crashed and crashed.startswith("Traceback")
    assert looped.endswith("Error: time limit exceeded (1 s).")
    assert shell == "7\n"
    assert empty.startswith("Error: the 'code' argument")


def test_sandbox_tool_config_mistakes_fail_at_load(tmp_path):
    with pytest.raises(ValueError, match=r"tools\[0\]: tool 'code_interpreter': unknown config keys \['num_worker'\]"):
        load(tmp_path, SANDBOX_TOOLS.replace("num_workers", "num_worker"), url="http://127.0.0.1:1/run_code")
    with pytest.raises(ValueError, match="full /run_code URL"):
        load(tmp_path, SANDBOX_TOOLS, url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match=r"num_workers must be an integer >= 1, got 0"):
        load(tmp_path, SANDBOX_TOOLS.replace("num_workers: 10", "num_workers: 0"), url="http://127.0.0.1:1/run_code")
    with pytest.raises(ValueError, match=r"default_timeout must be a number of seconds > 0"):
        load(tmp_path, SANDBOX_TOOLS.replace("default_timeout: 30", "default_timeout: -1"),
             url="http://127.0.0.1:1/run_code")


def test_an_unreachable_sandbox_is_retried_then_reported_to_the_model(tmp_path):
    text = SANDBOX_TOOLS.replace("type: native", "type: native\n      max_retries: 2\n      retry_delay_s: 0.01")
    tool = load(tmp_path, text, url=f"http://127.0.0.1:{free_port()}/run_code")["code_interpreter"]
    [answer] = execute(tool, {"code": "print(1)"})
    assert answer.startswith("Error: the code sandbox is unavailable") and "no answer after 3 attempt(s)" in answer


@contextlib.contextmanager
def retriever(corpus: list[str], fail_first: int = 0, canned: dict | None = None):
    """Search-R1's /retrieve, field for field: {"queries", "topk", "return_scores"} in; {"result": [[{"document":
    {"id", "contents"}, "score"}]]} out, a passage's title on its first line. Ranks by shared words, or answers
    `canned` whatever the queries."""
    seen: list[dict] = []

    async def retrieve(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        if len(seen) <= fail_first:
            return web.Response(status=503, text="busy")
        if canned is not None:
            return web.json_response(canned)
        results = []
        for query in body["queries"]:
            words = set(query.lower().split())
            ranked = sorted(range(len(corpus)), key=lambda i: -len(words & set(corpus[i].lower().split())))
            docs = [{"id": str(i), "contents": corpus[i]} for i in ranked[: body.get("topk", 3)]]
            if body.get("return_scores"):
                docs = [{"document": d, "score": float(len(words & set(d["contents"].lower().split())))} for d in docs]
            results.append(docs)
        return web.json_response({"result": results})

    app = web.Application()
    app.router.add_post("/retrieve", retrieve)
    loop, port = asyncio.new_event_loop(), free_port()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/retrieve", seen
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


CORPUS = ['"Paris"\nParis is the capital of France.', '"Berlin"\nBerlin is the capital of Germany.',
          '"Nile"\nThe Nile is a river in Africa.']


def test_search_tool_from_verls_yaml_speaks_search_r1s_protocol(tmp_path):
    import json

    with retriever(CORPUS, fail_first=1) as (url, seen):
        tool = load(tmp_path, SEARCH_TOOLS, url=url, extra="topk: 2\n      retry_delay_s: 0.01")["search"]
        [answer] = execute(tool, {"query_list": ["capital of France", "river in Africa"]})
    assert seen[-1] == {"queries": ["capital of France", "river in Africa"], "topk": 2, "return_scores": True}
    assert len(seen) == 2  # the 503 was retried
    first, second = json.loads(answer)["result"].split("\n---\n")
    assert first.startswith('Doc 1 (Title: "Paris")\nParis is the capital of France.\n\nDoc 2 (Title: ')
    assert second.startswith('Doc 1 (Title: "Nile")\nThe Nile is a river in Africa.\n\nDoc 2 (Title: ')


# A retrieval answer for three queries: two passages (the second's text spans two lines, its title is not ASCII),
# one passage, and none.
RETRIEVED = {"result": [
    [{"document": {"id": "12", "contents": '"Lyon"\nLyon is a city in France.'}, "score": 0.91},
     {"document": {"id": "40", "contents": '"Rhône"\nThe Rhône is a river.\nIt flows through Lyon.'}, "score": 0.7}],
    [{"document": {"id": "3", "contents": '"Nile"\nThe Nile is a river in Africa.'}, "score": 0.88}],
    [],
]}
# What verl's SearchTool returns for it, written out by hand: a JSON object with one key "result" (non-ASCII
# characters not escaped); per query, "Doc i (Title: <first line, quotes kept>)\n<the other lines>" blocks with a
# blank line between them; queries joined by "\n---\n", so the third, with no passage, leaves an empty tail.
EXPECTED = ('{"result": "Doc 1 (Title: \\"Lyon\\")\\nLyon is a city in France.\\n\\n'
            'Doc 2 (Title: \\"Rhône\\")\\nThe Rhône is a river.\\nIt flows through Lyon.'
            '\\n---\\nDoc 1 (Title: \\"Nile\\")\\nThe Nile is a river in Africa.\\n---\\n"}')


def test_search_tool_text_is_verls_for_the_same_retrieval_answer(tmp_path):
    with retriever([], canned=RETRIEVED) as (url, _):
        tool = load(tmp_path, SEARCH_TOOLS, url=url, extra="")["search"]
        results = execute(tool, {"query_list": ["lyon", "nile", "nothing"]}, {"query_list": "lyon"},
                          {"query_list": []}, {"query_list": [3]})
    assert results[0] == EXPECTED
    missing = '{"result": "Error: \'query_list\' is missing, empty, or not a list in parameters."}'
    assert results[1] == results[2] == missing
    assert results[3] == '{"result": "Error: \'query_list\' must hold query strings only."}'
    with retriever([], canned={"result": []}) as (url, _):
        [none] = execute(load(tmp_path, SEARCH_TOOLS, url=url, extra="")["search"], {"query_list": ["x"]})
    assert none == '{"result": "No search results found."}'
    with retriever([], canned={"result": [[{"id": "1", "contents": '"A"\nno document key'}]]}) as (url, _):
        [odd] = execute(load(tmp_path, SEARCH_TOOLS, url=url, extra="")["search"], {"query_list": ["x"]})
    assert odd == '{"result": "Error processing search results: \'document\'"}'


def test_search_tool_defaults_and_metrics_are_verls(tmp_path):
    from rlpost.tools.search import SearchTool

    tool = SearchTool({"retrieval_service_url": "http://127.0.0.1:1/retrieve"}, None)
    assert {k: tool.settings[k] for k in ("topk", "timeout", "num_workers", "rate_limit",
                                          "enable_global_rate_limit")} == {
        "topk": 3, "timeout": 30, "num_workers": 120, "rate_limit": 120, "enable_global_rate_limit": True}
    assert tool.tool_schema.model_dump()["function"]["name"] == "search"
    assert tool.tool_schema.parameters["properties"]["query_list"] == {
        "type": "array", "items": {"type": "string"}, "description": "Fully formed queries; each gets its own results"}
    assert tool.tool_schema.parameters["required"] == ["query_list"]
    with retriever([], canned=RETRIEVED) as (url, _):
        tool = load(tmp_path, SEARCH_TOOLS, url=url, extra="")["search"]

        async def go():
            instance, _ = await tool.create(ground_truth={"target": ["Lyon"]}, question="q", data_source="s")
            return await tool.execute(instance, {"query_list": ["a", "b", "c"]})

        _, reward, metrics = asyncio.run(go())
    assert reward == 0.0
    assert metrics == {"query_count": 3, "status": "success", "total_results": 3, "api_request_error": None}
    with pytest.raises(ValueError, match=r"unknown config keys \['top_k'\]"):
        load(tmp_path, SEARCH_TOOLS, url="http://127.0.0.1:1/retrieve", extra="top_k: 2")
    with pytest.raises(ValueError, match="retrieval_service_url must be an http"):
        SearchTool({}, None)


def test_an_unreachable_retriever_is_reported_as_verls_search_error(tmp_path):
    text = SEARCH_TOOLS.format(url=f"http://127.0.0.1:{free_port()}/retrieve",
                               extra="max_retries: 1\n      retry_delay_s: 0.01")
    (tmp_path / "tools.yaml").write_text(text)
    [answer] = execute(load_tools(tmp_path / "tools.yaml")["search"], {"query_list": ["x"]})
    assert answer.startswith('{"result": "Search error: API Call Failed: ') and "2 attempt(s)" in answer


def test_token_bucket_admits_bursts_then_the_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, capacity=3, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(5)] == [0.0, 0.0, 0.0, 0.5, 1.0]
    now[0] = 10.0  # refills up to capacity, no more
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]


def test_limits_are_shared_by_workers_across_processes():
    """requests_per_second is one token bucket for the job, rate_limit (verl's) one semaphore: two Ray workers
    together stay under each, and a caller that gives up waiting (a tool timeout) does not keep its slot."""
    import ray

    from rlpost.cluster.resources import connect

    @ray.remote(num_cpus=0)
    class Caller:
        def ready(self) -> bool:
            from rlpost.cluster.shared_rate_limit import share_rate_limits

            share_rate_limits()
            return True

        def paced(self, n: int) -> list[float]:
            from rlpost.tools.rate_limit import acquire

            async def go():
                out = []
                for _ in range(n):
                    await acquire("http://sandbox.example/run_code", rate=5.0, capacity=1)
                    out.append(time.time())
                return out

            return asyncio.run(go())

        def held(self, n: int, hold_s: float) -> list[tuple[float, float]]:
            from rlpost.tools.rate_limit import in_flight

            async def one():
                async with in_flight("http://retriever.example/retrieve", 2):
                    start = time.time()
                    await asyncio.sleep(hold_s)
                    return start, time.time()

            async def go():
                return await asyncio.gather(*(one() for _ in range(n)))

            return asyncio.run(go())

        def gives_up_then_gets_a_slot(self) -> bool:
            from rlpost.tools.rate_limit import in_flight

            async def wait_for_slot():
                async with in_flight("http://one-slot.example", 1):
                    return True

            async def go():
                async with in_flight("http://one-slot.example", 1):
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wait_for_slot(), 0.2)  # cancelled while waiting
                await asyncio.sleep(0.2)  # the cancelled waiter's slot, granted now, is handed back
                return await asyncio.wait_for(wait_for_slot(), 5)

            return asyncio.run(go())

    connect(None, 2)
    try:
        callers = [Caller.remote() for _ in range(2)]
        ray.get([c.ready.remote() for c in callers])
        per_worker = ray.get([c.paced.remote(6) for c in callers])
        spans = sum(ray.get([c.held.remote(3, 0.3) for c in callers]), [])
        assert ray.get(callers[0].gives_up_then_gets_a_slot.remote())
    finally:
        ray.shutdown()
    # 12 requests at 5/s with no burst take 11/5 s together, and the workers' turns interleave over all of it; with a
    # bucket each, a worker's 6 requests would take 1 s
    stamps = sorted(sum(per_worker, []))
    assert stamps[-1] - stamps[0] >= 2.2 - 0.05
    assert all(times[-1] - times[0] >= 1.6 for times in per_worker), per_worker
    # 6 requests of 0.3 s, 2 in flight for the job (a semaphore each would let 4 run): never more than 2 overlap
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2 and max(e for _, e in spans) - min(s for s, _ in spans) >= 0.9 - 0.05
