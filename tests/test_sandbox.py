"""`rlpost serve sandbox` as a real server process on loopback: the Sandbox Fusion protocol (the official
`sandbox-fusion` client included) and containment of hostile programs, after each of which the server still serves."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from pathlib import Path

import pytest
import requests


def run(url: str, code: str, language: str = "python", **fields) -> dict:
    response = requests.post(f"{url}/run_code", json={"code": code, "language": language, **fields}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def still_serving(url: str) -> None:
    answer = run(url, "print(6 * 7)")
    assert answer["status"] == "Success" and answer["run_result"]["stdout"] == "42\n"


def test_python_and_bash_answer_in_sandbox_fusions_fields(sandbox):
    answer = run(sandbox.url, "import sys; print(input()[::-1]); print('warn', file=sys.stderr)", stdin="abc")
    assert set(answer) == {"status", "message", "compile_result", "run_result", "executor_pod_name", "files"}
    assert answer["status"] == "Success" and answer["compile_result"] is None
    result = answer["run_result"]
    assert {"status", "execution_time", "return_code", "stdout", "stderr"} <= set(result)
    assert (result["status"], result["return_code"], result["stdout"], result["stderr"]) == ("Finished", 0, "cba\n",
                                                                                             "warn\n")
    assert 0 < result["execution_time"] < 10
    bash = run(sandbox.url, "echo $((6 * 7)); exit 3", language="bash")
    assert bash["status"] == "Failed" and bash["run_result"]["return_code"] == 3
    assert bash["run_result"]["stdout"] == "42\n"


def test_files_in_and_fetch_files_out(sandbox):
    code = "import helper, os\nos.mkdir('out')\nopen('out/result.txt', 'w').write(helper.VALUE * 2)"
    answer = run(sandbox.url, code, files={"helper.py": base64.b64encode(b"VALUE = 'ab'").decode()},
                 fetch_files=["out/result.txt", "absent.txt"])
    assert answer["status"] == "Success", answer
    assert base64.b64decode(answer["files"]["out/result.txt"]) == b"abab"
    assert "absent.txt" in answer["message"]


@pytest.mark.parametrize("body, field", [
    ({"code": "1", "language": "klingon"}, "language"),
    ({"language": "python"}, "code"),
    ({"code": "1", "language": "python", "run_timeout": -1}, "run_timeout"),
    ({"code": "1", "language": "python", "run_timeout": float("nan")}, "run_timeout"),
    ({"code": "1", "language": "python", "files": {"a": "", "a/b": ""}}, "files"),
    ({"code": "1", "language": "python", "memory_limit_MB": "lots"}, "memory_limit_MB"),
    ({"code": "1", "language": "python", "files": {"../escape.py": ""}}, "files"),
    ({"code": "1", "language": "python", "fetch_files": ["/etc/passwd"]}, "fetch_files"),
])
def test_invalid_requests_get_422_naming_the_field(sandbox, body, field):
    response = requests.post(f"{sandbox.url}/run_code", data=json.dumps(body), timeout=30)  # json.dumps writes NaN
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_requests_this_sandbox_will_not_run_are_sandbox_errors_that_say_why(sandbox):
    cpp = run(sandbox.url, "int main() {}", language="cpp")
    assert cpp["status"] == "SandboxError" and "'cpp' is not supported" in cpp["message"]
    long = run(sandbox.url, "1", run_timeout=1000)
    assert long["status"] == "SandboxError" and "limit of 30 s" in long["message"]


def test_the_official_sandbox_fusion_client_works_unchanged(sandbox):
    from sandbox_fusion import RunCodeRequest, RunStatus, run_code

    answer = run_code(RunCodeRequest(code="print(sum(range(10)))", language="python", run_timeout=5),
                      endpoint=sandbox.url, max_attempts=1)
    assert answer.status == RunStatus.Success and answer.run_result.stdout == "45\n"
    failed = run_code(RunCodeRequest(code="raise SystemExit(2)", language="python"), endpoint=sandbox.url,
                      max_attempts=1)
    assert failed.status == RunStatus.Failed and failed.run_result.return_code == 2


# ---- containment ---------------------------------------------------------------------------------------------------

def test_host_files_are_not_visible(sandbox):
    project_file = Path(__file__).resolve()
    secret = project_file.read_text().splitlines()[0]
    code = f"ls /; ls {Path.home()} /work /srv; cat /etc/passwd /etc/shadow {project_file} {Path.home()}/.bashrc"
    answer = run(sandbox.url, code, language="bash")
    out = answer["run_result"]["stdout"]
    assert answer["status"] == "Failed"
    assert secret not in out and "root:" not in out
    assert sorted(out.split()) == sorted(set(out.split()) & {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32",
                                                            "proc", "sbin", "tmp", "usr"})
    assert "No such file or directory" in answer["run_result"]["stderr"]
    still_serving(sandbox.url)


def test_the_servers_environment_is_not_visible(sandbox):
    answer = run(sandbox.url, "cat /proc/*/environ | tr '\\0' '\\n'; env", language="bash")
    out = answer["run_result"]["stdout"]
    assert "PATH=" in out and sandbox.secret not in out


def test_fetch_files_reads_only_regular_files_inside_the_working_directory(sandbox):
    code = "import os\nos.symlink('/dev/zero', 'zero')\nos.symlink('/usr/bin/python3', 'py')\nos.mkfifo('fifo')"
    answer = run(sandbox.url, code, fetch_files=["zero", "py", "fifo"], run_timeout=5)
    assert answer["status"] == "Success" and answer["files"] == {}
    assert "not found" in answer["message"] and "'zero', 'py', 'fifo'" in answer["message"]
    still_serving(sandbox.url)


def test_no_network_not_even_the_hosts_loopback(sandbox):
    port = int(sandbox.url.rsplit(":", 1)[1])
    code = (f"import socket\nfor addr in [('127.0.0.1', {port}), ('1.1.1.1', 80)]:\n"
            "    try:\n        socket.create_connection(addr, timeout=2)\n        print('connected', addr)\n"
            "    except OSError as e:\n        print('refused', addr, e.errno)\n")
    answer = run(sandbox.url, code)
    out = answer["run_result"]["stdout"]
    assert "connected" not in out and out.count("refused") == 2, out
    still_serving(sandbox.url)


def _host_processes() -> int:
    return sum(name.isdigit() for name in os.listdir("/proc"))


def test_a_fork_bomb_is_capped_and_killed_at_the_timeout(sandbox):
    baseline, peak = _host_processes(), 0
    done = threading.Event()

    def watch():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _host_processes())
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        answer = run(sandbox.url, ":(){ :|:& };:; sleep 60", language="bash", run_timeout=3)
    finally:
        done.set()
        watcher.join()
    assert answer["status"] == "Failed" and answer["run_result"]["status"] == "TimeLimitExceeded"
    assert "run_timeout" in answer["message"]
    assert peak - baseline <= sandbox.max_processes + 16, (baseline, peak)
    time.sleep(0.5)
    assert _host_processes() <= baseline + 8
    still_serving(sandbox.url)


def test_a_memory_hog_fails_at_its_memory_limit(sandbox):
    hog = run(sandbox.url, "x = bytearray(3 << 30)")
    assert hog["status"] == "Failed" and "MemoryError" in hog["run_result"]["stderr"]
    code = "x = bytearray(300 << 20); print(len(x) >> 20)"
    assert run(sandbox.url, code, memory_limit_MB=200)["status"] == "Failed"
    assert run(sandbox.url, code, memory_limit_MB=600)["run_result"]["stdout"] == "300\n"
    still_serving(sandbox.url)


def test_an_infinite_loop_is_killed_at_run_timeout(sandbox):
    start = time.monotonic()
    answer = run(sandbox.url, "while True:\n    pass", run_timeout=2)
    assert answer["status"] == "Failed" and answer["run_result"]["status"] == "TimeLimitExceeded"
    assert answer["run_result"]["return_code"] is None
    assert 2 <= answer["run_result"]["execution_time"] < 4 and time.monotonic() - start < 6
    still_serving(sandbox.url)


def test_100_mb_of_output_is_cut_at_the_cap(sandbox):
    answer = run(sandbox.url, "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))")
    assert answer["status"] == "Failed" and "more than" in answer["message"] and "stdout" in answer["message"]
    assert answer["run_result"]["stdout"] == "x" * sandbox.max_output
    still_serving(sandbox.url)


def test_only_tmp_is_writable_and_it_is_private_to_each_run(sandbox):
    code = ("for p in /usr/evil /etc/evil /evil /dev/evil; do echo x > $p && echo wrote $p; "
            "done; echo kept > /tmp/mine && cat /tmp/mine; ls /tmp")
    answer = run(sandbox.url, code, language="bash")
    assert "wrote" not in answer["run_result"]["stdout"]
    assert answer["run_result"]["stderr"].count("Read-only file system") == 4  # the mounts, whoever runs the code
    assert answer["run_result"]["stdout"].startswith("kept\n")
    later = run(sandbox.url, "ls /tmp", language="bash")
    assert "mine" not in later["run_result"]["stdout"]
    full = run(sandbox.url, "head -c 100M /dev/zero > /tmp/big", language="bash")
    assert full["status"] == "Failed" and "No space left on device" in full["run_result"]["stderr"]
    # nor can a run mount a bigger /tmp of its own: no nested user namespaces
    nested = run(sandbox.url, "unshare -Urm sh -c 'mount -t tmpfs -o size=1g none /tmp && echo mounted'",
                 language="bash")
    assert nested["status"] == "Failed" and "mounted" not in nested["run_result"]["stdout"]


def test_50_concurrent_runs_all_return(sandbox):
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> dict:
        return run(sandbox.url, f"import time; time.sleep(0.2); print({i} * {i})")

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(one, range(50)))
    assert [a["run_result"]["stdout"] for a in answers] == [f"{i * i}\n" for i in range(50)]
    assert all(a["status"] == "Success" for a in answers)


def test_runs_filling_every_slot_all_start_and_finish(sandbox):
    """As many runs as --max-concurrency, each using most of its timeout: none may starve waiting to start."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> dict:
        return run(sandbox.url, f"import time; time.sleep(2.5); print({i})", run_timeout=5)

    with ThreadPoolExecutor(sandbox.max_concurrency) as pool:
        answers = list(pool.map(one, range(sandbox.max_concurrency)))
    assert [a["status"] for a in answers] == ["Success"] * sandbox.max_concurrency
