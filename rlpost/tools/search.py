"""Retrieval through a Search-R1 retrieval service (POST /retrieve). Config keys, defaults and the text the model
reads are verl's SearchTool's, so its tool YAML works unchanged and a policy sees the same observations.

What the model reads is a JSON string `{"result": ...}` (non-ASCII kept as is). Per query, each passage is a block
`Doc i (Title: <first line of contents>)\n<rest of contents>`, blocks separated by a blank line; queries separated by
`\n---\n`. Search-R1's corpus keeps the title, in double quotes, on a passage's first line, and the quotes stay.
"""

from __future__ import annotations

import json
from typing import Any

from rlpost.tools.base import ToolResponse
from rlpost.tools.http import ServiceError, ServiceTool, is_int, is_number
from rlpost.tools.schema import ToolSchema

BAD_QUERY_LIST = "Error: 'query_list' is missing, empty, or not a list in parameters."  # verl's words
NOT_STRINGS = "Error: 'query_list' must hold query strings only."  # rlpost's: verl would send these on
NO_RESULTS = "No search results found."
NO_ANSWER = "Unknown API state (no response and no error message)."


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
        if not queries or not isinstance(queries, list):
            return ToolResponse(text=json.dumps({"result": BAD_QUERY_LIST})), 0.0, {}
        if not all(isinstance(q, str) for q in queries):
            return ToolResponse(text=json.dumps({"result": NOT_STRINGS})), 0.0, {}
        metrics = {"query_count": len(queries), "status": "unknown", "total_results": 0, "api_request_error": None}
        body = {"queries": queries, "topk": self.settings["topk"], "return_scores": True}
        try:
            answer = await self.post(body, self.settings["timeout"])
        except ServiceError as e:
            return _result(f"Search error: API Call Failed: {e}"), 0.0, {
                **metrics, "status": "api_error", "api_request_error": str(e)}
        if not answer:
            return _result(NO_ANSWER), 0.0, {**metrics, "status": "unknown_api_state"}
        results = answer.get("result") or []
        if not results:
            return _result(NO_RESULTS), 0.0, {**metrics, "status": "no_results"}
        try:
            if not isinstance(results, list):
                raise TypeError(f"'result' must be a list of result lists, got {type(results).__name__}")
            text = "\n---\n".join(passages(docs) for docs in results)
            total = sum(len(docs) if isinstance(docs, list) else 1 for docs in results)
        except (KeyError, TypeError, AttributeError) as e:
            return _result(f"Error processing search results: {e}"), 0.0, {**metrics, "status": "processing_error"}
        return _result(text), 0.0, {**metrics, "status": "success", "total_results": total}


def passages(docs: list) -> str:
    """One query's passages, as verl formats `[{"document": {"contents"}, "score"}, ...]`."""
    blocks = []
    for i, item in enumerate(docs, 1):
        title, _, text = item["document"]["contents"].partition("\n")
        blocks.append(f"Doc {i} (Title: {title})\n{text}")
    return "\n\n".join(blocks).strip()


def _result(text: str) -> ToolResponse:
    return ToolResponse(text=json.dumps({"result": text}, ensure_ascii=False))
