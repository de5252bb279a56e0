"""Geometry problems drawn offline, in verl's geo3k row format (`hiyouga/geometry3k`): the figure is the row's one
image (PNG bytes in `images`), the problem text is Geometry3K's terse "<image>Find x." style, and the numbers needed
to answer are only in the figure, as in Geometry3K, so text alone cannot solve a problem.

Five kinds, each answered by a computed value written the way Geometry3K writes answers (integers, one decimal, or a
simplified radical such as 2\\sqrt{13}): a triangle's third angle, a right triangle's hypotenuse, a supplementary
angle, a rectangle's area, a circle's circumference. Figures come in three widths and three heights, so prompts carry
different numbers of image tokens.

A problem is one (kind, numbers) pair; it goes to the test split when a hash of it says so, whichever seed drew it,
so the splits share no problem (the figure's size and layout are not part of it).
"""

from __future__ import annotations

import hashlib
import io
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rlpost.data.io import write_rows

DATA_SOURCE = "hiyouga/geometry3k"
TOOL_NAME = "calc_geo3k_reward"
INSTRUCTION = ("You FIRST think about the reasoning process as an internal monologue and then provide the final "
               "answer. The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST "
               "BE put in \\boxed{}.")
# Qwen2.5-VL's chat template does not write tool schemas into prompts, so the prompt shows the call itself
SYSTEM_PROMPT = ("You are a math expert. Solve the question step by step, then check your answer with the "
                 f"`{TOOL_NAME}` tool at least once before giving the final answer, and refine it if the tool says "
                 f'it is wrong. To call the tool, write {{"name": "{TOOL_NAME}", "arguments": {{"answer": "<your '
                 'answer>"}} on a line of its own.')
WIDTHS, HEIGHTS = (224, 280, 336), (168, 224, 280)
TEST_SHARE = 8  # one problem in TEST_SHARE is held out


@dataclass(frozen=True)
class Problem:
    kind: str
    numbers: tuple[int, ...]
    question: str
    answer: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{','.join(map(str, self.numbers))}"


def held_out(problem: Problem) -> bool:
    digest = hashlib.blake2b(problem.key.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % TEST_SHARE == 0


def radical(n: int) -> str:
    """sqrt(n) simplified as Geometry3K writes it: 5, 2\\sqrt{13}, \\sqrt{7}."""
    outside, inside = 1, n
    for f in range(int(math.isqrt(n)), 1, -1):
        if inside % (f * f) == 0:
            outside, inside = outside * f, inside // (f * f)
            break
    if inside == 1:
        return str(outside)
    return f"\\sqrt{{{inside}}}" if outside == 1 else f"{outside}\\sqrt{{{inside}}}"


def _draw_problem(rng: random.Random) -> tuple[Problem, Callable]:
    """A random problem and the function that draws its figure on (draw, width, height, font)."""
    kind = rng.choice(("triangle_angle", "hypotenuse", "supplementary", "rectangle_area", "circumference"))
    if kind == "triangle_angle":
        a = rng.randint(25, 95)
        b = rng.randint(25, min(95, 150 - a))
        return Problem(kind, (a, b), "<image>Find x.", str(180 - a - b)), lambda d, w, h, f: _triangle(
            d, w, h, f, (f"{a}°", f"{b}°", "x°"))
    if kind == "hypotenuse":
        a, b = rng.randint(2, 15), rng.randint(2, 15)
        return Problem(kind, (a, b), "<image>Find x.", radical(a * a + b * b)), lambda d, w, h, f: _right_triangle(
            d, w, h, f, str(a), str(b), "x")
    if kind == "supplementary":
        a = rng.randint(20, 160)
        return Problem(kind, (a,), "<image>Find x.", str(180 - a)), lambda d, w, h, f: _line_angles(
            d, w, h, f, a, f"{a}°", "x°")
    if kind == "rectangle_area":
        a, b = rng.randint(2, 25), rng.randint(2, 25)
        return Problem(kind, (a, b), "<image>Find the area of the figure.", str(a * b)), lambda d, w, h, f: (
            _rectangle(d, w, h, f, f"{a} cm", f"{b} cm"))
    r = rng.randint(2, 30)
    return (Problem(kind, (r,), "<image>Find the circumference of the circle. Round to the nearest tenth.",
                    f"{2 * math.pi * r:.1f}"), lambda d, w, h, f: _circle(d, w, h, f, f"{r} in"))


def _text(draw, xy, label, font):
    draw.text(xy, label, fill="black", font=font, anchor="mm")


def _triangle(draw, w, h, font, labels):
    pts = [(0.12 * w, 0.85 * h), (0.88 * w, 0.85 * h), (0.45 * w, 0.15 * h)]
    draw.polygon(pts, outline="black", width=2)
    cx, cy = sum(p[0] for p in pts) / 3, sum(p[1] for p in pts) / 3
    for (x, y), label in zip(pts, labels):
        _text(draw, (x + 0.3 * (cx - x), y + 0.3 * (cy - y)), label, font)


def _right_triangle(draw, w, h, font, leg_a, leg_b, hyp):
    a, b, c = (0.2 * w, 0.85 * h), (0.8 * w, 0.85 * h), (0.2 * w, 0.15 * h)
    draw.polygon([a, b, c], outline="black", width=2)
    s = 0.06 * min(w, h)
    draw.line([(a[0] + s, a[1]), (a[0] + s, a[1] - s), (a[0], a[1] - s)], fill="black", width=1)
    _text(draw, ((a[0] + b[0]) / 2, a[1] + 0.07 * h), leg_b, font)
    _text(draw, (a[0] - 0.08 * w, (a[1] + c[1]) / 2), leg_a, font)
    _text(draw, ((b[0] + c[0]) / 2 + 0.06 * w, (b[1] + c[1]) / 2 - 0.04 * h), hyp, font)


def _line_angles(draw, w, h, font, degrees, known, unknown):
    y, x0 = 0.7 * h, w / 2
    draw.line([(0.05 * w, y), (0.95 * w, y)], fill="black", width=2)
    length, theta = 0.55 * min(w, h), math.radians(degrees)
    draw.line([(x0, y), (x0 + length * math.cos(theta), y - length * math.sin(theta))], fill="black", width=2)
    r = 0.2 * min(w, h)
    _text(draw, (x0 + r * math.cos(theta / 2), y - r * math.sin(theta / 2)), known, font)
    mid = (theta + math.pi) / 2
    _text(draw, (x0 + r * math.cos(mid), y - r * math.sin(mid)), unknown, font)


def _rectangle(draw, w, h, font, width_label, height_label):
    box = (0.2 * w, 0.2 * h, 0.75 * w, 0.8 * h)
    draw.rectangle(box, outline="black", width=2)
    _text(draw, ((box[0] + box[2]) / 2, box[3] + 0.08 * h), width_label, font)
    _text(draw, (box[2] + 0.12 * w, (box[1] + box[3]) / 2), height_label, font)


def _circle(draw, w, h, font, radius_label):
    r, cx, cy = 0.38 * min(w, h), w / 2, h / 2
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline="black", width=2)
    draw.line([(cx, cy), (cx + r, cy)], fill="black", width=2)
    draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill="black")
    _text(draw, (cx + r / 2, cy - 0.07 * h), radius_label, font)


def render(draw_figure: Callable, width: int, height: int) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (width, height), "white")
    draw_figure(ImageDraw.Draw(image), width, height, ImageFont.load_default(size=max(12, height // 12)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def make_row(problem: Problem, png: bytes, index: int, split: str, multiturn: bool) -> dict:
    prompt = [{"role": "user", "content": f"{problem.question} {INSTRUCTION}"}]
    extra = {"split": split, "index": index, "answer": problem.answer, "question": problem.question}
    if multiturn:
        prompt.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
        extra["tools_kwargs"] = {TOOL_NAME: {"create_kwargs": {"ground_truth": problem.answer}}}
    return {"data_source": DATA_SOURCE, "prompt": prompt, "images": [{"bytes": png, "path": None}],
            "ability": "math", "reward_model": {"style": "rule", "ground_truth": problem.answer}, "extra_info": extra}


def problems(train_size: int, test_size: int, seed: int) -> dict[str, list[tuple[Problem, bytes]]]:
    rng = random.Random(seed)
    want = {"train": train_size, "test": test_size}
    out: dict[str, dict[str, tuple[Problem, bytes]]] = {"train": {}, "test": {}}
    for _ in range(100 * (train_size + test_size)):
        problem, draw_figure = _draw_problem(rng)
        width, height = rng.choice(WIDTHS), rng.choice(HEIGHTS)
        split = "test" if held_out(problem) else "train"
        if len(out[split]) < want[split] and problem.key not in out[split]:
            out[split][problem.key] = (problem, render(draw_figure, width, height))
        if all(len(out[s]) >= want[s] for s in out):
            return {s: list(v.values()) for s, v in out.items()}
    raise ValueError(f"too few distinct geometry problems for {want}")


def build_default(out_dir: str | Path, train_size: int, test_size: int, seed: int,
                  multiturn: bool = False) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    drawn = problems(train_size, test_size, seed)
    return tuple(write_rows([make_row(p, png, i, split, multiturn) for i, (p, png) in enumerate(drawn[split])],
                            out_dir / f"{split}.parquet") for split in ("train", "test"))
