"""Tool calls in the Hermes / Qwen format, `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` ("hermes"), and
also as plain JSON objects in the text, fenced or bare ("json": `{"name": ..., "arguments" or "parameters": {...}}`,
as Llama 3 writes them, and as small models write them when their tool-call tokens are untrained).

A rollout must never crash on what a policy writes: every malformed call becomes an error message addressed to
the model (to be sent back as the tool turn), and well-formed calls in the same response still run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from dataclasses import dataclass, field

from rlpost.registry import did_you_mean

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(re.escape(OPEN) + r"(.*?)" + re.escape(CLOSE), re.DOTALL)
_FORMAT_HINT = f'Write each call as {OPEN}{{"name": "<tool name>", "arguments": {{...}}}}{CLOSE}.'


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class ParsedResponse:
    content: str  # the text outside the tool calls
    items: list[ToolCall | str] = field(default_factory=list)  # calls and error messages (for the model), in order

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [item for item in self.items if isinstance(item, ToolCall)]

    @property
    def errors(self) -> list[str]:
        return [item for item in self.items if isinstance(item, str)]


FORMATS = ("hermes", "json")


def _parse_block(body: str, number: int, known_tools: Collection[str] | None) -> ToolCall | str:
    try:
        call = json.loads(body)
    except json.JSONDecodeError as e:
        return f"Error: tool call {number} is not valid JSON ({e.msg} at character {e.pos}). {_FORMAT_HINT}"
    except RecursionError:
        return f"Error: tool call {number} nests too deeply to parse. {_FORMAT_HINT}"
    return _call(call, number, known_tools)


def _call(call: object, number: int, known_tools: Collection[str] | None) -> ToolCall | str:
    if not isinstance(call, dict):
        return f"Error: tool call {number} must be a JSON object, not {type(call).__name__}. {_FORMAT_HINT}"
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return f'Error: tool call {number} has no "name". {_FORMAT_HINT}'
    if known_tools is not None and name not in known_tools:
        return (f"Error: tool call {number} names an unknown tool '{name}'{did_you_mean(name, known_tools)}; "
                f"available tools: {', '.join(sorted(known_tools))}.")
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):  # some models emit the arguments object as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (json.JSONDecodeError, RecursionError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            return f'Error: the "arguments" of tool call {number} are not valid JSON ({why}). {_FORMAT_HINT}'
    if not isinstance(arguments, dict):
        return f'Error: the "arguments" of tool call {number} must be a JSON object. {_FORMAT_HINT}'
    return ToolCall(name, arguments)


def _json_calls(text: str) -> list[tuple[int, int, dict]]:
    """(start, end, object) of each JSON object in the text that reads as a call: a "name" and its "arguments" (or
    "parameters"). Other JSON and unparsable braces are prose or code, left alone."""
    decoder, out, i = json.JSONDecoder(), [], text.find("{")
    while i >= 0:
        try:
            obj, end = decoder.raw_decode(text, i)
        except (json.JSONDecodeError, RecursionError):
            end = i + 1
        else:
            named = isinstance(obj, dict) and isinstance(obj.get("name"), str)
            if named and ("arguments" in obj or "parameters" in obj):
                out.append((i, end, obj))
            else:
                end = i + 1
        i = text.find("{", end)
    return out


def parse_tool_calls(text: str, known_tools: Collection[str] | None = None, fmt: str = "hermes") -> ParsedResponse:
    """Split a generated response into its text, its well-formed tool calls (in order) and error messages."""
    if fmt not in FORMATS:
        raise ValueError(f"tool-call format '{fmt}' is not one of {list(FORMATS)}")
    if fmt == "json" and OPEN not in text:
        return _without(text, [(start, end, _call(obj, number, known_tools))
                               for number, (start, end, obj) in enumerate(_json_calls(text), 1)])
    spans = [(match.start(), match.end(), _parse_block(match.group(1).strip(), number, known_tools))
             for number, match in enumerate(_BLOCK.finditer(text), 1)]
    unclosed = text.find(OPEN, spans[-1][1] if spans else 0)
    if unclosed >= 0:
        spans.append((unclosed, len(text),
                      f"Error: a tool call was opened with {OPEN} but never closed with {CLOSE}. {_FORMAT_HINT}"))
    return _without(text, spans)


def _without(text: str, spans: list[tuple[int, int, ToolCall | str]]) -> ParsedResponse:
    """The response with each (start, end, call or error) span taken out of its text, the items kept in order."""
    pieces, last = [], 0
    for start, end, _ in spans:
        pieces.append(text[last:start])
        last = end
    pieces.append(text[last:])
    return ParsedResponse("".join(pieces).strip(), [item for _, _, item in spans])
