"""Tools that let the model submit an answer and read back its score (verl's gsm8k and geo3k tools)."""

from __future__ import annotations

from typing import Any

from rlpost.tools.base import BaseTool, ToolResponse
from rlpost.tools.schema import ToolSchema

REPEAT_PENALTY = -0.05


class AnswerCheckTool(BaseTool):
    """A submission that does not beat the reward it is compared with costs REPEAT_PENALTY, so guessing repeatedly
    does not pay. Subclasses say how an answer is scored and whether that reward is the trajectory's best so far
    (gsm8k) or its last submission's (geo3k, as verl's tool does)."""

    keep_best = True

    def __init__(self, config: dict, tool_schema: ToolSchema | None):
        super().__init__(config, tool_schema)
        self._state: dict[str, dict] = {}

    def score(self, answer: str, ground_truth: str) -> float:
        raise NotImplementedError

    def submitted(self, answer: str) -> str:
        """The answer as the scorer reads it."""
        return answer

    async def create(self, instance_id: str | None = None, ground_truth: str | None = None, **kwargs):
        instance_id, response = await super().create(instance_id)
        if ground_truth is None:
            raise ValueError(f"{self.name}: create needs ground_truth (tools_kwargs.{self.name}.create_kwargs)")
        self._state[instance_id] = {"answer": "", "ground_truth": str(ground_truth), "reward": 0.0}
        return instance_id, response

    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs):
        state = self._state[instance_id]
        answer = str(parameters.get("answer", ""))
        state["answer"] = self.submitted(answer)
        reward = await self.calc_reward(instance_id)
        step_reward = 0.0 if reward > state["reward"] else REPEAT_PENALTY
        state["reward"] = max(state["reward"], reward) if self.keep_best else reward
        return ToolResponse(text=f"Current parsed answer={answer!r} reward={reward}"), step_reward, {}

    async def calc_reward(self, instance_id: str, **kwargs) -> float:
        state = self._state[instance_id]
        return self.score(state["answer"], state["ground_truth"])

    async def release(self, instance_id: str, **kwargs) -> None:
        self._state.pop(instance_id, None)
