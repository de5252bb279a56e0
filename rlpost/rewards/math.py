"""MATH-style answer checking (lighteval/MATH, DigitalLearningGmbH/MATH-lighteval, HuggingFaceH4/MATH-500) with the
semantics of verl's math_reward rule (the Hendrycks-MATH string normaliser of lm-evaluation-harness), so rewards and
validation accuracy are comparable with verl runs on the same data.

The answer is the last `\\boxed{...}` of the response (braces balanced). Two quirks are kept on purpose, since verl
scores them so: when the response contains `\\boxed ` (with a space) anywhere, the answer is the text after the last
such marker up to the next `$`; and an `\\fbox{...}` or a `\\boxed` not followed by `{` never scores. Answer and
ground truth are then compared as strings after the normaliser below (no symbolic algebra): it drops spacing,
`\\left`/`\\right`, degree marks, `\\$`, `%`, a trailing `\\text{ unit}` and a short `x =` prefix, spells out
`\\frac12` and `\\sqrt3`, turns `a/b` of integers into `\\frac{a}{b}` and exactly `0.5` into `\\frac{1}{2}`. So
"0.5" equals "\\frac{1}{2}" and "1/2", but "0.50", "2/4" and "\\frac{2}{4}" do not, and "5" does not equal "5.0".
Where the normaliser cannot handle a string (a `\\sqrt` or `\\frac` with nothing after it, two `\\text{ ` units),
the raw strings are compared instead. The score is 1.0 or 0.0, a plain number as in verl.
"""

from __future__ import annotations

_BOX = "\\boxed"
_SPACED_BOX = "\\boxed "
_OPEN_BOX = "\\boxed{"


def last_boxed_answer(response: str) -> str | None:
    """The content of the response's last boxed answer, or None when it has none verl would read."""
    if _SPACED_BOX in response:
        return response.rsplit(_SPACED_BOX, 1)[1].split("$", 1)[0]
    start = response.rfind(_BOX)
    if start < 0:
        start = response.rfind("\\fbox")  # found, but never a valid answer: only `\boxed{` is unwrapped
        if start < 0:
            return None
    end = closing_brace(response, start)
    if end is None or not response.startswith(_OPEN_BOX, start):
        return None
    return response[start + len(_OPEN_BOX): end]


def closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` at which the brace depth counted from `start` first comes back to zero."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


class _Unnormalisable(ValueError):
    """The normaliser has no reading of this string; the caller compares the raw strings."""


def _spell_out_sqrt(s: str) -> str:
    """`\\sqrt3` -> `\\sqrt{3}` (one character is taken as the radicand)."""
    head, *rest = s.split("\\sqrt")
    out = [head]
    for piece in rest:
        if not piece:
            raise _Unnormalisable("\\sqrt with nothing after it")
        out.append("\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:]))
    return "".join(out)


def _spell_out_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{72}` -> `\\frac{1}{72}`; a `\\frac` followed by a single character
    leaves the whole string as it was."""
    head, *rest = s.split("\\frac")
    out = [head]
    for piece in rest:
        if not piece:
            raise _Unnormalisable("\\frac with nothing after it")
        if piece[0] == "{":
            out.append("\\frac" + piece)
        elif len(piece) < 2:
            return s
        elif piece[1] == "{":
            out.append("\\frac{" + piece[0] + "}" + piece[1:])
        else:
            out.append("\\frac{" + piece[0] + "}{" + piece[1] + "}" + piece[2:])
    return "".join(out)


def _integer_slash_as_frac(s: str) -> str:
    """`3/4` -> `\\frac{3}{4}`, only when both sides are plainly written integers."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        num, den = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    return f"\\frac{{{num}}}{{{den}}}" if f"{num}/{den}" == s else s


def normalize(s: str) -> str:
    """The canonical string form of a MATH answer (see the module docstring); raises _Unnormalisable."""
    for old, new in (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                     ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", "")):
        s = s.replace(old, new)
    if "\\text{ " in s:  # a unit written after the value
        value, *units = s.split("\\text{ ")
        if len(units) != 1:
            raise _Unnormalisable("more than one \\text{ unit")
        s = value
    s = s.replace("\\\\%", "").replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s.startswith("."):
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:  # "x = 3", "k=3"
        s = sides[1]
    s = _spell_out_sqrt(s).replace(" ", "")
    s = _spell_out_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _integer_slash_as_frac(s)


def is_equiv(answer: str, ground_truth: str) -> bool:
    try:
        return normalize(answer) == normalize(ground_truth)
    except _Unnormalisable:
        return answer == ground_truth


def compute_score(solution_str: str, ground_truth: str, **_) -> float:
    """1.0 when the last boxed answer matches the ground truth after normalisation, else 0.0 (also when there is
    no boxed answer). A non-string ground truth is a data error and raises (verl would score it 0)."""
    if not isinstance(ground_truth, str):
        raise TypeError(f"MATH ground_truth must be a string, got {type(ground_truth).__name__}: "
                        f"{str(ground_truth)[:200]}")
    answer = last_boxed_answer(solution_str)
    return 1.0 if answer is not None and is_equiv(answer, ground_truth) else 0.0
