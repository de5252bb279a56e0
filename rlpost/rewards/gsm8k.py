"""GSM8K answer checking. 'strict' reads only the '#### n' line the prompt asks for; 'flexible' takes the last
number anywhere in the response (useful to measure a model that ignores the format)."""

from __future__ import annotations

import re

_STRICT = re.compile(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
_NUMBER = re.compile(r"-?[0-9][0-9,]*(?:\.[0-9]+)?")


def normalize_number(text: str) -> str:
    return text.replace(",", "").rstrip(".")


def extract_answer(response: str, method: str = "strict") -> str | None:
    if method == "strict":
        found = _STRICT.findall(response)
    elif method == "flexible":
        found = _NUMBER.findall(response)
    else:
        raise ValueError(f"gsm8k extraction method must be 'strict' or 'flexible', got {method!r}")
    return normalize_number(found[-1]) if found else None


def same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def compute_score(solution_str: str, ground_truth, method: str = "strict", format_score: float = 0.0,
                  score: float = 1.0, **_) -> float:
    """score if the extracted answer equals the ground truth, format_score if an answer was found but is wrong,
    0 if none was found."""
    answer = extract_answer(solution_str, method)
    if answer is None:
        return 0.0
    return score if same_number(answer, normalize_number(str(ground_truth))) else format_score
