"""A tool's OpenAI function schema, as chat templates take it (`tools=[...]`), with the attribute shape of verl's
OpenAIFunctionToolSchema (`.type`, `.function.name`, `.function.parameters.properties`, `model_dump()`), so a tool
class written against verl's BaseTool reads it as it reads verl's."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolSchema:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}, "required": []})

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ToolSchema:
        """From `{type: function, function: {name, description, parameters}}`; `where` names the file and entry for
        errors. Parameters are kept whole (JSON schema, `items` of arrays included)."""
        if not isinstance(data, dict) or data.get("type") != "function" or not isinstance(data.get("function"), dict):
            raise ValueError(f"{where}: tool_schema must be {{type: function, function: {{name, description, "
                             f"parameters}}}}, got {data!r}")
        fn = data["function"]
        unknown = set(fn) - {"name", "description", "parameters", "strict"}
        if unknown:
            raise ValueError(f"{where}: tool_schema.function has unknown keys {sorted(unknown)} (expected name, "
                             f"description, parameters, strict)")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"{where}: tool_schema.function.name must be a non-empty string")
        params = fn.get("parameters", {"type": "object", "properties": {}, "required": []})
        if not isinstance(params, dict) or params.get("type") != "object":
            raise ValueError(f"{where}: tool_schema.function.parameters must be a JSON schema of type 'object'")
        missing = set(params.get("required", [])) - set(params.get("properties", {}))
        if missing:
            raise ValueError(f"{where}: tool_schema.function.parameters.required names {sorted(missing)}, which "
                             f"are not in its properties")
        return cls(fn["name"], fn.get("description", ""), params)

    type = "function"

    @property
    def function(self) -> Fields:
        return Fields({"name": self.name, "description": self.description, "parameters": self.parameters})

    def model_dump(self, **_) -> dict:
        """The OpenAI dict (verl's pydantic options such as exclude_none are accepted; nothing here is unset)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


class Fields(dict):
    """A dict whose keys also read as attributes, nested (`.parameters.properties`), as pydantic models do."""

    def __getattr__(self, key: str) -> Any:
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return Fields(value) if isinstance(value, dict) else value


def schema_dict(schema: Any) -> dict:
    """rlpost's ToolSchema or verl's pydantic one -> the OpenAI dict a chat template takes."""
    return schema.model_dump(exclude_unset=True, exclude_none=True)
