"""Exact-answer reward for arithmetic chains: 1 when the response's final answer equals the ground truth, else 0,
with no format bonus. The final answer is the last number that is not an operand of a written expression, so
repeating the question ("0 + 3 =") states no answer, even where its last operand happens to be the result."""

from __future__ import annotations

import re

from rlpost.rewards.gsm8k import same_number

_ANSWER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?![0-9.]*\s*[-+*/×÷=])")


def final_answer(response: str) -> str | None:
    found = _ANSWER.findall(response.replace(",", ""))
    return found[-1].rstrip(".") if found else None


def compute_score(solution_str: str, ground_truth, **_) -> dict:
    answer = final_answer(solution_str)
    correct = answer is not None and same_number(answer, str(ground_truth))
    return {"score": float(correct), "acc": correct}
