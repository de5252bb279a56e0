"""Geometry3K's answer-check tool (verl's Geo3kTool): a bare answer, graded by the geo3k rule without format."""

from __future__ import annotations

from rlpost.rewards.geo3k import compute_score
from rlpost.tools.answer_check import AnswerCheckTool
from rlpost.tools.schema import ToolSchema


class Geo3kTool(AnswerCheckTool):
    keep_best = False

    def get_openai_tool_schema(self) -> ToolSchema:
        return ToolSchema("calc_geo3k_reward", "Checks an answer to the geometry problem: 1.0 if it is correct, "
                          "0.0 if not.", {"type": "object", "properties": {"answer": {
                              "type": "string", "description": "The final answer, e.g. 70 or 2\\sqrt{3}"}},
                              "required": ["answer"]})

    def score(self, answer: str, ground_truth: str) -> float:
        return compute_score(answer, ground_truth, use_boxed=False, format_score=0.0)
