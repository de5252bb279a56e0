"""The multi-turn agent loop against rlpost's embedded engine serving scripted tiny models (each greedily writes a
fixed reply, a tool call say, at every assistant turn): tool round trips with loss masks and log-probs, malformed
calls answered with an error turn, parallel calls, a hanging tool that times out while another sample finishes,
and interaction turns. Trajectories are checked against a full re-tokenisation of their conversation."""

import asyncio
import contextlib
import json

import pytest

from rlpost.net import free_port
from rlpost.rollout.agent_loop import AgentSettings, Trajectory, truncate_tool_text
from rlpost.rollout.client import SGLangClient
from rlpost.testing.tiny_models import make_scripted_checkpoint
from rlpost.tools import BaseTool, ToolResponse, ToolSchema, load_interactions, load_tools
from rlpost.tools.answer_check import REPEAT_PENALTY
from rlpost.tools.gsm8k import Gsm8kInteraction

GSM8K_TOOLS = """
tools:
  - class_name: verl.tools.gsm8k_tool.Gsm8kTool
    config: {type: native}
"""
CALL = '{"name": "calc_gsm8k_reward", "arguments": {"answer": "18"}}'
PROBE = '{"name": "probe", "arguments": {"x": 1}}'
PROMPT = [{"role": "user", "content": "Janet has 9 eggs and buys 9 more. How many eggs?"}]
GREEDY = {"temperature": 0.0}


@contextlib.contextmanager
def serve(path):
    from rlpost.rollout.engine.engine import Engine
    from rlpost.rollout.engine.server import HTTPThread

    engine = Engine(path, "float32", context_length=1024).start()
    port = free_port()
    http = HTTPThread(engine, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}", engine.tokenizer
    finally:
        http.stop()
        engine.shutdown()


def trajectories(url, tokenizer, specs, **settings):
    """Runs (tools, interaction, fields) trajectories concurrently; returns their samples in order."""

    async def go():
        client = SGLangClient([url])
        try:
            options = AgentSettings(**{"max_response_tokens": 400, "sanity_check": True, **settings})
            return await asyncio.gather(*(Trajectory(client, tokenizer, PROMPT, tools=tools, interaction=interaction,
                                                     fields=fields, settings=options, sampling=GREEDY).run()
                                          for tools, interaction, fields in specs))
        finally:
            await client.close()

    return asyncio.run(go())


def gsm8k_tools(tmp_path, **row):
    """The GSM8K tool loaded from verl's YAML, and a row's fields giving it the ground truth 18."""
    (tmp_path / "tools.yaml").write_text(GSM8K_TOOLS)
    return load_tools(tmp_path / "tools.yaml"), {
        **row, "tools_kwargs": {"calc_gsm8k_reward": {"create_kwargs": {"ground_truth": "18"}}}}


def generated(sample):
    return [t for t, m in zip(sample.response_ids, sample.response_mask) if m]


@pytest.fixture(scope="module")
def caller(tmp_path_factory):
    return make_scripted_checkpoint(tmp_path_factory.mktemp("caller"), ["<tool_call>", CALL, "</tool_call>"])


def test_tool_round_trip_masks_generated_tokens_only(caller, tmp_path):
    tools, fields = gsm8k_tools(tmp_path, uid="u1")
    with serve(caller) as (url, tokenizer):
        [sample] = trajectories(url, tokenizer, [(tools, None, fields)], max_assistant_turns=3)
    turn = tokenizer.convert_tokens_to_ids(["<tool_call>", CALL, "</tool_call>"]) + [tokenizer.eos_token_id]
    assert generated(sample) == turn * 3  # the policy's tokens, as sampled, in every assistant turn
    roles = [m["role"] for m in sample.fields["messages_out"]]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert sample.fields["messages_out"][2]["content"] == "Current parsed answer='18' reward=1.0"
    # a tool turn sits between assistant turns with mask 0 and no log-probs
    first_end = sample.response_mask.index(0)
    tool_span = sample.response_mask[first_end:].index(1)
    assert tool_span > 5 and sample.response_log_probs[first_end : first_end + tool_span] == [0.0] * tool_span
    assert all(-1.0 < lp <= 0.0 for lp, m in zip(sample.response_log_probs, sample.response_mask) if m)
    assert len(sample.response_ids) == len(sample.response_mask) == len(sample.response_log_probs)
    # the second, same answer did not improve
    assert sample.fields["rollout_reward_scores"]["tool_rewards"] == [0.0, REPEAT_PENALTY]
    assert sample.fields["rollout_reward_scores"]["tool_final_rewards"] == {"calc_gsm8k_reward": 1.0}
    assert sample.fields["num_turns"] == 6 and sample.fields["tool_calls"] == 2 and sample.finish_reason == "stop"
    assert tools["calc_gsm8k_reward"]._state == {}  # released


def test_response_budget_ends_the_trajectory_before_a_turn_that_does_not_fit(caller, tmp_path):
    tools, fields = gsm8k_tools(tmp_path)
    with serve(caller) as (url, tokenizer):
        [sample] = trajectories(url, tokenizer, [(tools, None, fields)], max_response_tokens=30)
    assert len(sample.response_ids) <= 30 and sample.finish_reason == "length"
    assert sample.fields["messages_out"][-1]["role"] == "assistant"
    assert sample.response_mask[-1] == 1  # ends on the policy's last token, where the score will be placed


def test_a_turn_cut_by_the_budget_ends_on_the_policys_last_token(caller):
    with serve(caller) as (url, tokenizer):
        [sample] = trajectories(url, tokenizer, [({}, None, {})], max_response_tokens=2)
    # the eos that closes the cut turn in the conversation is not the policy's, so it is not in the response
    assert sample.finish_reason == "length" and sample.response_mask == [1, 1]
    assert sample.response_ids == tokenizer.convert_tokens_to_ids(["<tool_call>", CALL])


def test_malformed_call_is_answered_with_an_error_turn(tmp_path):
    path = make_scripted_checkpoint(tmp_path / "bad", ["<tool_call>", '{"name": calc_gsm8k_reward', "</tool_call>"])
    tools, fields = gsm8k_tools(tmp_path)
    with serve(path) as (url, tokenizer):
        [sample] = trajectories(url, tokenizer, [(tools, None, fields)], max_assistant_turns=2)
    error = sample.fields["messages_out"][2]
    assert error["role"] == "tool" and error["content"].startswith("Error: tool call 1 is not valid JSON")
    assert sample.fields["tool_calls"] == 0 and sample.fields["rollout_reward_scores"]["tool_rewards"] == []


class Rendezvous(BaseTool):
    """Answers only once `parties` calls are in flight together: sequential calls would wait forever."""

    def __init__(self, parties: int):
        super().__init__({}, ToolSchema("probe", "", {"type": "object", "properties": {"x": {"type": "integer"}}}))
        self.barrier = asyncio.Barrier(parties)

    async def execute(self, instance_id, parameters, **kwargs):
        await self.barrier.wait()
        return ToolResponse(text=f"met x={parameters['x']}"), 0.5, {}


class Hang(BaseTool):
    def __init__(self):
        super().__init__({}, ToolSchema("probe"))
        self.started = asyncio.Event()

    async def execute(self, instance_id, parameters, **kwargs):
        self.started.set()
        await asyncio.sleep(3600)


class Echo(BaseTool):
    def __init__(self, hang: Hang | None = None, text: str = "ok"):
        super().__init__({}, ToolSchema("probe"))
        self.hang, self.text, self.hang_was_pending = hang, text, None

    async def execute(self, instance_id, parameters, **kwargs):
        if self.hang is not None:
            await self.hang.started.wait()
            self.hang_was_pending = True
        return ToolResponse(text=self.text), 0.0, {}


@pytest.fixture(scope="module")
def two_calls(tmp_path_factory):
    # one segment (one token) for both calls, since a scripted model's segments must be distinct tokens; text
    # re-tokenises it as tags + JSON, so these trajectories skip the re-tokenisation check
    both = f"<tool_call>{PROBE}</tool_call>\n<tool_call>{PROBE.replace('1', '2')}</tool_call>"
    return make_scripted_checkpoint(tmp_path_factory.mktemp("two"), [both])


def test_parallel_calls_run_together(two_calls):
    with serve(two_calls) as (url, tokenizer):
        [sample] = trajectories(url, tokenizer, [({"probe": Rendezvous(2)}, None, {})], max_assistant_turns=2,
                                max_parallel_calls=2, tool_timeout_s=20, sanity_check=False)
    tool_turns = [m["content"] for m in sample.fields["messages_out"] if m["role"] == "tool"]
    assert tool_turns == ["met x=1", "met x=2"] and sample.fields["rollout_reward_scores"]["tool_rewards"] == [0.5, 0.5]


def test_calls_beyond_max_parallel_calls_are_refused_with_a_note(two_calls):
    with serve(two_calls) as (url, tokenizer):
        [sample] = trajectories(url, tokenizer, [({"probe": Echo()}, None, {})], max_assistant_turns=2,
                                sanity_check=False)
    tool_turns = [m["content"] for m in sample.fields["messages_out"] if m["role"] == "tool"]
    assert tool_turns == ["ok", "Error: tool call not run: at most 1 call(s) per turn."]


def test_hanging_tool_times_out_without_stalling_other_samples(tmp_path):
    path = make_scripted_checkpoint(tmp_path / "probe", ["<tool_call>", PROBE, "</tool_call>"])
    hang = Hang()
    echo = Echo(hang)
    with serve(path) as (url, tokenizer):
        stuck, free = trajectories(url, tokenizer, [({"probe": hang}, None, {}), ({"probe": echo}, None, {})],
                                   max_assistant_turns=2, tool_timeout_s=3)
    assert echo.hang_was_pending  # the other sample's tool ran while the hanging call was still waiting
    assert [m["content"] for m in free.fields["messages_out"] if m["role"] == "tool"] == ["ok"]
    timed_out = [m["content"] for m in stuck.fields["messages_out"] if m["role"] == "tool"]
    assert timed_out == ["Error: tool 'probe' did not answer within 3 s."]
    assert stuck.fields["rollout_reward_scores"]["tool_rewards"] == []


@pytest.mark.parametrize("truth,turns,scores", [("17", 1, [1.0]), ("18", 3, [0.0, 0.0])])
def test_interaction_asks_again_until_solved_or_out_of_turns(tmp_path, truth, turns, scores):
    path = make_scripted_checkpoint(tmp_path / "answer", ["So the answer is", "\n#### 17"])
    (tmp_path / "interaction.yaml").write_text(
        "interaction:\n  - name: gsm8k\n    class_name: verl.interactions.gsm8k_interaction.Gsm8kInteraction\n")
    user = load_interactions(tmp_path / "interaction.yaml")["gsm8k"]
    fields = {"interaction_kwargs": {"name": "gsm8k", "query": PROMPT[0]["content"], "ground_truth": truth}}
    with serve(path) as (url, tokenizer):
        [sample] = trajectories(url, tokenizer, [({}, user, fields)], max_user_turns=2)
    messages = sample.fields["messages_out"]
    assert [m["role"] for m in messages] == ["user"] + ["assistant", "user"] * (turns - 1) + ["assistant"]
    assert all(m["content"] == Gsm8kInteraction.INCORRECT for m in messages[2::2])
    rollout_scores = sample.fields["rollout_reward_scores"]
    assert rollout_scores["turn_scores"] == scores and rollout_scores["interaction_score"] == scores[-1]
    assert user._truth == {}  # finalized


@pytest.mark.parametrize("side,expected", [("left", "abcd...(truncated)"), ("right", "(truncated)...ghij"),
                                           ("middle", "ab...(truncated)...ij")])
def test_tool_text_truncation_sides(side, expected):
    assert truncate_tool_text("abcdefghij", 4, side) == expected
    assert truncate_tool_text("abc", 4, side) == "abc"


def test_tool_schemas_reach_the_prompt(caller, tmp_path):
    tools, fields = gsm8k_tools(tmp_path)
    with serve(caller) as (url, tokenizer):
        [sample] = trajectories(url, tokenizer, [(tools, None, fields)], max_assistant_turns=1)
    prompt = tokenizer.decode(sample.prompt_ids)
    assert json.dumps("calc_gsm8k_reward") in prompt and "<tools>" in prompt


def test_code_interpreter_calls_run_in_the_sandbox(sandbox, tmp_path):
    code_call = '{"name": "code_interpreter", "arguments": {"code": "print(6 * 7)"}}'
    path = make_scripted_checkpoint(tmp_path / "coder", ["<tool_call>", code_call, "</tool_call>"])
    (tmp_path / "tools.yaml").write_text(f"""
tools:
  - class_name: verl.tools.sandbox_fusion_tools.SandboxFusionTool
    config: {{type: native, sandbox_fusion_url: "{sandbox.url}/run_code", default_timeout: 10}}
""")
    tools = load_tools(tmp_path / "tools.yaml")
    with serve(path) as (url, tokenizer):
        [sample] = trajectories(url, tokenizer, [(tools, None, {})], max_assistant_turns=2)
    answers = [m["content"] for m in sample.fields["messages_out"] if m["role"] == "tool"]
    assert answers == ["42\n"] and sample.fields["tool_calls"] == 1
