"""Code execution through a Sandbox Fusion /run_code service (Sandbox Fusion itself, or `rlpost serve sandbox`).
Config keys are verl's SandboxFusionTool's, so its tool YAML works unchanged."""

from __future__ import annotations

from typing import Any

from rlpost.protocol.sandbox_fusion import LANGUAGES
from rlpost.tools.base import ToolResponse
from rlpost.tools.http import ServiceError, ServiceTool, is_int, is_number
from rlpost.tools.schema import ToolSchema


class SandboxFusionTool(ServiceTool):
    URL_KEY = "sandbox_fusion_url"
    DEFAULTS = {"sandbox_fusion_url": "", "default_timeout": 30, "default_language": "python", "memory_limit_mb": 1024}
    RETRY_TIMEOUTS = False  # the sandbox may still be running the code
    CHECKS = {"default_timeout": (lambda v: is_number(v) and v > 0, "a number of seconds > 0"),
              "memory_limit_mb": (lambda v: is_int(v) and (v > 0 or v == -1), "an integer > 0, or -1 (no limit)")}

    def __init__(self, config: dict, tool_schema: ToolSchema | None):
        super().__init__(config, tool_schema)
        if not self.url.rstrip("/").endswith("/run_code"):
            raise ValueError(f"tool '{self.name}': sandbox_fusion_url must be the service's full /run_code URL "
                             f"(e.g. http://127.0.0.1:8080/run_code), got {self.url!r}")
        if self.settings["default_language"] not in LANGUAGES:
            raise ValueError(f"tool '{self.name}': default_language '{self.settings['default_language']}' is not one "
                             f"of Sandbox Fusion's languages {list(LANGUAGES)}")

    def get_openai_tool_schema(self) -> ToolSchema:
        return ToolSchema("code_interpreter", "Runs code and returns what it prints.",
                          {"type": "object", "properties": {"code": {"type": "string", "description":
                           "The code to run"}}, "required": ["code"]})

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs):
        """The model may pass `language` and a shorter `timeout` than the configured default."""
        s = self.settings
        code = parameters.get("code")
        if not isinstance(code, str) or not code.strip():
            return ToolResponse(text="Error: the 'code' argument must be a non-empty string."), 0.0, {}
        language = parameters.get("language", s["default_language"])
        if language not in LANGUAGES:
            return ToolResponse(text=f"Error: language '{language}' is not supported."), 0.0, {}
        timeout = parameters.get("timeout", s["default_timeout"])
        if not is_number(timeout) or not 0 < timeout <= s["default_timeout"]:
            timeout = s["default_timeout"]
        body = {"code": code, "language": language, "compile_timeout": timeout, "run_timeout": timeout,
                "memory_limit_MB": s["memory_limit_mb"], "stdin": None, "files": {}, "fetch_files": []}
        try:
            answer = await self.post(body, 2 * timeout + 10)
        except ServiceError as e:
            return ToolResponse(text=f"Error: the code sandbox is unavailable ({e})."), 0.0, {"status": "api_error"}
        return ToolResponse(text=_observation(answer, timeout)), 0.0, {"status": answer.get("status")}


def _observation(answer: dict, timeout: float) -> str:
    """The program's stdout and stderr, as verl's tool gives them, and a line on what went wrong when the run did not
    finish."""
    result = answer.get("run_result") or {}
    compiled = answer.get("compile_result") or {}
    text = (result.get("stdout") or "") + (result.get("stderr") or "")
    if answer.get("status") == "SandboxError":
        return text + f"Error: the sandbox failed: {answer.get('message') or 'no message'}"
    if compiled.get("status") == "Finished" and compiled.get("return_code"):
        return (compiled.get("stdout") or "") + (compiled.get("stderr") or "") + "Error: compilation failed."
    if "TimeLimitExceeded" in (result.get("status"), compiled.get("status")):
        return text + f"Error: time limit exceeded ({timeout:g} s)."
    if answer.get("status") != "Success" and answer.get("message"):
        return text + f"Error: {answer['message']}"
    return text
