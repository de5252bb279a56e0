"""Search-R1's /retrieve request and response (search_r1/search/retrieval_server.py), field for field:

    {"queries": [str, ...], "topk": int | null, "return_scores": bool}
    -> {"result": [[{"document": {"id", "contents"}, "score": float}, ...] per query]}   (return_scores true)
    -> {"result": [[{"id", "contents"}, ...] per query]}                                  (return_scores false)

A request that does not fit gets 400 and {"error": {"message", "type", "param"}}, the message naming the field."""

from __future__ import annotations

import json
from dataclasses import dataclass

MAX_QUERIES = 512
MAX_TOPK = 100
MAX_QUERY_CHARS = 4096


class InvalidRequest(ValueError):
    def __init__(self, field_name: str, message: str):
        super().__init__(f"'{field_name}' {message}")
        self.field_name = field_name

    def body(self) -> dict:
        return {"error": {"message": str(self), "type": "invalid_request_error", "param": self.field_name}}


def parse_json(raw: bytes) -> object:
    """The request body as JSON; InvalidRequest for bytes that are not UTF-8 JSON or nest too deeply."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidRequest("body", f"is not valid UTF-8 (byte {e.start})") from e
    except json.JSONDecodeError as e:
        raise InvalidRequest("body", f"is not valid JSON ({e})") from e
    except RecursionError as e:
        raise InvalidRequest("body", "is JSON nested too deeply") from e


@dataclass
class RetrieveRequest:
    queries: list[str]
    topk: int
    return_scores: bool = False

    @classmethod
    def from_json(cls, body: object, default_topk: int, documents: int) -> RetrieveRequest:
        if not isinstance(body, dict):
            raise InvalidRequest("body", "must be a JSON object with 'queries', 'topk' and 'return_scores'")
        queries = body.get("queries")
        if "queries" not in body:
            raise InvalidRequest("queries", "is required: a list of query strings")
        if not isinstance(queries, list) or not queries:
            raise InvalidRequest("queries", f"must be a non-empty list of strings, got {_show(queries)}")
        if len(queries) > MAX_QUERIES:
            raise InvalidRequest("queries", f"holds {len(queries)} queries; at most {MAX_QUERIES} a request")
        for i, query in enumerate(queries):
            if not isinstance(query, str) or not query.strip():
                raise InvalidRequest("queries", f"[{i}] must be a non-empty string, got {_show(query)}")
            if len(query) > MAX_QUERY_CHARS:
                raise InvalidRequest("queries", f"[{i}] is {len(query)} characters long; at most {MAX_QUERY_CHARS}")
            try:
                query.encode("utf-8")
            except UnicodeEncodeError as e:
                raise InvalidRequest("queries", f"[{i}] is not valid Unicode (a lone surrogate at {e.start})") from e
        topk = body.get("topk")
        if topk is None:
            topk = default_topk
        elif isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
            raise InvalidRequest("topk", f"must be an integer from 1 to {MAX_TOPK} or null, got {_show(topk)}")
        elif topk > documents:
            raise InvalidRequest("topk", f"is {topk} but the corpus holds {documents} documents")
        return_scores = body.get("return_scores", False)
        if not isinstance(return_scores, bool):
            raise InvalidRequest("return_scores", f"must be true or false, got {_show(return_scores)}")
        return cls(queries, topk, return_scores)


def result(hits: list[tuple[dict, float]], return_scores: bool) -> list[dict]:
    """One query's answer: its documents, each with its score when asked for."""
    if return_scores:
        return [{"document": doc, "score": score} for doc, score in hits]
    return [doc for doc, _ in hits]


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
