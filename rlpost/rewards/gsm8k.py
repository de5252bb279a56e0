"""GSM8K answer checking with verl's semantics (verl/utils/reward_score/gsm8k.py), quirks included, so a run scores
GSM8K exactly as verl does:

- only the response's last 300 characters are read;
- 'strict' takes the last "#### " (four hashes and exactly one space) followed by an optional "-" and a run of digits,
  dots and commas, and removes the commas ("####18", "####  18" and "#### $18" hold no answer);
- 'flexible' takes the last run of an optional "-" plus digits, dots and commas anywhere in that tail that is not
  "." alone, and keeps it as written (commas and a sentence's closing dot included: "18." is not "18");
- the answer is compared to the ground truth as a string, as given: "18.00" is not "18", and a ground truth that is
  not a string never matches;
- score if equal, format_score if an answer was found but differs, 0 if none was found.

rlpost's own data (`rlpost preprocess gsm8k`: the reasoning_gym/gsm_symbolic training rows, the GSM8K test rows)
writes ground truths the way verl's preprocessing does, digits without thousands separators ("28080", "9281.25"),
so one rule serves every source and training and validation are scored alike.
"""

from __future__ import annotations

import re

TAIL_CHARS = 300  # verl reads only this many characters from the end of the response
_STRICT = re.compile(r"#### (-?[0-9.,]+)")
_NUMBER = re.compile(r"-?[0-9.,]+")
_NOT_AN_ANSWER = ".", ""  # flexible skips these; when every candidate is one, the first candidate stands


def extract_answer(response: str, method: str = "strict") -> str | None:
    """The answer string verl compares with the ground truth, or None when the response holds none."""
    if method not in ("strict", "flexible"):
        raise ValueError(f"gsm8k extraction method must be 'strict' or 'flexible', got {method!r}")
    tail = response[-TAIL_CHARS:]
    if method == "strict":
        found = _STRICT.findall(tail)
        return found[-1].replace(",", "") if found else None
    found = _NUMBER.findall(tail)
    if not found:
        return None
    return next((candidate for candidate in reversed(found) if candidate not in _NOT_AN_ANSWER), found[0])


def compute_score(solution_str: str, ground_truth, method: str = "strict", format_score: float = 0.0,
                  score: float = 1.0, **_) -> float:
    """score if the extracted answer string equals the ground truth, format_score if an answer was found but
    differs, 0 if none was found (verl's gsm8k.compute_score; the other keywords rlpost passes are ignored)."""
    answer = extract_answer(solution_str, method)
    if answer is None:
        return 0.0
    return score if answer == ground_truth else format_score


def same_number(a: str, b: str) -> bool:
    """Numeric equality of two answer strings (string equality when either is not a number). Not part of the GSM8K
    rule above: rlpost's arithmetic reward and GSM-Symbolic preprocessing use it."""
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b
