"""Tool and interaction registries read verl's YAML files unchanged and map verl's class names to rlpost's own
implementations; the GSM8K tool and simulated user follow their lifecycle; bad files name the file and entry."""

import asyncio

import pytest

from rlpost.tools import load_interactions, load_tools
from rlpost.tools.answer_check import REPEAT_PENALTY
from rlpost.tools.gsm8k import Gsm8kInteraction, Gsm8kTool

VERL_GSM8K_TOOL = """
tools:
  - class_name: "verl.tools.gsm8k_tool.Gsm8kTool"
    config:
      type: native
    tool_schema:
      type: "function"
      function:
        name: "calc_gsm8k_reward"
        description: "A tool for calculating the reward of gsm8k."
        parameters:
          type: "object"
          properties:
            answer:
              type: "string"
              description: "The model's answer to the GSM8K math problem, must be a digits"
          required: ["answer"]
"""

VERL_GSM8K_INTERACTION = """
interaction:
  - name: "gsm8k"
    class_name: "verl.interactions.gsm8k_interaction.Gsm8kInteraction"
    config: {}
"""


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def run(coro):
    return asyncio.run(coro)


def test_verl_tool_config_loads_rlpost_gsm8k_tool(tmp_path):
    tools = load_tools(write(tmp_path, VERL_GSM8K_TOOL))
    tool = tools["calc_gsm8k_reward"]
    assert type(tool) is Gsm8kTool and tool.config == {"type": "native"}
    schema = tool.tool_schema.model_dump()
    assert schema["type"] == "function" and schema["function"]["name"] == "calc_gsm8k_reward"
    assert schema["function"]["parameters"]["required"] == ["answer"]


def test_gsm8k_tool_rewards_improvement_and_penalises_repeats(tmp_path):
    tool = load_tools(write(tmp_path, VERL_GSM8K_TOOL))["calc_gsm8k_reward"]

    async def episode():
        # ground truths as verl's GSM8K preprocessing writes them, without commas: the answer is compared as a string
        instance, _ = await tool.create("t1", ground_truth="1072")
        steps = [await tool.execute(instance, {"answer": a}) for a in ("70", "1072", "#### 1072")]
        final = await tool.calc_reward(instance)
        await tool.release(instance)
        return steps, final

    steps, final = run(episode())
    assert [(r.text, step) for r, step, _ in steps] == [
        ("Current parsed answer='70' reward=0.0", REPEAT_PENALTY),
        ("Current parsed answer='1072' reward=1.0", 0.0),
        ("Current parsed answer='#### 1072' reward=1.0", REPEAT_PENALTY),
    ]
    assert final == 1.0 and tool._state == {}
    with pytest.raises(ValueError, match="create_kwargs"):
        run(tool.create("t2"))


def test_a_tool_entry_without_schema_uses_the_built_in_one(tmp_path):
    tools = load_tools(write(tmp_path, "tools:\n  - class_name: rlpost.tools.gsm8k.Gsm8kTool\n    config: {}\n"))
    assert list(tools) == ["calc_gsm8k_reward"]


def test_verl_interaction_config_and_gsm8k_user(tmp_path):
    interactions = load_interactions(write(tmp_path, VERL_GSM8K_INTERACTION))
    user = interactions["gsm8k"]
    assert type(user) is Gsm8kInteraction and user.name == "gsm8k"

    async def conversation():
        instance = await user.start_interaction("i1", ground_truth="18", query="q")
        wrong = await user.generate_response(instance, [{"role": "user", "content": "q"},
                                                        {"role": "assistant", "content": "#### 17"}])
        right = await user.generate_response(instance, [{"role": "assistant", "content": "So 9 * 2 = 18.\n#### 18"},
                                                        {"role": "user", "content": "unrelated"}])
        score = await user.calculate_score(instance)
        await user.finalize_interaction(instance)
        return wrong, right, score

    wrong, right, score = run(conversation())
    assert wrong == (False, Gsm8kInteraction.INCORRECT, 0.0, {})
    assert right == (True, Gsm8kInteraction.CORRECT, 1.0, {})
    assert score == 1.0


def test_nameless_interaction_is_named_after_its_class(tmp_path):
    text = "interaction:\n  - class_name: verl.interactions.gsm8k_interaction.Gsm8kInteraction\n"
    assert list(load_interactions(write(tmp_path, text))) == ["gsm8k"]


@pytest.mark.parametrize("text,message", [
    ("tools:\n  - clas_name: x.Y\n", r"tools\[0\]: unknown keys \['clas_name'\]"),
    ("tools: {}\n", "expected a top-level 'tools:' list"),
    ("tools:\n  - class_name: rlpost.tools.gsm8k.Gsm8kTool\n    config: {type: mcp}\n",
     r"tools\[0\]: config.type 'mcp' \(tools served by MCP servers\) is not supported"),
    ("tools:\n  - class_name: rlpost.tools.nowhere.Tool\n", r"tools\[0\]: cannot import class_name"),
    ("tools:\n  - class_name: rlpost.tools.gsm8k.Gsm8kInteraction\n", r"lacks \['create', 'execute'"),
    ("tools:\n  - class_name: rlpost.tools.gsm8k.Gsm8kTool\n  - class_name: rlpost.tools.gsm8k.Gsm8kTool\n",
     r"tools\[1\]: a second tool named 'calc_gsm8k_reward'"),
    ("tools:\n  - class_name: rlpost.tools.gsm8k.Gsm8kTool\n    tool_schema: {type: function, function: {name: f, "
     "parameters: {type: object, properties: {}, required: [x]}}}\n", r"required names \['x'\]"),
    ("tools:\n  - class_name: rlpost.tools.gsm8k.Gsm8kTool\n    tool_schema: {type: function}\n",
     "tool_schema must be"),
])
def test_bad_tool_configs_name_file_entry_and_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises((ValueError, ImportError, TypeError), match=message) as e:
        load_tools(path)
    assert str(path) in str(e.value)


def test_duplicate_interaction_names_and_missing_files_are_refused(tmp_path):
    text = VERL_GSM8K_INTERACTION + "  - class_name: verl.interactions.gsm8k_interaction.Gsm8kInteraction\n"
    with pytest.raises(ValueError, match=r"interaction\[1\]: a second interaction named 'gsm8k'"):
        load_interactions(write(tmp_path, text))
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_tools(tmp_path / "missing.yaml")
