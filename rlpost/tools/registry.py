"""Tool and interaction YAML files in verl's format, loaded unchanged:

    tools:                                   interaction:
      - class_name: verl.tools.gsm8k_tool.Gsm8kTool      - name: gsm8k
        config: {type: native}                   class_name: verl.interactions.gsm8k_interaction.Gsm8kInteraction
        tool_schema: {type: function, function: {...}}   config: {}

verl's class names map to rlpost's own implementations; any other dotted name is imported as it is."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

from rlpost.tools.schema import ToolSchema, schema_dict

VERL_CLASSES = {
    "verl.tools.gsm8k_tool.Gsm8kTool": "rlpost.tools.gsm8k.Gsm8kTool",
    "verl.interactions.gsm8k_interaction.Gsm8kInteraction": "rlpost.tools.gsm8k.Gsm8kInteraction",
    "verl.tools.sandbox_fusion_tools.SandboxFusionTool": "rlpost.tools.sandbox_fusion.SandboxFusionTool",
    "verl.tools.search_tool.SearchTool": "rlpost.tools.search.SearchTool",
    "verl.tools.geo3k_tool.Geo3kTool": "rlpost.tools.geo3k.Geo3kTool",
    "verl.tools.image_zoom_in_tool.ImageZoomInTool": "rlpost.tools.image_zoom.ImageZoomInTool",
}
TOOL_METHODS = ("create", "execute", "calc_reward", "release")
INTERACTION_METHODS = ("start_interaction", "generate_response", "calculate_score", "finalize_interaction")


def _entries(path: str | Path, top: str, keys: set[str]) -> list[tuple[str, dict]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{top} config '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get(top), list):
        raise ValueError(f"{path}: expected a top-level '{top}:' list")
    out = []
    for i, entry in enumerate(data[top]):
        where = f"{path}: {top}[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping with keys {sorted(keys)}, got {entry!r}")
        unknown = set(entry) - keys
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)} (expected {sorted(keys)})")
        if not isinstance(entry.get("class_name"), str):
            raise ValueError(f"{where}: class_name must be a dotted 'module.Class' name")
        config = entry.get("config") or {}
        if not isinstance(config, dict):
            raise ValueError(f"{where}: config must be a mapping, got {config!r}")
        out.append((where, {**entry, "config": dict(config)}))
    return out


def _class(name: str, where: str, methods: tuple[str, ...]) -> type:
    module_name, _, attr = VERL_CLASSES.get(name, name).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ImportError(f"{where}: cannot import class_name '{name}': {e}") from e
    missing = [m for m in methods if not callable(getattr(cls, m, None))]
    if missing:
        raise TypeError(f"{where}: '{name}' lacks {missing}; it must implement {list(methods)}")
    return cls


def _problem(error: Exception, class_name: str) -> str:
    """A constructor's failure: our config checks read as they are, anything else with its class and type."""
    if isinstance(error, ValueError):
        return str(error)
    return f"{class_name} failed to start: {type(error).__name__}: {error}"


def load_tools(path: str | Path) -> dict[str, Any]:
    """{function name: tool instance}."""
    tools: dict[str, Any] = {}
    for where, entry in _entries(path, "tools", {"class_name", "config", "tool_schema", "mcp"}):
        kind = entry["config"].get("type", "native")
        if kind == "mcp":
            raise ValueError(f"{where}: config.type 'mcp' (tools served by MCP servers) is not supported: rlpost "
                             f"runs 'native' tools, Python classes called in the rollout process")
        if kind != "native":
            raise ValueError(f"{where}: config.type '{kind}' is not supported (rlpost runs 'native' tools)")
        schema = ToolSchema.from_dict(entry["tool_schema"], where) if entry.get("tool_schema") is not None else None
        cls = _class(entry["class_name"], where, TOOL_METHODS)
        try:
            tool = cls(config=entry["config"], tool_schema=schema)
        except Exception as e:  # a tool's constructor can fail any way; the entry must be named
            raise ValueError(f"{where}: {_problem(e, entry['class_name'])}") from e
        if tool.name in tools:
            raise ValueError(f"{where}: a second tool named '{tool.name}'")
        tools[tool.name] = tool
    return tools


def openai_schemas(tools: dict[str, Any]) -> list[dict] | None:
    """What a chat template takes as `tools=` (None without tools)."""
    return [schema_dict(t.tool_schema) for t in tools.values()] or None


def default_interaction_name(class_name: str) -> str:
    simple = class_name.rpartition(".")[2]
    return (simple[: -len("Interaction")] if simple.endswith("Interaction") else simple).lower()


def load_interactions(path: str | Path) -> dict[str, Any]:
    """{name: interaction instance}; a nameless entry is named after its class (Gsm8kInteraction -> gsm8k)."""
    out: dict[str, Any] = {}
    for where, entry in _entries(path, "interaction", {"name", "class_name", "config"}):
        name = entry.get("name") or default_interaction_name(entry["class_name"])
        if name in out:
            raise ValueError(f"{where}: a second interaction named '{name}'")
        cls = _class(entry["class_name"], where, INTERACTION_METHODS)
        try:
            out[name] = cls(config={**entry["config"], "name": name})
        except Exception as e:
            raise ValueError(f"{where}: {_problem(e, entry['class_name'])}") from e
    return out
