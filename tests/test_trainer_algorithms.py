"""The algorithm options end to end on a tiny random model (one device, colocated): PPO with a critic (GAE), KL in
the reward and as a loss; ReMax baselines with DAPO clip-higher, dynamic sampling and overlong shaping, validated
before training and after every step, with one optimizer step per batch (no separate old-log-prob pass); and a
multi-turn rollout with tool calls. Each must produce its own metrics on every step."""

import json
from pathlib import Path

import pytest

import rlpost.testing.rewards
from rlpost.testing.runs import make_tiny_run

REWARD = f"reward.custom_function={rlpost.testing.rewards.__file__}:share_of_a"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("algorithms"))


def train(tiny, name: str, extra: list[str], steps: int = 2) -> dict[int, dict]:
    from rlpost.config import load_config
    from rlpost.trainer.ppo import train as run

    cfg = load_config(None, tiny["overrides"] + [REWARD, f"trainer.total_training_steps={steps}",
                                                 f"trainer.experiment_name={name}", *extra])
    lines = (run(cfg) / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m for m in map(json.loads, lines)}


def test_ppo_with_critic_and_kl_in_reward_and_loss(tiny):
    """Two steps, then a third resumed from the step-2 checkpoint (actor and critic)."""
    options = ["algorithm.adv_estimator=gae", "algorithm.use_kl_in_reward=true", "algorithm.kl_ctrl.kl_coef=0.1",
               "actor.use_kl_loss=true", "critic.ppo_mini_batch_size=2", "critic.micro_batch_size=4",
               "critic.optim.lr=1e-3"]
    train(tiny, "gae", options)
    metrics = train(tiny, "gae", options, steps=3)
    assert sorted(metrics) == [1, 2, 3]
    for m in metrics.values():
        assert m["critic/grad_norm"] > 0 and m["critic/vf_loss"] > 0
        assert "critic/values_mean" in m and "critic/returns_mean" in m
    # the reference is the actor's starting point: no KL before the first update, some after it
    assert metrics[1]["actor/reward_kl_penalty"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[2]["actor/reward_kl_penalty"] != pytest.approx(0.0, abs=1e-6)
    assert metrics[2]["actor/kl_loss"] > 0 and metrics[2]["actor/kl_ref"] != 0


def test_remax_with_dapo_options_and_validation(tiny):
    metrics = train(tiny, "remax", ["algorithm.adv_estimator=remax", "actor.clip_ratio_high=0.28",
                                    "algorithm.filter_groups.enable=true", "data.gen_batch_size=8",
                                    "reward.overlong_buffer.enable=true",
                                    "reward.overlong_buffer.len=8", "trainer.val_before_train=true",
                                    "trainer.val_every=1", "actor.ppo_mini_batch_size=4"])
    assert sorted(metrics) == [0, 1, 2]
    for step in (0, 1, 2):
        assert "val/openai/gsm8k/reward_mean" in metrics[step]
    for step in (1, 2):
        m = metrics[step]
        # share_of_a is in [0, 1]: a score below 0 is the overlong penalty of a response past 16 - 8 tokens
        assert m["reward/min"] < 0 and m["response_length/max"] > 8
        # greedy baselines: advantages are the score minus the prompt's greedy score, not zero-mean per group
        assert m["advantages/max"] != m["advantages/min"] and m["actor/grad_norm"] > 0
        # one mini-batch: no old-log-prob pass; the update reports what it would have
        assert "timing_s/old_log_probs" not in m and m["actor/entropy"] > 0 and m["actor/ppo_kl"] == 0
        assert "actor/rollout_logprob_diff_max" in m
    assert metrics[2]["actor/rollout_logprob_diff_max"] < 1e-4  # the first update reached the engine


def test_multi_turn_rollout_with_tools_trains(tiny, tmp_path):
    """GSM8K rows carry tools_kwargs (the ground truth for calc_gsm8k_reward); a scripted policy calls the tool at
    every turn. Two steps train on the tool conversations, and samples.jsonl shows the calls."""
    from rlpost.testing.tiny_models import make_scripted_checkpoint

    call = '{"name": "calc_gsm8k_reward", "arguments": {"answer": "7"}}'
    model = make_scripted_checkpoint(tmp_path / "caller", ["<tool_call>", call, "</tool_call>"])
    tools = tmp_path / "tools.yaml"
    tools.write_text("tools:\n  - class_name: verl.tools.gsm8k_tool.Gsm8kTool\n    config: {type: native}\n")
    metrics = train(tiny, "multi_turn", [f"actor.model_path={model}", "rollout.multi_turn.enable=true",
                                         f"rollout.multi_turn.tool_config_path={tools}",
                                         "rollout.multi_turn.max_assistant_turns=2", "data.max_response_length=64",
                                         "data.max_prompt_length=448",  # the system prompt lists the tool
                                         "trainer.log_samples=4"])
    for m in metrics.values():
        assert m["multi_turn/tool_calls_mean"] == 1.0 and m["multi_turn/num_turns_mean"] == 4.0
    run = Path(tiny["model"]).parent / "runs" / "rlpost" / "multi_turn"
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1] * 4 + [2] * 4
    assert all(s["response_text"].count("<tool_call>") == 2 and s["tool_calls"] == 1 for s in samples)
    assert all("Current parsed answer='7'" in s["response_text"] for s in samples)


def test_search_r1_rollout_trains_with_the_real_retrieval_server(tiny, tmp_path):
    """A scripted policy calls search at every turn; `rlpost serve retrieval` (BM25 over a small corpus, on loopback)
    answers, and the logged samples hold verl's passage text from the real index."""
    from rlpost.services.retrieval.launcher import RetrievalServerProcess
    from rlpost.testing.tiny_models import make_scripted_checkpoint

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "contents": f'"{title}"\n{text}'}) + "\n" for i, (title, text)
                              in enumerate([("Paris", "Paris is the capital and largest city of France."),
                                            ("Nile", "The Nile is a major river in northeastern Africa."),
                                            ("Kilimanjaro", "Mount Kilimanjaro is a dormant volcano in Tanzania.")])))
    call = '{"name": "search", "arguments": {"query_list": ["capital of France"]}}'
    model = make_scripted_checkpoint(tmp_path / "searcher", ["<tool_call>", call, "</tool_call>"])
    tools = tmp_path / "tools.yaml"
    with RetrievalServerProcess(corpus, topk=1, log_path=tmp_path / "retrieval.log") as server:
        tools.write_text("tools:\n  - class_name: verl.tools.search_tool.SearchTool\n    config:\n"
                         f"      retrieval_service_url: {server.retrieve_url}\n      type: native\n      topk: 1\n")
        metrics = train(tiny, "search_r1", [f"actor.model_path={model}", "rollout.multi_turn.enable=true",
                                            f"rollout.multi_turn.tool_config_path={tools}",
                                            "rollout.multi_turn.max_assistant_turns=2",
                                            "data.max_response_length=96", "data.max_prompt_length=448",
                                            "trainer.log_samples=4"], steps=1)
    assert metrics[1]["multi_turn/tool_calls_mean"] == 1.0
    run = Path(tiny["model"]).parent / "runs" / "rlpost" / "search_r1"
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["tool_calls"] == 1 for s in samples)
    passage = json.dumps({"result": 'Doc 1 (Title: "Paris")\nParis is the capital and largest city of France.'})
    assert all(passage in s["response_text"] for s in samples), samples[0]["response_text"][-600:]
