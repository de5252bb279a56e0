"""Sandbox Fusion's /run_code request and response, field for field, so its clients (the `sandbox-fusion` package,
verl's SandboxFusionTool, rlpost's own) work against rlpost's server unchanged."""

from __future__ import annotations

import base64
import binascii
import math
import posixpath
from dataclasses import dataclass, field

from rlpost.protocol.sandbox_fusion import LANGUAGES


class InvalidRequest(ValueError):
    """A field that does not fit the schema; the server answers 422 with FastAPI's {"detail": [...]} body."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field_name, self.message = field_name, message

    def detail(self) -> dict:
        return {"detail": [{"loc": ["body", self.field_name], "msg": self.message, "type": "value_error"}]}


@dataclass
class RunCodeRequest:
    code: str
    language: str
    compile_timeout: float = 10.0
    run_timeout: float = 10.0
    memory_limit_MB: int = -1
    stdin: str | None = None
    files: dict[str, str | None] = field(default_factory=dict)
    fetch_files: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: object) -> RunCodeRequest:
        if not isinstance(body, dict):
            raise InvalidRequest("__root__", "the request body must be a JSON object")
        for name in ("code", "language"):
            if not isinstance(body.get(name), str):
                raise InvalidRequest(name, "field required (a string)")
            _utf8(body[name], name)
        if body["language"] not in LANGUAGES:
            raise InvalidRequest("language", f"'{body['language']}' is not one of {list(LANGUAGES)}")
        req = cls(code=body["code"], language=body["language"])
        for name in ("compile_timeout", "run_timeout"):
            value = body.get(name, getattr(req, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InvalidRequest(name, f"expected a positive number of seconds, got {value!r}")
            setattr(req, name, float(value))
        memory = body.get("memory_limit_MB", -1)
        if isinstance(memory, bool) or not isinstance(memory, int) or (memory <= 0 and memory != -1):
            raise InvalidRequest("memory_limit_MB", f"expected a positive integer or -1 (the default), got {memory!r}")
        req.memory_limit_MB = memory
        if body.get("stdin") is not None and not isinstance(body["stdin"], str):
            raise InvalidRequest("stdin", "expected a string or null")
        _utf8(body.get("stdin") or "", "stdin")
        req.stdin = body.get("stdin")
        req.files = _files(body.get("files") or {})
        fetch = body.get("fetch_files") or []
        if not isinstance(fetch, list) or not all(isinstance(p, str) for p in fetch):
            raise InvalidRequest("fetch_files", "expected a list of paths")
        req.fetch_files = [_relative(path, "fetch_files") for path in fetch]
        return req


def _utf8(text: str, field_name: str) -> None:
    """JSON admits lone surrogates (\\ud800), which no file or program input can hold."""
    try:
        text.encode()
    except UnicodeEncodeError as e:
        raise InvalidRequest(field_name, f"not valid Unicode text (a lone surrogate at {e.start})") from e


def _relative(path: str, field_name: str) -> str:
    """Paths are relative to the run's working directory and stay inside it."""
    _utf8(path, field_name)
    norm = posixpath.normpath(path)
    if not path or norm.startswith(("/", "..")) or norm == ".":
        raise InvalidRequest(field_name, f"'{path}' must be a relative path inside the working directory")
    return norm


def _files(files: object) -> dict[str, str | None]:
    if not isinstance(files, dict):
        raise InvalidRequest("files", "expected an object of {relative path: base64 content}")
    out = {}
    for path, content in files.items():
        if content is not None:
            if not isinstance(content, str):
                raise InvalidRequest("files", f"'{path}': expected base64 text or null")
            try:
                base64.b64decode(content, validate=True)
            except (binascii.Error, ValueError) as e:  # ValueError: not ASCII
                raise InvalidRequest("files", f"'{path}': not valid base64: {e}") from e
        out[_relative(path, "files")] = content
    for path in out:
        if any(other.startswith(path + "/") for other in out):
            raise InvalidRequest("files", f"'{path}' is a file and also a directory of another entry")
    return out


def command_result(status: str, execution_time: float | None = None, return_code: int | None = None,
                   stdout: str | None = None, stderr: str | None = None, cpu_time: float | None = None) -> dict:
    """A CommandRunResult; status is Finished, Error or TimeLimitExceeded."""
    return {"status": status, "execution_time": execution_time, "return_code": return_code, "stdout": stdout,
            "stderr": stderr, "cpu_time": cpu_time}


def run_code_response(run_result: dict, message: str = "", files: dict | None = None) -> dict:
    """A RunCodeResponse. The overall status follows Sandbox Fusion's rule: a result with status Error means the
    sandbox failed (SandboxError), a time limit or a non-zero exit means the program failed (Failed)."""
    if run_result["status"] == "Error":
        status = "SandboxError"
    elif run_result["status"] == "TimeLimitExceeded" or run_result["return_code"] != 0:
        status = "Failed"
    else:
        status = "Success"
    return {"status": status, "message": message, "compile_result": None, "run_result": run_result,
            "executor_pod_name": None, "files": files or {}}
