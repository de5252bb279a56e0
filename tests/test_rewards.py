import math

import numpy as np
import pytest

from rlpost.rewards.gsm8k import compute_score, extract_answer
from rlpost.rewards.registry import REWARD_FUNCTIONS, RewardError, RewardScorer, load_custom_function


# GSM8K follows verl/utils/reward_score/gsm8k.py; these answers are worked out by hand from its rules (the last
# 300 characters; strict: "#### " then [-][0-9.,]+, commas removed; flexible: the last [-][0-9.,]+ run that is not
# "." alone, kept as written; string comparison with the ground truth).
@pytest.mark.parametrize("text,method,expected", [
    ("so 3 + 4 = 7\n#### 7", "strict", "7"),
    ("#### 1,250.", "strict", "1250."),  # commas go, the sentence's dot stays
    ("#### $-3.5", "strict", None),  # "$" is not in the answer's characters, so nothing follows "#### "
    ("#### -3.5", "strict", "-3.5"),
    ("####18", "strict", None),  # "#### " needs its space
    ("####  18", "strict", None),  # and exactly one
    ("##### 18", "strict", "18"),  # the last four hashes and the space match
    ("first #### 2 then #### 5", "strict", "5"),
    ("#### 18 and then 19", "strict", "18"),
    ("#### ,,,", "strict", ""),  # an answer, empty once the commas go
    ("the answer is 42", "strict", None),
    ("the answer is 42, not 41", "flexible", "41"),
    ("the answer is 42, not 41.", "flexible", "41."),  # "41." is one run
    ("the answer is 41. Done.", "flexible", "41."),  # the last "." alone is skipped
    ("costs $1,000 in total.", "flexible", "1,000"),  # flexible keeps commas
    ("so 5, then", "flexible", "5,"),
    ("#### 18", "flexible", "18"),
    ("dots . only .", "flexible", "."),  # every run is "." alone: the first stands
    ("no digits", "flexible", None),
])
def test_extraction(text, method, expected):
    assert extract_answer(text, method) == expected


@pytest.mark.parametrize("text,method,truth,expected", [
    ("#### 18", "strict", "18", 1.0),
    ("#### 18.00", "strict", "18", 0.0),  # strings, not numbers
    ("#### 18.", "strict", "18", 0.0),
    ("####18", "strict", "18", 0.0),  # no answer: 0 even with a format score
    ("#### $5", "strict", "5", 0.0),
    ("#### 1,000", "strict", "1000", 1.0),
    ("#### -7", "strict", "-7", 1.0),
    ("#### 18", "strict", 18, 0.0),  # a ground truth that is not a string never equals the answer
    ("I think 18", "strict", "18", 0.0),
    ("I think 18", "flexible", "18", 1.0),
    ("I think 18.", "flexible", "18", 0.0),
    ("it is 1,000", "flexible", "1000", 0.0),
    ("#### 17 and 18", "flexible", "18", 1.0),
    ("#### 18 and 17", "flexible", "18", 0.0),
])
def test_gsm8k_verl_semantics(text, method, truth, expected):
    assert compute_score(text, truth, method=method) == expected


@pytest.mark.parametrize("method", ["strict", "flexible"])
def test_gsm8k_reads_the_last_300_characters(method):
    answer = "#### 18"
    assert compute_score(answer + "x" * 293, "18", method=method) == 1.0  # 300 characters: all read
    # 301: the first "#" falls off, leaving "### 18": strict finds nothing, flexible still reads 18
    assert compute_score(answer + "x" * 294, "18", method=method) == float(method == "flexible")
    assert compute_score(answer + "x" * 300, "18", method=method, format_score=0.1) == 0.0  # all of it falls off
    assert compute_score("x" * 1000 + answer, "18", method=method) == 1.0
    # 12345 straddles the cut: only "45" is left of it
    assert compute_score("#### 12345" + "y" * 298, "45", method=method) == float(method == "flexible")


def test_gsm8k_format_score_and_score():
    assert compute_score("#### 17", "18", format_score=0.1) == 0.1  # an answer, wrong
    assert compute_score("#### 18.0", "18", format_score=0.1) == 0.1
    assert compute_score("no answer", "18", format_score=0.1) == 0.0  # no answer: 0, not the format score
    assert compute_score("####18", "18", format_score=0.1) == 0.0
    assert compute_score("#### 18", "18", format_score=0.1, score=2.0) == 2.0
    assert compute_score("words only", "18", method="flexible", format_score=0.1) == 0.0
    assert compute_score("it is 17", "18", method="flexible", format_score=0.1) == 0.1
    assert compute_score("dots . only", "18", method="flexible", format_score=0.1) == 0.1  # "." counts as found


def test_gsm8k_scores():
    assert compute_score("#### 18", "18") == 1.0
    assert compute_score("#### 17", "18") == 0.0
    assert compute_score("#### 17", "18", format_score=0.1) == 0.1
    assert compute_score("I think 18", "18") == 0.0
    assert compute_score("I think 18", "18", method="flexible") == 1.0
    with pytest.raises(ValueError, match="strict' or 'flexible"):
        compute_score("#### 1", "1", method="loose")


def test_scorer_routes_by_data_source_and_passes_kwargs():
    scorer = RewardScorer(kwargs={"method": "flexible"})
    scores, extras = scorer.score(["it is 5", "#### 6"], ["openai/gsm8k", "reasoning_gym/gsm_symbolic"], ["5", "7"])
    assert scores == [1.0, 0.0] and extras == [{}, {}]
    with pytest.raises(KeyError, match="did you mean 'gsm8k'"):
        scorer.check_sources(["gsm8k", "gsm8kk"])
    assert "openai/gsm8k" in REWARD_FUNCTIONS


def test_custom_function_verl_signature_and_dict_results(tmp_path):
    f = tmp_path / "my_reward.py"
    f.write_text(
        "def score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):\n"
        "    return {'score': float(solution_str == ground_truth) + bonus, 'acc': solution_str == ground_truth}\n"
    )
    scorer = RewardScorer(f"{f}:score", {"bonus": 0.5})
    scores, extras = scorer.score(["a", "b"], ["anything", "else"], ["a", "a"])
    assert scores == [1.5, 0.5] and extras == [{"acc": True}, {"acc": False}]


def test_reward_errors_name_the_sample(tmp_path):
    f = tmp_path / "bad.py"
    f.write_text(
        "def boom(solution_str, **_):\n"
        "    if solution_str == 'x':\n        raise ZeroDivisionError('nope')\n    return 1.0\n"
        "def nan(**_):\n    return float('nan')\n"
        "def nodict(**_):\n    return {'acc': 1}\n"
    )
    with pytest.raises(RewardError, match=r"raised on sample 2 \(data_source='s'\): ZeroDivisionError: nope") as e:
        RewardScorer(f"{f}:boom").score(["a", "b", "x"], ["s"] * 3, ["t"] * 3)
    assert isinstance(e.value.__cause__, ZeroDivisionError)
    with pytest.raises(RewardError, match="returned nan on sample 0"):
        RewardScorer(f"{f}:nan").score(["a"], ["s"], ["t"])
    with pytest.raises(RewardError, match="without 'score' on sample 0"):
        RewardScorer(f"{f}:nodict").score(["a"], ["s"], ["t"])
    with pytest.raises(AttributeError, match="defines no function 'missing'"):
        load_custom_function(f"{f}:missing")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_custom_function(f"{tmp_path}/none.py:f")
    with pytest.raises(ValueError, match="expected 'path/to/file.py:function_name'"):
        load_custom_function("module.function")
    assert math.isfinite(RewardScorer().score(["#### 1"], ["gsm8k"], ["1"])[0][0])


def test_arithmetic_reward_pays_the_stated_answer_only():
    """1 for the right final answer, 0 otherwise, and no format bonus; repeating the question states no answer,
    even when its last operand is the result (the one answer a policy could collect without computing)."""
    from rlpost.rewards.arithmetic import compute_score, final_answer

    assert [final_answer(t) for t in ["1 - 6 = -5", "The answer is 1.", "0 + 3 =", "3 + 4 = 7. So, 7", "1,000"]] == [
        "-5", "1", None, "7", "1000"]
    assert compute_score("2 - 0 - 6 = -4.", "-4") == {"score": 1.0, "acc": True}
    assert compute_score("The final answer is 13.", "14") == {"score": 0.0, "acc": False}
    assert compute_score("0 + 3 =", "3") == {"score": 0.0, "acc": False}
    assert compute_score("I cannot tell.", "3") == {"score": 0.0, "acc": False}


# Search-R1 exact match, verl's search_r1_like_qa_em.compute_score semantics, each expected value worked out by hand:
# the last <answer>...</answer> span (re.DOTALL, stripped), lower-cased, punctuation deleted (not replaced by a space),
# whole-word a/an/the removed, whitespace collapsed, then compared whole with each target.
SEARCH_R1_CASES = [
    ("<think>Capital of France.</think><answer> Paris </answer>", ["Paris"], 1.0),  # correct
    ("<answer>London</answer>", ["Paris"], 0.0),  # wrong: format_score 0.0
    ("<answer>the Eiffel Tower.</answer>", "Eiffel Tower", 1.0),  # article, full stop, case; str target
    ("<answer>Eiffel-Tower</answer>", ["Eiffel Tower"], 0.0),  # '-' is deleted: "eiffeltower"
    ("<answer>An apple a DAY</answer>", ["apple day"], 1.0),  # articles are whole words only...
    ("<answer>theatre</answer>", ["atre"], 0.0),  # ...so "the" inside a word stays
    ("<answer>Berlin</answer> no, wait: <answer>Paris</answer>", ["Paris"], 1.0),  # the last span counts
    ("<answer>Berlin</answer> no, wait: <answer>Paris</answer>", ["Berlin"], 0.0),
    ("The answer is Paris.", ["Paris"], 0.0),  # no tag
    ("<answer>Paris", ["Paris"], 0.0),  # never closed
    ("<ANSWER>Paris</ANSWER>", ["Paris"], 0.0),  # tags are case-sensitive
    ("<answer>\n  Mount\nEverest\n</answer>", ["Mount Everest"], 1.0),  # spans lines
    ("<answer>new york city</answer>", ["NYC", "New York City"], 1.0),  # any target
    ("<answer>Washington DC</answer>", np.array(["Washington, D.C.", "Washington"]), 1.0),  # numpy, as parquet gives
    ("<answer>1,209</answer>", np.array(["1209"]), 1.0),
    ("<answer></answer>", ["Paris"], 0.0),  # empty answer, found but wrong
    ("<answer> </answer>", ["The"], 1.0),  # both normalise to ""
    ("<answer>x</answer>" * 10, ["x"], 1.0),  # 10 tags: no penalty
    ("<answer>x</answer>" * 11, ["x"], 0.25),  # more than 10: a quarter
    ("<answer>y</answer>" * 11, ["x"], 0.0),
]


@pytest.mark.parametrize("response,target,expected", SEARCH_R1_CASES)
def test_search_r1_exact_match_is_verls(response, target, expected):
    from rlpost.rewards.search_r1 import compute_score

    assert compute_score(response, {"target": target}) == expected


def test_search_r1_sources_route_to_the_rule_with_verls_defaults():
    from rlpost.rewards.registry import SEARCH_R1_SOURCES
    from rlpost.rewards.search_r1 import compute_score

    verl = ["searchR1_nq", "searchR1_triviaqa", "searchR1_popqa", "searchR1_hotpotqa", "searchR1_2wikimultihopqa",
            "searchR1_musique", "searchR1_bamboogle"]
    assert set(verl) < set(SEARCH_R1_SOURCES) and "searchR1_fanoutqa" in SEARCH_R1_SOURCES
    sources = [*SEARCH_R1_SOURCES, "searchR1_nq"]
    responses = ["<answer>Paris</answer>"] * len(SEARCH_R1_SOURCES) + ["<answer>Lyon</answer>"]
    scores, _ = RewardScorer().score(responses, sources, [{"target": ["paris"]}] * len(sources))
    assert scores == [1.0] * len(SEARCH_R1_SOURCES) + [0.0]
    assert compute_score("<answer>Lyon</answer>", {"target": "Paris"}, format_score=0.1) == 0.1
    assert compute_score("Lyon", {"target": "Paris"}, format_score=0.1) == 0.0
    with pytest.raises(RewardError, match="ground_truth must be a mapping with 'target'"):
        RewardScorer().score(["<answer>Paris</answer>"], ["searchR1_nq"], ["Paris"])
