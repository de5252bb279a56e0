"""Soak test: `rlpost serve engine` and `rlpost serve sandbox`, started here as real processes on loopback, under
mixed benign and hostile traffic for a bounded time. Baseline: the same benign traffic with no hostile traffic, a
short phase at the start of the same run; the ratio reported is benign latency (p50/p95) under hostile load over it.

Benign engine traffic (--engine-clients clients): /generate with input_ids or text, some streamed, some n>1, some
batched, some with return_logprob, all with a sampling_seed. The engine runs with --enable-deterministic-inference, so
each answer must equal the reference recorded before the soak (the same request alone on the idle server), token for
token, and finish the same way (never abort). Benign sandbox traffic: python and bash programs with known stdout (and
a written file to fetch); every answer must be Success with exactly that output. Hostile clients meanwhile send
malformed, oversized and out-of-range requests, and programs that fork, hog memory, loop, flood stdout or fill /tmp;
their status codes are counted (a 5xx, a SandboxError or no answer counts as a failure). Every ~1 s each server's
health endpoint is read with a 2 s timeout, and every few seconds its resident memory (summed over its process tree).
Exit status 1 if a benign request was lost or answered wrongly, a health check failed, or a server's memory grew
over the second half of the run (end above 1.1 x mid-run + 32 MiB).

The engine runs as tests/test_rollout_server.py starts it (float32, 16 running requests, deterministic inference),
the sandbox as tests/conftest.py does. Seeded sampling proved batch-invariant on CPU (every answer equal to its
reference under load); --greedy makes the benign engine requests greedy for a model or build where it is not. The
oversized text (--large-text-mb; 0 leaves it out) goes at mid-soak or after --heavy-every s, then every --heavy-every
s. Both servers share the CPUs, so hostile sandbox programs slow the engine too. Requests time out after 120 s and none
starts past its phase's end, so a run ends at most ~2 minutes after its two phases.

    python benchmarks/soak.py [--duration 300] [--baseline-duration 30] [--model PATH] [--engine-clients 4]
                              [--sandbox-clients 2] [--hostile-clients 2] [--large-text-mb 20] [--heavy-every 120]
                              [--greedy] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import aiohttp
import psutil
import requests

from rlpost.net import free_port
from rlpost.rollout.launcher import ServerSpec, server_command

P = [[15, 27, 99, 140, 200, 33], [5, 6, 7, 8], [300, 301, 42, 17, 9, 11, 250]]
T = ["How many apples are left in the basket?", "The quick brown fox"]


def engine_benign(greedy: bool) -> dict[str, dict]:
    def sp(seed: int, **kw) -> dict:
        return {"max_new_tokens": 24, "temperature": 0.0 if greedy else 0.9, "top_p": 0.95, "sampling_seed": seed,
                **kw}

    return {
        "ids": {"input_ids": P[0], "sampling_params": sp(1)},
        "text": {"text": T[0], "sampling_params": sp(2)},
        "ids stream": {"input_ids": P[1], "sampling_params": sp(3), "stream": True},
        "text stream logprob": {"text": T[1], "sampling_params": sp(4), "stream": True, "return_logprob": True},
        "ids n=3": {"input_ids": P[2], "sampling_params": sp(5, n=3)},
        "ids logprob": {"input_ids": P[0], "sampling_params": sp(6), "return_logprob": True},
        "batch stream n=2": {"input_ids": [P[1], P[2]], "sampling_params": sp(7, n=2), "stream": True},
        "text batch": {"text": T, "sampling_params": sp(8, top_k=20)},
    }


SANDBOX_BENIGN = {  # name: (body, stdout, fetched files: base64 of "hello file\n" and of "HELLO FILE\n")
    "py compute": ({"language": "python", "code": "print(sum(i * i for i in range(1000)))"}, "332833500\n", {}),
    "py stdin": ({"language": "python", "code": "import sys\nprint(sys.stdin.read().strip()[::-1])",
                  "stdin": "soak test"}, "tset kaos\n", {}),
    "bash arith": ({"language": "bash", "code": "echo $((6 * 7))"}, "42\n", {}),
    "bash files": ({"language": "bash", "code": "tr a-z A-Z < in.txt > out.txt; wc -c < in.txt",
                    "files": {"in.txt": "aGVsbG8gZmlsZQo="}, "fetch_files": ["out.txt"]},
                   "11\n", {"out.txt": "SEVMTE8gRklMRQo="}),
}


def engine_hostile(large_mb: int) -> dict[str, tuple[str, object]]:
    """kind: (path, body); a body is bytes, a callable making bytes, or None for the special cases."""
    def j(obj) -> bytes:
        return json.dumps(obj).encode()

    short = {"max_new_tokens": 4}
    words = "the quick brown fox jumps over the lazy dog. " * (large_mb * 2**20 // 45)
    big = json.dumps({"text": words, "sampling_params": short}).encode()
    return {
        "malformed JSON": ("/generate", b'{"input_ids": [1, 2,'),
        "nested JSON 100k": ("/generate", b"[" * 100_000 + b"]" * 100_000),
        "input_ids booleans": ("/generate", j({"input_ids": [1, True, False], "sampling_params": short})),
        "input_ids negative": ("/generate", j({"input_ids": [5, -1, 7], "sampling_params": short})),
        "input_ids huge": ("/generate", j({"input_ids": [5, 2**64 + 1], "sampling_params": short})),
        **({f"text {large_mb} MB (heavy)": ("/generate", big)} if large_mb else {}),
        "temperature Infinity": ("/generate", b'{"input_ids": [1, 2, 3], "sampling_params": '
                                              b'{"temperature": Infinity, "max_new_tokens": 4}}'),
        "top_p NaN": ("/generate", b'{"input_ids": [1, 2, 3], "sampling_params": {"top_p": NaN}}'),
        "unknown sampling field": ("/generate", j({"input_ids": [1, 2], "sampling_params": {"temprature": 0.5}})),
        "short return_logprob list": ("/generate", j({"input_ids": [[1, 2], [3, 4], [5, 6]],
                                                      "sampling_params": short, "return_logprob": [True]})),
        "duplicate rids": ("/generate", lambda: j({"input_ids": [[1, 2], [3, 4]], "sampling_params": short,
                                                   "rid": [f"dup-{uuid.uuid4().hex}"] * 2})),
        "disconnect mid-stream": ("/generate", None),
        "update_weights garbage": ("/update_weights_from_tensor", None),
    }


SANDBOX_HOSTILE = {
    "fork bomb": {"language": "bash", "code": ":(){ :|:& };:; sleep 4", "run_timeout": 5},
    "memory hog": {"language": "python", "code": "x = []\nwhile True:\n    x.append(bytearray(64 << 20))",
                   "memory_limit_MB": 512},
    "infinite loop": {"language": "python", "code": "while True:\n    pass", "run_timeout": 2},
    "100 MB output": {"language": "python", "code": "import sys\nsys.stdout.write('x' * (100 << 20))"},
    "many files in /tmp": {"language": "python", "run_timeout": 10, "code":
                           "for i in range(200000):\n    open(f'/tmp/f{i}', 'w').write('x' * 64)"},
    "reach the launcher": {"language": "python", "code": (
        "import ctypes, os\nlibc = ctypes.CDLL(None)\npidfd = os.pidfd_open(os.getppid())\n"
        "got = [n for n in range(3, 32) if libc.syscall(438, pidfd, n, 0) >= 0]\n"
        "got += [n for n in range(3, 32) if os.path.exists(f'/proc/{os.getppid()}/fd/{n}')]\n"
        "print(got)\nos._exit(0 if got else 3)")},
    "memory across processes": {"language": "python", "memory_limit_MB": 256, "run_timeout": 10, "code": (
        "import os, time\nfds = [os.memfd_create(str(i)) for i in range(6)]\n"
        "[os.write(fd, b'm' * (50 << 20)) for fd in fds]\n"
        "for i in range(4):\n    if os.fork() == 0:\n        b = bytearray(200 << 20)\n"
        "        b[::4096] = b'1' * len(b[::4096])\n        time.sleep(2)\n        os._exit(0)\ntime.sleep(3)")},
    "invalid UTF-8 body": b'{"language": "python", "code": "print(1)\xff\xfe\x80"}',
    "nested JSON 100k": b"[" * 100_000 + b"]" * 100_000,
}


class Phase:
    """Benign figures of one server in one phase."""

    def __init__(self):
        self.sent = self.answered = self.correct = self.lost = 0
        self.latencies: list[float] = []
        self.problems: list[str] = []

    def figures(self) -> dict:
        lat = sorted(self.latencies)
        pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
        return {"sent": self.sent, "answered": self.answered, "correct": self.correct, "lost": self.lost,
                "wrong": self.answered - self.correct, "p50_ms": pct(0.5), "p95_ms": pct(0.95),
                "problems": self.problems[:10]}


async def engine_answer(session: aiohttp.ClientSession, url: str, body: dict) -> dict:
    """Output ids and finish types per sample (in index order) of one /generate; raises if the answer is cut."""
    async with session.post(f"{url}/generate", json=body) as resp:
        if resp.status != 200:
            return {"status": resp.status, "body": (await resp.text())[:200]}
        ids: dict[int, list[int]] = {}
        finish: dict[int, str | None] = {}
        logprob_ok = True
        if not body.get("stream"):
            data = await resp.json()
            for i, item in enumerate(data if isinstance(data, list) else [data]):
                ids[i], finish[i] = item["output_ids"], (item["meta_info"]["finish_reason"] or {}).get("type")
                if body.get("return_logprob"):
                    logprob_ok &= [t[1] for t in item["meta_info"]["output_token_logprobs"]] == item["output_ids"]
        else:
            done = False
            async for line in resp.content:
                if done := line.strip() == b"data: [DONE]":
                    break
                if not line.startswith(b"data: "):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"status": 200, "body": json.dumps(chunk["error"])[:200]}
                i = chunk.get("index", 0)
                ids.setdefault(i, []).extend(chunk["output_ids"])
                if chunk["meta_info"]["finish_reason"]:
                    finish[i] = chunk["meta_info"]["finish_reason"]["type"]
            if not done:
                raise ConnectionError("the stream ended without [DONE]")
        order = sorted(ids)
        return {"status": 200, "ids": [ids[i] for i in order], "finish": [finish.get(i) for i in order],
                "logprobs_match": logprob_ok}


async def sandbox_answer(session: aiohttp.ClientSession, url: str, body: dict) -> dict:
    async with session.post(f"{url}/run_code", json=body) as resp:
        data = await resp.json() if resp.status == 200 else {"status": f"HTTP {resp.status}"}
    run = data.get("run_result") or {}
    return {"status": data["status"], "stdout": run.get("stdout"), "files": data.get("files") or {}}


def sandbox_ok(answer: dict, expected: tuple) -> bool:
    _, stdout, files = expected
    return (answer["status"] == "Success" and answer["stdout"] == stdout
            and all(answer["files"].get(k) == v for k, v in files.items()))


async def benign_client(session, call, url, cases: dict, check, phase: Phase, deadline: float, rng) -> None:
    while time.monotonic() < deadline:
        name = rng.choice(sorted(cases))
        phase.sent += 1
        start = time.perf_counter()
        try:
            answer = await call(session, url, cases[name])
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as e:
            phase.lost += 1
            phase.problems.append(f"{name}: lost ({type(e).__name__}: {e})")
            continue
        except (ValueError, KeyError, TypeError) as e:  # an answer, but not in the protocol's shape
            answer = {"malformed": f"{type(e).__name__}: {e}"}
        phase.latencies.append(time.perf_counter() - start)
        phase.answered += 1
        if "malformed" not in answer and check(answer, name):
            phase.correct += 1
        else:
            phase.problems.append(f"{name}: wrong answer {json.dumps(answer)[:300]}")


async def hostile_once(session, url: str, kind: str, path: str, body) -> str:
    """The outcome of one hostile request: its HTTP status (with the run status for the sandbox), or error:..."""
    try:
        if kind == "disconnect mid-stream":
            body = {"input_ids": P[0], "stream": True, "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}
            async with session.post(f"{url}{path}", json=body) as resp:
                await resp.content.readline()
                resp.close()
                return str(resp.status)
        if kind == "update_weights garbage":
            (await session.post(f"{url}/begin_weight_update", json={})).release()
            garbage = base64.b64encode(random.randbytes(256)).decode()
            try:
                async with session.post(f"{url}{path}", json={"serialized_named_tensors": [garbage]}) as resp:
                    return str(resp.status)
            finally:
                (await session.post(f"{url}/end_weight_update", json={})).release()
        data = body() if callable(body) else body if isinstance(body, bytes) else json.dumps(body).encode()
        async with session.post(f"{url}{path}", data=data, headers={"Content-Type": "application/json"}) as resp:
            text = await resp.text(errors="replace")
            if path == "/run_code" and resp.status == 200:
                return f"200 {json.loads(text)['status']}"
            return str(resp.status)
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, ValueError) as e:
        return f"error: {type(e).__name__}"


async def hostile_client(session, url: str, cases: dict, outcomes: dict, deadline: float, offset: int,
                         heavy: dict, heavy_every: float) -> None:
    kinds = list(cases)
    i = offset
    while time.monotonic() < deadline:
        kind = kinds[i % len(kinds)]
        i += 1
        if "(heavy)" in kind:  # sent by one client at a time, at heavy["next"] and every heavy_every s after
            if time.monotonic() < heavy["next"]:
                continue
            heavy["next"] += heavy_every
        path, body = cases[kind] if isinstance(cases[kind], tuple) else ("/run_code", cases[kind])
        outcomes.setdefault(kind, []).append(await hostile_once(session, url, kind, path, body))
        await asyncio.sleep(0.2)


class Monitor(threading.Thread):
    """Health checks every ~1 s (2 s timeout) and the server's process-tree RSS every few seconds."""

    def __init__(self, url: str, pid: int):
        super().__init__(daemon=True)
        self.url, self.proc = url, psutil.Process(pid)
        self.stop, self.latencies, self.failures, self.rss = threading.Event(), [], [], []

    def sample_rss(self) -> float:
        total = 0
        with contextlib.suppress(psutil.NoSuchProcess):
            for p in [self.proc, *self.proc.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    total += p.memory_info().rss
        return total / 2**20

    def run(self) -> None:
        last_rss = 0.0
        while not self.stop.wait(max(0.0, 1.0 - (self.latencies[-1] if self.latencies else 0))):
            start = time.perf_counter()
            try:
                status = requests.get(self.url, timeout=2).status_code
                error = None if status == 200 else f"HTTP {status}"
            except requests.RequestException as e:
                error = type(e).__name__
            self.latencies.append(time.perf_counter() - start)
            if error:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {error}")
            if time.monotonic() - last_rss >= 3:
                self.rss.append(self.sample_rss())
                last_rss = time.monotonic()


def start(cmd: list[str], health: str, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if requests.get(health, timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{cmd[4]} server did not start:\n{log.read_text()[-3000:]}")


async def soak(args, engine_url: str, sandbox_url: str, monitors: dict) -> dict:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        cases = engine_benign(args.greedy)
        refs = {name: await engine_answer(session, engine_url, body) for name, body in cases.items()}
        for name, ref in refs.items():  # the reference run itself must be a clean answer
            if ref.get("status") != 200 or "abort" in ref["finish"] or not ref["logprobs_match"]:
                raise SystemExit(f"reference for '{name}' is not a clean answer: {ref}")
        for name, expected in SANDBOX_BENIGN.items():
            if not sandbox_ok(await sandbox_answer(session, sandbox_url, expected[0]), expected):
                raise SystemExit(f"sandbox case '{name}' fails on an idle server")
        for m in monitors.values():
            m.rss.append(m.sample_rss())  # after warm-up: the start figure
            m.start()
        rng = random.Random(0)
        sandbox_cases = {k: v[0] for k, v in SANDBOX_BENIGN.items()}
        phases: dict[str, dict[str, Phase]] = {}
        hostile: dict[str, dict[str, list[str]]] = {"engine": {}, "sandbox": {}}
        hostile_engine = engine_hostile(args.large_text_mb)
        for phase_name, seconds in (("baseline", args.baseline_duration), ("soak", args.duration)):
            deadline = time.monotonic() + seconds
            eng, sbx = phases.setdefault(phase_name, {"engine": Phase(), "sandbox": Phase()}).values()
            engine_check = lambda a, n: a == refs[n] and "abort" not in a["finish"]  # noqa: E731
            tasks = [benign_client(session, engine_answer, engine_url, cases, engine_check, eng, deadline,
                                   random.Random(rng.random())) for _ in range(args.engine_clients)]
            tasks += [benign_client(session, sandbox_answer, sandbox_url, sandbox_cases,
                                    lambda a, n: sandbox_ok(a, SANDBOX_BENIGN[n]), sbx, deadline,
                                    random.Random(rng.random())) for _ in range(args.sandbox_clients)]
            if phase_name == "soak":  # the first oversized text mid-soak (or after --heavy-every s)
                heavy = {"next": time.monotonic() + min(args.heavy_every, seconds / 2)}
                for k in range(args.hostile_clients):
                    tasks += [hostile_client(session, url, kinds, hostile[name], deadline, k * 5, heavy,
                                             args.heavy_every)
                              for name, url, kinds in (("engine", engine_url, hostile_engine),
                                                       ("sandbox", sandbox_url, SANDBOX_HOSTILE))]
            print(f"{phase_name}: {seconds:g} s, {len(tasks)} clients", flush=True)
            await asyncio.gather(*tasks)
    return {"phases": {p: {s: v.figures() for s, v in d.items()} for p, d in phases.items()}, "hostile": hostile}


def outcome_class(outcome: str) -> str:
    if outcome.startswith("error"):
        return "errors"
    return "SandboxError" if outcome.endswith("SandboxError") else outcome[0] + "xx"


def table(header: list[str], rows: list[list]) -> None:  # markdown; numbers right-aligned
    aligns = ("---:" if isinstance(v, (int, float)) else "---" for v in rows[0])
    print("\n| " + " | ".join(header) + " |\n|" + "|".join(aligns) + "|")
    for row in rows:
        print("| " + " | ".join(f"{v:.0f}" if isinstance(v, float) else str(v) for v in row) + " |")


def report(result: dict, monitors: dict) -> bool:
    ok = True
    for server in ("engine", "sandbox"):
        base, soaked = (result["phases"][p][server] for p in ("baseline", "soak"))
        ratio = result.setdefault("ratio", {})[server] = {q: soaked[q] / base[q] for q in ("p50_ms", "p95_ms")}
        print(f"\n### {server}")
        table(["phase", "benign sent", "answered", "correct", "wrong", "lost", "p50 ms", "p95 ms"],
              [[name] + [f[k] for k in ("sent", "answered", "correct", "wrong", "lost", "p50_ms", "p95_ms")]
               for name, f in (("baseline: benign only", base), ("soak: benign + hostile", soaked))]
              + [["soak / baseline", "", "", "", "", "", f"{ratio['p50_ms']:.2f}x", f"{ratio['p95_ms']:.2f}x"]])
        ok &= all(f["wrong"] == 0 and f["lost"] == 0 for f in (base, soaked))
        for line in (base["problems"] + soaked["problems"])[:5]:
            print(f"- benign problem: {line}")
        rows = []
        for kind, outcomes in result["hostile"][server].items():
            n = {c: sum(outcome_class(o) == c for o in outcomes)
                 for c in ("2xx", "4xx", "5xx", "errors", "SandboxError")}
            rows.append([kind, len(outcomes), n["2xx"] + n["SandboxError"], n["4xx"], n["5xx"], n["errors"],
                         n["5xx"] + n["errors"] + n["SandboxError"],
                         ", ".join(f"{o} x{outcomes.count(o)}" for o in sorted(set(outcomes)))])
        table(["hostile kind", "sent", "2xx", "4xx", "5xx", "errors", "failures", "outcomes"], rows)
        m = monitors[server]
        health = result.setdefault("health", {})[server] = {
            "checks": len(m.latencies), "failures": len(m.failures), "failure_log": m.failures[:20],
            "max_latency_ms": max(m.latencies, default=float("nan")) * 1000,
            "rss_start_mib": m.rss[0], "rss_mid_mib": m.rss[len(m.rss) // 2], "rss_max_mib": max(m.rss),
            "rss_end_mib": m.rss[-1], "rss_series_mib": [round(r, 1) for r in m.rss]}
        # flat: what the first half warmed up (allocator arenas, caches) the second half does not add to
        health["memory_flat"] = health["rss_end_mib"] <= 1.1 * health["rss_mid_mib"] + 32
        ok &= health["failures"] == 0 and health["memory_flat"]
        table(["health checks", "failures", "max latency ms", "RSS start MiB", "RSS mid MiB", "RSS max MiB",
               "RSS end MiB", "flat"],
              [[health[k] for k in ("checks", "failures", "max_latency_ms", "rss_start_mib", "rss_mid_mib",
                                    "rss_max_mib", "rss_end_mib", "memory_flat")]])
        for line in m.failures[:5]:
            print(f"- health failure: {line}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of benign + hostile traffic")
    parser.add_argument("--baseline-duration", type=float, default=30.0, help="seconds of benign traffic alone")
    parser.add_argument("--model", default=None, help="model for the engine (default: a tiny random llama)")
    parser.add_argument("--engine-clients", type=int, default=4)
    parser.add_argument("--sandbox-clients", type=int, default=2)
    parser.add_argument("--hostile-clients", type=int, default=2, help="per server")
    parser.add_argument("--large-text-mb", type=int, default=20, help="size of the oversized /generate text")
    parser.add_argument("--heavy-every", type=float, default=120.0, help="seconds between oversized texts")
    parser.add_argument("--greedy", action="store_true", help="benign engine requests at temperature 0")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rlpost-soak-") as tmp:
        from rlpost.testing.tiny_models import make_tiny_checkpoint

        model = args.model or str(make_tiny_checkpoint("llama", Path(tmp) / "tiny_llama"))
        spec = ServerSpec(model, port=free_port(), dtype="float32", max_running_requests=16,
                          deterministic_inference=True)  # as tests/test_rollout_server.py starts it
        sandbox_port = free_port()
        sandbox_cmd = [sys.executable, "-m", "rlpost.cli", "serve", "sandbox", "--port", str(sandbox_port),
                       "--max-concurrency", "8", "--max-run-timeout", "30", "--max-processes", "64",
                       "--max-output-bytes", str(1 << 20)]  # as tests/conftest.py starts it
        engine_url, sandbox_url = spec.url, f"http://127.0.0.1:{sandbox_port}"
        procs = []
        try:
            procs.append(start(server_command(spec), f"{engine_url}/health", Path(tmp) / "engine.log"))
            procs.append(start(sandbox_cmd, f"{sandbox_url}/v1/ping", Path(tmp) / "sandbox.log"))
            monitors = {"engine": Monitor(f"{engine_url}/health", procs[0].pid),
                        "sandbox": Monitor(f"{sandbox_url}/v1/ping", procs[1].pid)}
            print(f"engine {engine_url} ({model}), sandbox {sandbox_url}; {os.cpu_count()} CPUs", flush=True)
            result = asyncio.run(soak(args, engine_url, sandbox_url, monitors))
            for m in monitors.values():
                m.stop.set()
                m.join(timeout=5)
                m.rss.append(m.sample_rss())
            for name, proc in zip(("engine", "sandbox"), procs):
                if proc.poll() is not None:
                    monitors[name].failures.append(f"the server exited with {proc.returncode}")
            ok = report(result, monitors)
        finally:
            for proc in procs:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)
                proc.kill()
    result["args"], result["ok"] = vars(args), ok
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print("\nPASS: every benign answer present and exact, every health check answered" if ok else
          "\nFAIL: a benign answer lost or wrong, or a health check failed (tables above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
