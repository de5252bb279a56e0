"""Tool classes written against verl's BaseTool run unchanged: a base class of verl's shape (written here: the
constructor reads `tool_schema.function.name` and dumps the schema with pydantic's options) and two tools of the
two generations verl has had: one reads `create_kwargs=` and answers with a ToolResponse-like object, the other
takes create kwargs as keywords, returns the bare instance id and answers with a dict. Both load from verl's YAML and
run in a real trajectory against the embedded engine; one's schema is a pydantic model of verl's shape."""

import asyncio
import json
import uuid
from typing import Any

import pydantic

from rlpost.rollout.agent_loop import AgentSettings, Trajectory
from rlpost.rollout.client import SGLangClient
from rlpost.testing.tiny_models import make_scripted_checkpoint
from rlpost.tools import load_tools, openai_schemas
from tests.test_agent_loop import serve


class Answer(pydantic.BaseModel):  # verl's ToolResponse shape
    text: str | None = None
    image: list[Any] | None = None
    video: list[Any] | None = None


class Parameters(pydantic.BaseModel):
    type: str = "object"
    properties: dict[str, dict] = {}
    required: list[str] = []


class Function(pydantic.BaseModel):
    name: str
    description: str
    parameters: Parameters
    strict: bool = False


class Schema(pydantic.BaseModel):  # verl's OpenAIFunctionToolSchema shape
    type: str
    function: Function


class VerlShapedBaseTool:
    def __init__(self, config: dict, tool_schema):
        self.config = config
        self.tool_schema = tool_schema or self.get_openai_tool_schema()
        assert self.tool_schema is not None
        self.name = self.tool_schema.function.name
        self.logged = json.dumps(self.tool_schema.model_dump(exclude_unset=True, exclude_none=True))

    def get_openai_tool_schema(self):
        return self.tool_schema

    async def create(self, instance_id=None, **kwargs):
        return instance_id or str(uuid.uuid4()), Answer()

    async def execute(self, instance_id, parameters, **kwargs):
        return Answer(text="Updated the tool state."), 0.0, {}

    async def calc_reward(self, instance_id, **kwargs):
        return 0.0

    async def release(self, instance_id, **kwargs):
        return None


class NewerCheckTool(VerlShapedBaseTool):
    """Reads the ground truth from create_kwargs=, checks argument names against its schema's properties."""

    def __init__(self, config, tool_schema):
        super().__init__(config, tool_schema)
        self.truth: dict[str, str] = {}

    async def create(self, instance_id=None, **kwargs):
        instance_id = instance_id or str(uuid.uuid4())
        self.truth[instance_id] = kwargs["create_kwargs"]["ground_truth"]
        return instance_id, Answer()

    async def execute(self, instance_id, parameters, **kwargs):
        unknown = set(parameters) - set(self.tool_schema.function.parameters.properties)
        right = str(parameters.get("answer")) == self.truth[instance_id]
        return Answer(text=f"unknown={sorted(unknown)} right={right}"), float(right), {}

    async def calc_reward(self, instance_id, **kwargs):
        return 1.0 if self.truth[instance_id] == "18" else 0.0

    async def release(self, instance_id, **kwargs):
        del self.truth[instance_id]


class OlderEchoTool(VerlShapedBaseTool):
    """Takes create kwargs as keywords, returns the bare id, answers with a dict; its schema is built in."""

    def get_openai_tool_schema(self):
        return Schema(type="function", function=Function(
            name="echo", description="Echoes its text.",
            parameters=Parameters(properties={"x": {"type": "integer"}}, required=["x"])))

    async def create(self, instance_id, prefix: str):
        self.prefix = prefix
        return instance_id

    async def execute(self, instance_id, parameters, **kwargs):
        return {"text": f"{self.prefix}{parameters['x']}"}, 0.0, {}


TOOLS = f"""
tools:
  - class_name: {__name__}.NewerCheckTool
    config: {{type: native}}
    tool_schema:
      type: function
      function:
        name: calc_gsm8k_reward
        description: Checks an answer.
        parameters:
          type: object
          properties: {{answer: {{type: string}}}}
          required: [answer]
  - class_name: {__name__}.OlderEchoTool
    config: {{type: native}}
"""
CALLS = ['{"name": "calc_gsm8k_reward", "arguments": {"answer": "18"}}', '{"name": "echo", "arguments": {"x": 7}}']


def test_verl_shaped_tools_load_and_run_in_a_trajectory(tmp_path):
    path = tmp_path / "tools.yaml"
    path.write_text(TOOLS)
    tools = load_tools(path)
    assert sorted(tools) == ["calc_gsm8k_reward", "echo"]
    assert [s["function"]["name"] for s in openai_schemas(tools)] == ["calc_gsm8k_reward", "echo"]
    assert json.loads(tools["echo"].logged)["function"]["parameters"]["required"] == ["x"]
    model = make_scripted_checkpoint(tmp_path / "m", CALLS)
    fields = {"uid": "u", "tools_kwargs": {"calc_gsm8k_reward": {"create_kwargs": {"ground_truth": "18"}},
                                           "echo": {"create_kwargs": {"prefix": "echo:"}}}}

    async def go(url, tokenizer):
        client = SGLangClient([url])
        try:
            return await Trajectory(client, tokenizer, [{"role": "user", "content": "Eggs?"}], tools=tools,
                                    interaction=None, fields=fields, sampling={"temperature": 0.0},
                                    settings=AgentSettings(max_response_tokens=400, max_assistant_turns=2,
                                                           max_parallel_calls=2, tool_call_format="json",
                                                           sanity_check=True)).run()
        finally:
            await client.close()

    with serve(model) as (url, tokenizer):
        sample = asyncio.run(go(url, tokenizer))
    tool_turns = [m["content"] for m in sample.fields["messages_out"] if m["role"] == "tool"]
    assert tool_turns[:2] == ["unknown=[] right=True", "echo:7"]
    scores = sample.fields["rollout_reward_scores"]
    assert scores["tool_rewards"][:1] == [1.0] and scores["tool_final_rewards"]["calc_gsm8k_reward"] == 1.0
    assert tools["calc_gsm8k_reward"].truth == {}  # released
