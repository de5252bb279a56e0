"""Exact-match reward for Search-R1-style retrieval QA, with the semantics of verl's `search_r1_like_qa_em`.

The answer is the last `<answer>...</answer>` span of the response (spanning lines, whitespace around it stripped;
one span is enough: the response alone is scored, not the prompt with its example). Answer and targets are
normalised SQuAD-style (lower case, no punctuation, no articles a/an/the, single spaces) and compared whole.
`ground_truth` is `{"target": str | [str, ...]}`; any target matching pays `score` (1.0), a quarter of it when the
response writes more than 10 opening or closing answer tags; a wrong answer pays `format_score` (0.0) and a response
without an answer span 0.
"""

from __future__ import annotations

import re
import string
from typing import Any

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)
MAX_ANSWER_TAGS = 10  # more opening or closing tags than this cut a correct answer's score to a quarter


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def extract_answer(response: str) -> str | None:
    spans = _ANSWER.findall(response)
    return spans[-1].strip() if spans else None


def targets(ground_truth: Any) -> list[str]:
    """The accepted answers of a row's ground truth: a string or a sequence (a numpy array, as pandas reads
    parquet) under 'target'."""
    if not isinstance(ground_truth, dict) or "target" not in ground_truth:
        raise ValueError(f"search-r1 ground_truth must be a mapping with 'target', got {str(ground_truth)[:200]}")
    target = ground_truth["target"]
    return [target] if isinstance(target, str) else [str(t) for t in target]


def exact_match(answer: str, golden: list[str]) -> bool:
    answer = normalize_answer(answer)
    return any(normalize_answer(g) == answer for g in golden)


def compute_score(solution_str: str, ground_truth: Any, method: str = "strict", format_score: float = 0.0,
                  score: float = 1.0, **_) -> float:
    """`method` is accepted and ignored, as in verl."""
    answer = extract_answer(solution_str)
    if answer is None:
        return 0.0
    if not exact_match(answer, targets(ground_truth)):
        return float(format_score)
    if max(solution_str.count("<answer>"), solution_str.count("</answer>")) > MAX_ANSWER_TAGS:
        return score / 4
    return float(score)
