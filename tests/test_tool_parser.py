from rlpost.rollout.tool_parser import ToolCall, parse_tool_calls

TOOLS = {"calc_gsm8k_reward", "search"}


def test_calls_and_text_are_separated_in_order():
    text = ('Let me check.\n<tool_call>\n{"name": "calc_gsm8k_reward", "arguments": {"answer": "42"}}\n</tool_call>'
            '\nand search <tool_call>{"name": "search", "arguments": "{\\"query_list\\": [\\"x\\"]}"}</tool_call> done')
    parsed = parse_tool_calls(text, TOOLS)
    assert parsed.tool_calls == [ToolCall("calc_gsm8k_reward", {"answer": "42"}),
                                 ToolCall("search", {"query_list": ["x"]})]
    assert parsed.errors == [] and parsed.content == "Let me check.\n\nand search  done"


def test_no_calls():
    parsed = parse_tool_calls("#### 42", TOOLS)
    assert parsed.tool_calls == [] and parsed.errors == [] and parsed.content == "#### 42"


def test_malformed_calls_become_messages_and_good_ones_still_run():
    text = ('<tool_call>{"name": "search", "arguments": {"q": 1}</tool_call>'
            '<tool_call>["search"]</tool_call>'
            '<tool_call>{"arguments": {}}</tool_call>'
            '<tool_call>{"name": "serch", "arguments": {}}</tool_call>'
            '<tool_call>{"name": "search", "arguments": "{bad"}</tool_call>'
            '<tool_call>{"name": "search", "arguments": [1]}</tool_call>'
            '<tool_call>{"name": "calc_gsm8k_reward"}</tool_call>'
            'tail <tool_call>{"name": "search"')
    parsed = parse_tool_calls(text, TOOLS)
    assert parsed.tool_calls == [ToolCall("calc_gsm8k_reward", {})]
    assert len(parsed.errors) == 7
    assert parsed.errors[0].startswith("Error: tool call 1 is not valid JSON (Expecting ',' delimiter")
    assert parsed.errors[1].startswith("Error: tool call 2 must be a JSON object, not list")
    assert parsed.errors[2].startswith('Error: tool call 3 has no "name"')
    assert parsed.errors[3] == ("Error: tool call 4 names an unknown tool 'serch' (did you mean 'search'?); "
                                "available tools: calc_gsm8k_reward, search.")
    assert parsed.errors[4].startswith('Error: the "arguments" of tool call 5 are not valid JSON')
    assert parsed.errors[5].startswith('Error: the "arguments" of tool call 6 must be a JSON object')
    assert parsed.errors[6].startswith("Error: a tool call was opened with <tool_call> but never closed")
    assert all("<tool_call>{\"name\"" in e for e in parsed.errors if "unknown tool" not in e)
    assert parsed.content == "tail"


def test_without_a_tool_list_any_name_is_accepted():
    parsed = parse_tool_calls('<tool_call>{"name": "anything", "arguments": {}}</tool_call>')
    assert parsed.tool_calls == [ToolCall("anything", {})]


def test_json_format_reads_fenced_and_bare_calls_and_leaves_other_json_alone():
    text = ('The answer is 72.\n```json\n{"name": "calc_gsm8k_reward", "arguments": {"answer": "72"}}\n```\n'
            'Config {"a": 1} and {broken, then {"name": "search", "parameters": {"query_list": ["q"]}}'
            ' and {"name": "nope", "arguments": {}}')
    parsed = parse_tool_calls(text, TOOLS, fmt="json")
    assert parsed.tool_calls == [ToolCall("calc_gsm8k_reward", {"answer": "72"}),
                                 ToolCall("search", {"query_list": ["q"]})]
    assert len(parsed.errors) == 1 and "unknown tool 'nope'" in parsed.errors[0]
    assert [type(i) for i in parsed.items] == [ToolCall, ToolCall, str]
    assert 'Config {"a": 1} and {broken, then' in parsed.content
    assert parse_tool_calls(text, TOOLS).tool_calls == []  # hermes reads only tagged calls
    tagged = '{"name": "search", "arguments": {}} <tool_call>{"name": "calc_gsm8k_reward", "arguments": {}}</tool_call>'
    assert [c.name for c in parse_tool_calls(tagged, TOOLS, fmt="json").tool_calls] == ["calc_gsm8k_reward"]


def test_deeply_nested_json_is_an_error_not_a_crash():
    deep = '{"name": "search", "arguments": ' + "[" * 5000 + "}"
    assert parse_tool_calls(deep, TOOLS, fmt="json").tool_calls == []
    tagged = parse_tool_calls(f"<tool_call>{deep}</tool_call>", TOOLS)
    assert tagged.errors and "nests too deeply" in tagged.errors[0]
