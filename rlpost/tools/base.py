"""What a tool and an interaction implement. The method names and signatures are verl's, so a verl tool or
interaction class runs in rlpost unchanged.

Lifecycle per trajectory (rlpost's agent loop): `create` once with the sample's tools_kwargs[name].create_kwargs,
`execute` for every call with execute_kwargs, `calc_reward` at the end with calc_reward_kwargs, `release` with
release_kwargs. An interaction: `start_interaction` with the sample's interaction_kwargs, `generate_response` after
each assistant turn, `calculate_score` and `finalize_interaction` at the end.
"""

from __future__ import annotations

import inspect
import uuid
from dataclasses import dataclass
from typing import Any

from rlpost.tools.schema import ToolSchema


@dataclass
class ToolResponse:
    text: str | None = None
    image: list | None = None
    video: list | None = None


def as_response(answer: Any, tool: str) -> ToolResponse:
    """What a tool's execute returned -> a ToolResponse: rlpost's or verl's (pydantic, same fields), a dict of those
    fields (older verl tools) or plain text."""
    if isinstance(answer, str):
        return ToolResponse(text=answer)
    if isinstance(answer, dict):
        unknown = set(answer) - {"text", "image", "video"}
        if unknown:
            raise ValueError(f"tool '{tool}' answered with keys {sorted(unknown)}; a response has text, image, video")
        return ToolResponse(**answer)
    if hasattr(answer, "text"):
        return ToolResponse(answer.text, getattr(answer, "image", None), getattr(answer, "video", None))
    raise TypeError(f"tool '{tool}' answered with {type(answer).__name__}; expected a ToolResponse, a dict or text")


async def create_instance(tool: Any, instance_id: str, create_kwargs: dict) -> str:
    """Calls a tool's create as verl's tools of either generation expect: the row's create_kwargs as keywords (older
    ones) and also whole as `create_kwargs=` where the method takes it (newer ones read it from there). Older tools
    return the instance id alone, newer ones (id, ToolResponse)."""
    kwargs = dict(create_kwargs)
    parameters = inspect.signature(tool.create).parameters
    if "create_kwargs" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        kwargs["create_kwargs"] = create_kwargs
    result = await tool.create(instance_id, **kwargs)
    return result[0] if isinstance(result, tuple) else result


def tool_config(config: dict, defaults: dict[str, Any], owner: str) -> dict[str, Any]:
    """`config` over `defaults`; a key neither knows (a typo) fails when the tool is built, not mid-rollout."""
    unknown = set(config) - set(defaults) - {"type", "name"}
    if unknown:
        raise ValueError(f"{owner}: unknown config keys {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **{k: v for k, v in config.items() if k in defaults}}


class BaseTool:
    def __init__(self, config: dict, tool_schema: ToolSchema | None):
        self.config = config
        self.tool_schema = tool_schema or self.get_openai_tool_schema()
        if self.tool_schema is None:
            raise ValueError(f"{type(self).__name__}: no tool_schema in the config and none built in")
        self.name = self.tool_schema.function.name

    def get_openai_tool_schema(self) -> ToolSchema | None:
        """A built-in schema, for tools whose config entry has none."""
        return None

    async def create(self, instance_id: str | None = None, **kwargs) -> tuple[str, ToolResponse]:
        return instance_id or str(uuid.uuid4()), ToolResponse()

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs) -> tuple[ToolResponse, float, dict]:
        """(what the model reads, this call's reward, metrics)."""
        raise NotImplementedError

    async def calc_reward(self, instance_id: str, **kwargs) -> float:
        return 0.0

    async def release(self, instance_id: str, **kwargs) -> None:
        return None


class BaseInteraction:
    def __init__(self, config: dict):
        self.config = config
        self.name = config.get("name", type(self).__name__.lower())

    async def start_interaction(self, instance_id: str | None = None, **kwargs) -> str:
        return instance_id or str(uuid.uuid4())

    async def generate_response(self, instance_id: str, messages: list[dict[str, Any]],
                                **kwargs) -> tuple[bool, str, float, dict]:
        """(end the conversation?, the user's next message, this turn's score, extra data)."""
        raise NotImplementedError

    async def calculate_score(self, instance_id: str, **kwargs) -> float:
        return 0.0

    async def finalize_interaction(self, instance_id: str, **kwargs) -> None:
        return None
