"""Retrieval through a Search-R1 retrieval service (POST /retrieve). Config keys are verl's SearchTool's, so its tool
YAML works unchanged."""

from __future__ import annotations

import json
from typing import Any

from rlpost.tools.base import ToolResponse
from rlpost.tools.http import ServiceError, ServiceTool, is_int, is_number
from rlpost.tools.schema import ToolSchema


class SearchTool(ServiceTool):
    URL_KEY = "retrieval_service_url"
    DEFAULTS = {"retrieval_service_url": "", "topk": 3, "timeout": 30, "num_workers": 120, "rate_limit": 120}
    CHECKS = {"topk": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
              "timeout": (lambda v: is_number(v) and v > 0, "a number of seconds > 0")}

    def get_openai_tool_schema(self) -> ToolSchema:
        return ToolSchema("search", "Searches for passages relevant to each query.",
                          {"type": "object", "properties": {"query_list": {
                              "type": "array", "items": {"type": "string"},
                              "description": "Fully formed queries; each gets its own results"}},
                           "required": ["query_list"]})

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs):
        queries = parameters.get("query_list")
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not queries or not all(isinstance(q, str) and q for q in queries):
            return ToolResponse(text="Error: 'query_list' must be a non-empty list of query strings."), 0.0, {}
        body = {"queries": queries, "topk": self.settings["topk"], "return_scores": True}
        try:
            answer = await self.post(body, self.settings["timeout"])
            results = answer["result"]
            if not isinstance(results, list) or len(results) != len(queries):
                raise ServiceError(f"expected {len(queries)} result lists under 'result', got {str(results)[:200]}")
            text = "\n---\n".join(_passages(docs) for docs in results)
        except (ServiceError, KeyError, TypeError, AttributeError) as e:
            return ToolResponse(text=f"Error: search failed ({e})."), 0.0, {"status": "api_error"}
        return ToolResponse(text=json.dumps({"result": text})), 0.0, {"status": "success", "queries": len(queries)}


def _passages(docs: list) -> str:
    """Search-R1's corpus keeps the title on a passage's first line."""
    if not docs:
        return "No results."
    out = []
    for i, item in enumerate(docs, 1):
        contents = (item.get("document", item) or {}).get("contents", "")
        title, _, text = contents.partition("\n")
        out.append(f"Doc {i} (Title: {title.strip(chr(34))})\n{text}")
    return "\n".join(out)
