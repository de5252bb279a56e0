"""DAPO-Math and AIME answer checking (math_dapo, math, math_dapo_reasoning, aime*) with the semantics of verl's
math_dapo rule (Minerva-style final-answer matching), so DAPO recipes train on the reward verl gives them.

Only the last 300 characters of the response are read. The answer is the rest of the line after the last
`Answer:` (any case, spaces allowed around the colon); without one the prediction is the literal "[INVALID]".
Prediction and ground truth both go through `normalize_final_answer` and must then be equal as strings: no symbolic
algebra, so "0.5" and "\\frac{1}{2}" differ, and a trailing period ("5.") is kept and makes the answer wrong.
The result is a dict: score 1.0 when correct and -1.0 otherwise (a missing answer included, no format credit),
acc (bool) and pred (the normalised prediction).

strict_box_verify=True (off in verl's default table; rlpost passes it through reward.kwargs) instead reads the
last `\\boxed{...}` in the final 100 of those characters (or from 100 before pause_tokens_index[-1], which must have
4 entries) and compares its content to the ground truth verbatim; pred is the box content or None.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rlpost.rewards.math import closing_brace

TAIL_CHARS = 300  # the longest MATH-500 answer is well inside this
STRICT_BOX_CHARS = 100
NO_ANSWER = "[INVALID]"
_ANSWER_LINE = re.compile(r"answer\s*:\s*([^\n]+)", re.IGNORECASE)
_OPEN_BOX = "\\boxed{"

# Normalisation, applied in this order. The bare-substring edits are blunt (dropping "a " also changes
# "Juan went"); they are kept as they are because the reward has to agree with verl's, not be clever.
_REPLACEMENTS = (("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                 (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"))
_UNIT_WORDS = ("square ways integers dollars mph inches hours km units \\ldots sue points feet minutes digits cents "
               "degrees cm gm pounds meters meals edges students childrentickets multiples").split()
_DROPPED_LATEX = ("\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}",
                  "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots")
_REWRITES = (
    (re.compile(r".*?\$(.*?)\$.*"), r"$\1$"),  # keep the first $...$ of a line
    (re.compile(r"\\text\{(.*?)\}"), r"\1"),
    (re.compile(r"\\textbf\{(.*?)\}"), r"\1"),
    (re.compile(r"\\overline\{(.*?)\}"), r"\1"),
    (re.compile(r"\\boxed\{(.*)\}"), r"\1"),
    (re.compile(r"frac([^{])(.)"), r"frac{\1}{\2}"),  # \frac12 -> \frac{1}{2}
    (re.compile(r"sqrt([^{])"), r"sqrt{\1}"),  # \sqrt3 -> \sqrt{3}
)


def normalize_final_answer(answer: str) -> str:
    """The canonical form of a final answer: the right-hand side of any `=`, without spaces, units, text
    wrappers, `$` and thousands separators of plain integers."""
    answer = answer.split("=")[-1]
    for old, new in _REPLACEMENTS:
        answer = answer.replace(old, new)
    for dropped in (*_UNIT_WORDS, *_DROPPED_LATEX):
        answer = answer.replace(dropped, "")
    for pattern, replacement in _REWRITES:
        answer = pattern.sub(replacement, answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer.strip()


def last_boxed_content(text: str) -> str | None:
    """The content of the last `\\boxed{...}` whose braces close, else None."""
    start = text.rfind(_OPEN_BOX)
    end = closing_brace(text, start) if start >= 0 else None
    return None if end is None else text[start + len(_OPEN_BOX): end]


def minerva_check(response: str, ground_truth: str) -> tuple[bool, str]:
    found = _ANSWER_LINE.findall(response)
    pred = normalize_final_answer(found[-1] if found else NO_ANSWER)
    return pred == normalize_final_answer(ground_truth), pred


def strict_box_check(response: str, ground_truth: str,
                     pause_tokens_index: Sequence[int] | None = None) -> tuple[bool, str | None]:
    if pause_tokens_index is None:
        window = response[-STRICT_BOX_CHARS:]
    else:
        if len(pause_tokens_index) != 4:
            raise ValueError(f"pause_tokens_index must have 4 entries, got {list(pause_tokens_index)}")
        window = response[pause_tokens_index[-1] - STRICT_BOX_CHARS:]
    pred = last_boxed_content(window)
    return pred == ground_truth, pred


def compute_score(solution_str: str, ground_truth: str, strict_box_verify: bool = False,
                  pause_tokens_index: Sequence[int] | None = None, **_) -> dict:
    if not isinstance(ground_truth, str):
        raise TypeError(f"math_dapo ground_truth must be a string, got {type(ground_truth).__name__}: "
                        f"{str(ground_truth)[:200]}")
    tail = solution_str[-TAIL_CHARS:]
    if strict_box_verify:
        correct, pred = strict_box_check(tail, ground_truth, pause_tokens_index)
    else:
        correct, pred = minerva_check(tail, ground_truth)
    return {"score": 1.0 if correct else -1.0, "acc": correct, "pred": pred}
