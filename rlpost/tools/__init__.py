"""Tools and interactions for multi-turn rollouts: the APIs, the YAML registries that read verl's config files, and
rlpost's implementations."""

from rlpost.tools.base import BaseInteraction, BaseTool, ToolResponse
from rlpost.tools.registry import load_interactions, load_tools, openai_schemas
from rlpost.tools.schema import ToolSchema

__all__ = ["BaseInteraction", "BaseTool", "ToolResponse", "ToolSchema", "load_interactions", "load_tools",
           "openai_schemas"]
