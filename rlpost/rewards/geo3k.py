"""Geometry3K (`hiyouga/geometry3k`) with the semantics of verl's geo3k rule: (1 - format_score) x correctness of
the last `\\boxed{}` (mathruler's grader: LaTeX normalised, then sympy equality) + format_score x format, where the
format is a `<think>...</think>` block followed somewhere by a `\\boxed{...}`. format_score is 0.1 by default."""

from __future__ import annotations

import re

from mathruler.grader import extract_boxed_content, grade_answer

_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)


def format_reward(solution_str: str) -> float:
    return 1.0 if _FORMAT.fullmatch(solution_str) else 0.0


def accuracy_reward(solution_str: str, ground_truth: str, use_boxed: bool = True) -> float:
    """use_boxed=False grades the whole string (the geo3k tool's answers are bare)."""
    answer = extract_boxed_content(solution_str) if use_boxed else solution_str
    return 1.0 if grade_answer(answer, str(ground_truth)) else 0.0


def compute_score(solution_str: str, ground_truth: str, use_boxed: bool = True, format_score: float = 0.1,
                  **_) -> float:
    return ((1.0 - format_score) * accuracy_reward(solution_str, ground_truth, use_boxed)
            + format_score * format_reward(solution_str))


def score_and_accuracy(solution_str: str, ground_truth: str, **kwargs) -> dict:
    """verl's score, with the boxed answer's correctness alone as `acc` (validation reports it)."""
    return {"score": compute_score(solution_str, ground_truth, **kwargs),
            "acc": accuracy_reward(solution_str, ground_truth, kwargs.get("use_boxed", True))}
