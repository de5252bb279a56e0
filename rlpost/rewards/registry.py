"""Rule rewards keyed by data_source, custom reward functions by file path, and batch scoring with errors that
name the sample."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rlpost.registry import Registry
from rlpost.rewards import arithmetic, geo3k, gsm8k, math_dapo, search_r1
from rlpost.rewards import math as math_answers  # not `math`: that name is the standard library's here

REWARD_FUNCTIONS: Registry = Registry("reward data_source")
REWARD_FUNCTIONS.register("openai/gsm8k", "gsm8k", "reasoning_gym/gsm_symbolic")(gsm8k.compute_score)
REWARD_FUNCTIONS.register("reasoning_gym/chain_sum")(arithmetic.compute_score)
REWARD_FUNCTIONS.register("hiyouga/geometry3k")(geo3k.score_and_accuracy)
# the data sources verl's default_compute_score sends to search_r1_like_qa_em, and rlpost's offline set
SEARCH_R1_SOURCES = ("searchR1_nq", "searchR1_triviaqa", "searchR1_popqa", "searchR1_hotpotqa",
                     "searchR1_2wikimultihopqa", "searchR1_musique", "searchR1_bamboogle",
                     "searchR1_fanoutqa", "searchR1_wikidesc")  # the last two: rlpost preprocess search-r1
REWARD_FUNCTIONS.register(*SEARCH_R1_SOURCES)(search_r1.compute_score)
# verl's default_compute_score: these go to math_reward (Hendrycks MATH normaliser; 1.0 / 0.0) ...
MATH_SOURCES = ("lighteval/MATH", "DigitalLearningGmbH/MATH-lighteval", "HuggingFaceH4/MATH-500")
REWARD_FUNCTIONS.register(*MATH_SOURCES)(math_answers.compute_score)
# ... and these, plus every source whose name starts with "aime", to math_dapo ("Answer:" line; +1 / -1, acc, pred)
MATH_DAPO_SOURCES = ("math_dapo", "math", "math_dapo_reasoning")
REWARD_FUNCTIONS.register(*MATH_DAPO_SOURCES)(math_dapo.compute_score)
REWARD_PREFIXES: dict[str, Callable] = {"aime": math_dapo.compute_score}  # asked after the exact names
# Sources verl's default table scores with rules rlpost does not have: refused by name instead of "unknown".
_PRIME_MATH = ("verl sends it to prime_math (sympy simplification and LaTeX parsing under timeouts), which rlpost "
               "does not reimplement")
_CODE = ("verl runs the code against its tests in sandbox_fusion or prime_code, which rlpost has no reward rule "
         "for")
UNSUPPORTED_SOURCES: dict[str, str] = {
    **dict.fromkeys(("numina_aops_forum", "numina_synthetic_math", "numina_amc_aime", "numina_synthetic_amc",
                     "numina_cn_k12", "numina_olympiads"), _PRIME_MATH),
    **dict.fromkeys(("codecontests", "apps", "codeforces", "taco"), _CODE),
}


class UnsupportedSourceError(NotImplementedError):
    pass


def reward_function(data_source: str) -> Callable:
    """The rule for a data_source: an exact registration, else a prefix's (verl's aime*); a source verl scores with
    a rule rlpost lacks raises UnsupportedSourceError, any other unknown one KeyError naming its neighbours."""
    if data_source in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS.get(data_source)
    if data_source in UNSUPPORTED_SOURCES:
        raise UnsupportedSourceError(f"reward data_source {data_source!r} is not supported: "
                                     f"{UNSUPPORTED_SOURCES[data_source]}; score it with reward.custom_function")
    for prefix, fn in REWARD_PREFIXES.items():
        if data_source.startswith(prefix):
            return fn
    return REWARD_FUNCTIONS.get(data_source)


class RewardError(RuntimeError):
    pass


def load_custom_function(spec: str) -> Callable:
    """'path/to/file.py:function' -> the function, loaded from that file without touching sys.path."""
    path, sep, name = spec.rpartition(":")
    if not sep or not name or not path.endswith(".py"):
        raise ValueError(f"custom reward function {spec!r}: expected 'path/to/file.py:function_name'")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"custom reward function {spec!r}: file '{file}' not found")
    module_spec = importlib.util.spec_from_file_location(f"rlpost_custom_reward_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    fn = getattr(module, name, None)
    if not callable(fn):
        raise AttributeError(f"custom reward function {spec!r}: '{file}' defines no function '{name}'")
    return fn


class RewardScorer:
    """Scores decoded responses. Functions are called with verl's keywords (data_source, solution_str,
    ground_truth, extra_info, plus reward.kwargs), so verl custom reward files work unchanged. A function returns
    a number or a dict with 'score' (other keys are kept as per-sample extras, e.g. 'acc')."""

    def __init__(self, custom_function: str | None = None, kwargs: dict | None = None):
        self.custom = load_custom_function(custom_function) if custom_function else None
        self.custom_name = custom_function
        self.kwargs = dict(kwargs or {})

    def function_for(self, data_source: str) -> tuple[Callable, str]:
        if self.custom is not None:
            return self.custom, self.custom_name
        fn = reward_function(data_source)
        return fn, f"{fn.__module__}.{fn.__name__}"

    def check_sources(self, data_sources: Sequence[str]) -> None:
        """Fail at start-up, not at the first reward, when a dataset names a source with no rule."""
        if self.custom is None:
            for source in sorted(set(data_sources)):
                reward_function(source)

    def score(self, responses: Sequence[str], data_sources: Sequence[str], ground_truths: Sequence[Any],
              extra_infos: Sequence[dict] | None = None) -> tuple[list[float], list[dict]]:
        scores, extras = [], []
        for i, (response, source, truth) in enumerate(zip(responses, data_sources, ground_truths, strict=True)):
            fn, name = self.function_for(source)
            extra_info = extra_infos[i] if extra_infos is not None else {}
            try:
                result = fn(data_source=source, solution_str=response, ground_truth=truth, extra_info=extra_info,
                            **self.kwargs)
            except Exception as e:
                raise RewardError(f"reward function {name} raised on sample {i} (data_source={source!r}): "
                                  f"{type(e).__name__}: {e}") from e
            extra = {}
            if isinstance(result, dict):
                if "score" not in result:
                    raise RewardError(f"reward function {name} returned a dict without 'score' on sample {i}")
                extra = {k: v for k, v in result.items() if k != "score"}
                result = result["score"]
            if isinstance(result, bool) or not isinstance(result, (int, float)) or not math.isfinite(result):
                raise RewardError(f"reward function {name} returned {result!r} on sample {i} "
                                  f"(data_source={source!r}); expected a finite number")
            scores.append(float(result))
            extras.append(extra)
        return scores, extras
