"""GSM8K's answer-check tool and its simulated user, scored by rlpost's GSM8K rules."""

from __future__ import annotations

from typing import Any

from rlpost.rewards.gsm8k import compute_score
from rlpost.tools.answer_check import AnswerCheckTool
from rlpost.tools.base import BaseInteraction
from rlpost.tools.schema import ToolSchema


class Gsm8kTool(AnswerCheckTool):
    """Answers are read as GSM8K's '#### n' (flexible: the last number counts)."""

    def get_openai_tool_schema(self) -> ToolSchema:
        return ToolSchema("calc_gsm8k_reward",
                          "Checks an answer to the GSM8K problem: 1.0 if it is correct, 0.0 if not.",
                          {"type": "object", "properties": {"answer": {"type": "string", "description":
                           "The final answer, a number"}}, "required": ["answer"]})

    def submitted(self, answer: str) -> str:
        return answer if answer.startswith("#### ") else f"#### {answer}"  # verl's test: with the space

    def score(self, answer: str, ground_truth: str) -> float:
        return compute_score(answer, ground_truth, method="flexible")


class Gsm8kInteraction(BaseInteraction):
    """A user who checks the last assistant message's '#### n' answer and asks again until it is right."""

    CORRECT = "Your answer is correct."
    INCORRECT = "Your answer is incorrect. Reflect on your solution and try again, ending with '#### <number>'."

    def __init__(self, config: dict):
        super().__init__(config)
        self._truth: dict[str, str] = {}
        self._last: dict[str, float] = {}

    async def start_interaction(self, instance_id: str | None = None, ground_truth: str | None = None, **kwargs):
        instance_id = await super().start_interaction(instance_id)
        if ground_truth is None:
            raise ValueError(f"interaction '{self.name}': start_interaction needs ground_truth (interaction_kwargs)")
        self._truth[instance_id], self._last[instance_id] = str(ground_truth), 0.0
        return instance_id

    async def generate_response(self, instance_id: str, messages: list[dict[str, Any]], **kwargs):
        content = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "assistant"), "")
        score = compute_score(content, self._truth[instance_id], method="strict")
        self._last[instance_id] = score
        solved = score == 1.0
        return solved, self.CORRECT if solved else self.INCORRECT, score, {}

    async def calculate_score(self, instance_id: str, **kwargs) -> float:
        return self._last[instance_id]

    async def finalize_interaction(self, instance_id: str, **kwargs) -> None:
        self._truth.pop(instance_id, None)
        self._last.pop(instance_id, None)
