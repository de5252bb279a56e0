"""rlpost's rule rewards against verl's default reward table (verl/utils/reward_score/__init__.py,
default_compute_score): which data_source goes to which rule, and what the MATH and math_dapo rules score.
The expected values are worked out by hand from verl's semantics, quirks included."""

import pytest

from rlpost.config.schema import OverlongBufferConfig, RewardConfig
from rlpost.rewards import geo3k, gsm8k, math_dapo, search_r1
from rlpost.rewards import math as math_answers
from rlpost.rewards.registry import (
    MATH_DAPO_SOURCES,
    MATH_SOURCES,
    REWARD_FUNCTIONS,
    UNSUPPORTED_SOURCES,
    RewardError,
    RewardScorer,
    UnsupportedSourceError,
    reward_function,
)
from rlpost.rewards.reward import Reward

# verl's table, written down from its source: data_source -> the rule rlpost must use for it
VERL_TABLE = {
    "openai/gsm8k": gsm8k.compute_score,
    "lighteval/MATH": math_answers.compute_score,
    "DigitalLearningGmbH/MATH-lighteval": math_answers.compute_score,
    "HuggingFaceH4/MATH-500": math_answers.compute_score,
    "math_dapo": math_dapo.compute_score,
    "math": math_dapo.compute_score,
    "math_dapo_reasoning": math_dapo.compute_score,
    "aime": math_dapo.compute_score,  # verl: any name starting with "aime"
    "aime24": math_dapo.compute_score,
    "aime2025": math_dapo.compute_score,
    "aime_2024_validation": math_dapo.compute_score,
    "hiyouga/geometry3k": geo3k.score_and_accuracy,
    **dict.fromkeys(["searchR1_nq", "searchR1_triviaqa", "searchR1_popqa", "searchR1_hotpotqa",
                     "searchR1_2wikimultihopqa", "searchR1_musique", "searchR1_bamboogle"], search_r1.compute_score),
}
VERL_REFUSED = ["numina_aops_forum", "numina_synthetic_math", "numina_amc_aime", "numina_synthetic_amc",
                "numina_cn_k12", "numina_olympiads", "codecontests", "apps", "codeforces", "taco"]


# --- MATH (verl math_reward): last \boxed{}, Hendrycks string normaliser, 1.0 / 0.0 -----------------------------

@pytest.mark.parametrize("response,truth,expected", [
    ("so x is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),  # exactly "0.5" is rewritten to \frac{1}{2}
    ("\\boxed{.5}", "\\frac{1}{2}", 1.0),  # leading "." gets a 0 first
    ("\\boxed{1/2}", "\\frac12", 1.0),  # integer a/b and \frac12 both become \frac{1}{2}
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", 1.0),
    ("\\boxed{\\sqrt{2}}", "\\sqrt2", 1.0),
    ("\\boxed{x = 3}", "3", 1.0),  # a short left-hand side is dropped
    ("\\boxed{abc = 3}", "3", 0.0),  # a long one is not
    ("\\boxed{10\\%}", "10", 1.0),
    ("\\boxed{90^\\circ}", "90", 1.0),
    ("\\boxed{5\\text{ cm}}", "5", 1.0),
    ("\\boxed{\\left( 1, 2 \\right)}", "(1,2)", 1.0),
    ("\\boxed{0.50}", "\\frac{1}{2}", 0.0),  # no numeric evaluation
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 0.0),
    ("\\boxed{5.0}", "5", 0.0),
    ("\\boxed{6}", "5", 0.0),
    ("first \\boxed{3}, finally \\boxed{4}", "4", 1.0),  # the last box counts
    ("first \\boxed{3}, finally \\boxed{4}", "3", 0.0),
    ("The answer is 5", "5", 0.0),  # no box
    ("\\boxed{5", "5", 0.0),  # unclosed
    ("\\fbox{5}", "5", 0.0),  # found but never unwrapped in verl
    ("\\boxed 7$ and more", "7", 1.0),  # "\boxed " + text up to the next $
    ("\\boxed 7 and later \\boxed{8}", "8", 0.0),  # a spaced \boxed anywhere wins over the braced one
    ("\\boxed{\\sqrt}", "\\sqrt", 1.0),  # the normaliser fails on a bare \sqrt: raw strings are compared
    ("\\boxed{\\sqrt}", "\\sqrt ", 0.0),
])
def test_math_scores(response, truth, expected):
    assert math_answers.compute_score(response, truth) == expected


def test_math_extraction_and_normalisation():
    assert math_answers.last_boxed_answer("a \\boxed{\\frac{1}{\\sqrt{3}}} b") == "\\frac{1}{\\sqrt{3}}"
    assert math_answers.last_boxed_answer("none here") is None
    assert math_answers.normalize("\\tfrac{1}{2}") == "\\frac{1}{2}"
    assert math_answers.normalize("k = \\frac1{72}") == "\\frac{1}{72}"
    assert math_answers.normalize("3/4") == "\\frac{3}{4}"
    assert math_answers.normalize("3/x") == "3/x"
    with pytest.raises(TypeError, match="MATH ground_truth must be a string"):
        math_answers.compute_score("\\boxed{5}", 5)


# --- math_dapo (verl math_dapo): "Answer:" line, Minerva normaliser, {score +-1, acc, pred} -----------------------

@pytest.mark.parametrize("response,truth,score,pred", [
    ("Let me think.\nAnswer: 42", "42", 1.0, "42"),
    ("Answer: 41", "42", -1.0, "41"),
    ("The result is 42", "42", -1.0, "[INVALID]"),  # no Answer line: no format credit, -1
    ("Answer: 0.5", "\\frac{1}{2}", -1.0, "0.5"),  # unlike MATH, 0.5 is not \frac{1}{2}
    ("answer : $\\frac12$", "\\frac{1}{2}", 1.0, "\\frac{1}{2}"),
    ("Answer: 5.", "5", -1.0, "5."),  # a trailing period is kept
    ("Answer: 1,000 dollars", "1000", 1.0, "1000"),
    ("Answer: x = \\boxed{7}", "7", 1.0, "7"),
    ("Answer: 3\nhmm, no.\nANSWER:\n  4", "4", 1.0, "4"),  # the last one; whitespace may cross the line
    ("Answer: 42\n" + "x" * 300, "42", -1.0, "[INVALID]"),  # only the last 300 characters are read
    ("Answer: 10^\\circ", "10", 1.0, "10"),
])
def test_math_dapo_scores(response, truth, score, pred):
    assert math_dapo.compute_score(response, truth) == {"score": score, "acc": score == 1.0, "pred": pred}


def test_math_dapo_strict_box_verify():
    strict = {"strict_box_verify": True}
    assert math_dapo.compute_score("so \\boxed{42}", "42", **strict) == {"score": 1.0, "acc": True, "pred": "42"}
    assert math_dapo.compute_score("\\boxed{42 }", "42", **strict)["acc"] is False  # compared verbatim
    assert math_dapo.compute_score("Answer: 42", "42", **strict) == {"score": -1.0, "acc": False, "pred": None}
    response = "y" * 50 + "\\boxed{7}" + "y" * 150
    assert math_dapo.compute_score(response, "7", **strict)["pred"] is None  # box not in the last 100
    assert math_dapo.compute_score(response, "7", pause_tokens_index=[0, 0, 0, 150], **strict)["acc"] is True
    with pytest.raises(ValueError, match="4 entries"):
        math_dapo.compute_score(response, "7", pause_tokens_index=[150], **strict)
    with pytest.raises(TypeError, match="math_dapo ground_truth must be a string"):
        math_dapo.compute_score("Answer: 7", 7)


def test_math_dapo_normalisation():
    norm = math_dapo.normalize_final_answer
    assert norm("\\text{(B)}") == "(B)"
    assert norm("$\\sqrt3$") == "\\sqrt{3}"
    assert norm("\\overline{AB}") == "AB"
    assert norm("12 inches") == "12"
    assert norm("1,234,567") == "1234567"
    assert norm("(1,2)") == "(1,2)"


# --- the table: every source verl names reaches the same rule through rlpost's registry and Reward ---------------

def test_every_verl_source_dispatches_to_its_rule():
    for source, rule in VERL_TABLE.items():
        assert reward_function(source) is rule, source
        fn, _ = RewardScorer().function_for(source)
        assert fn is rule, source
    assert set(MATH_SOURCES) | set(MATH_DAPO_SOURCES) <= set(REWARD_FUNCTIONS.names())
    assert "aime24" not in REWARD_FUNCTIONS  # reached by prefix, as in verl


def test_reward_path_scores_math_and_math_dapo_rows():
    reward = Reward(RewardConfig(custom_function=None, kwargs={},
                                 overlong_buffer=OverlongBufferConfig(enable=False, len=1, penalty_factor=1.0)),
                    max_response_length=100)
    response = "Work.\nAnswer: 7\n\\boxed{7}"
    sources = [*MATH_SOURCES, *MATH_DAPO_SOURCES, "aime24", "aime25"]
    fields = [{"data_source": s, "ground_truth": "7"} for s in sources]
    results = reward([response] * len(sources), fields, [10] * len(sources))
    assert results[:len(MATH_SOURCES)] == [{"score": 1.0}] * len(MATH_SOURCES)
    assert results[len(MATH_SOURCES):] == [{"score": 1.0, "acc": True, "pred": "7"}] * (len(sources) - 3)
    wrong = reward(["\\boxed{8}", "Answer: 8"], [{"data_source": "lighteval/MATH", "ground_truth": "7"},
                                                 {"data_source": "aime2024", "ground_truth": "7"}], [5, 5])
    assert wrong == [{"score": 0.0}, {"score": -1.0, "acc": False, "pred": "8"}]
    with pytest.raises(RewardError, match=r"math_dapo.compute_score raised on sample 0 .*'math'.*TypeError"):
        reward(["Answer: 7"], [{"data_source": "math", "ground_truth": 7}], [5])


def test_sources_verl_scores_with_rules_rlpost_lacks_are_refused_by_name():
    assert set(UNSUPPORTED_SOURCES) == set(VERL_REFUSED)
    for source in VERL_REFUSED:
        with pytest.raises(UnsupportedSourceError, match=f"'{source}' is not supported.*custom_function"):
            RewardScorer().check_sources(["openai/gsm8k", source])
    with pytest.raises(UnsupportedSourceError, match="prime_math"):
        RewardScorer().score(["\\boxed{1}"], ["numina_olympiads"], ["1"])
    with pytest.raises(KeyError, match="unknown reward data_source 'AIME24'"):  # the prefix is case-sensitive
        RewardScorer().check_sources(["AIME24"])
