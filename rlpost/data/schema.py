"""verl's dataset row schema, checked row by row so a bad file fails with its path, row and field.

    data_source: str            which reward rule scores the row
    prompt: [{role, content}]   chat messages (the key is data.prompt_key)
    ability: str                optional tag (math, code, ...)
    reward_model: {style, ground_truth}
    extra_info: {index, split, tools_kwargs, interaction_kwargs, ...}   optional
    images: [{bytes | path} | path]   optional, vision-language rows
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant", "tool")
TOOL_KWARGS_KEYS = ("create_kwargs", "execute_kwargs", "calc_reward_kwargs", "release_kwargs")


class RowError(ValueError):
    def __init__(self, source: str, row: int, field: str, problem: str):
        self.source, self.row, self.field = source, row, field
        super().__init__(f"{source} row {row}: field '{field}' {problem}")


def drop_nulls(value: Any) -> Any:
    """Parquet stores a dict column as one struct type for all rows, so a key one row lacks reads back as null
    in every other row; nulls inside kwargs dicts are those artefacts, not data."""
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value


def _type(v: Any) -> str:
    return type(v).__name__


def _check_messages(messages: Any, key: str, fail) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        fail(key, f"must be a non-empty list of chat messages, got {_type(messages)}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            fail(f"{key}[{i}]", f"must be a mapping with 'role' and 'content', got {_type(m)}")
        m = {k: v for k, v in m.items() if v is not None}
        if m.get("role") not in ROLES:
            fail(f"{key}[{i}].role", f"must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
        if not isinstance(m.get("content"), (str, list)):
            fail(f"{key}[{i}].content", f"must be a string or a list of content parts, got {_type(m.get('content'))}")
        out.append(m)
    return out


def _check_extra_info(extra: Any, fail) -> dict:
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        fail("extra_info", f"must be a mapping or null, got {_type(extra)}")
    extra = dict(extra)
    tools = drop_nulls(extra.get("tools_kwargs") or {})
    if not isinstance(tools, dict):
        fail("extra_info.tools_kwargs", f"must map tool names to their kwargs, got {_type(tools)}")
    for name, kwargs in tools.items():
        if not isinstance(kwargs, dict):
            fail(f"extra_info.tools_kwargs.{name}", f"must be a mapping, got {_type(kwargs)}")
        for k, v in kwargs.items():
            if k not in TOOL_KWARGS_KEYS:
                fail(f"extra_info.tools_kwargs.{name}.{k}", f"is not one of {', '.join(TOOL_KWARGS_KEYS)}")
            if not isinstance(v, dict):
                fail(f"extra_info.tools_kwargs.{name}.{k}", f"must be a mapping, got {_type(v)}")
    interaction = drop_nulls(extra.get("interaction_kwargs") or {})
    if not isinstance(interaction, dict):
        fail("extra_info.interaction_kwargs", f"must be a mapping, got {_type(interaction)}")
    extra["tools_kwargs"], extra["interaction_kwargs"] = tools, interaction
    return extra


def _check_images(images: Any, key: str, fail) -> list:
    if images is None:
        return []
    if not isinstance(images, list):
        fail(key, f"must be a list of images, got {_type(images)}")
    for i, im in enumerate(images):
        ok = isinstance(im, str) or (isinstance(im, dict) and (im.get("bytes") is not None or im.get("path")))
        if not ok:
            fail(f"{key}[{i}]", "must be a path or a mapping with 'bytes' or 'path'")
    return images


def validate_row(row: Any, source: str, index: int, prompt_key: str = "prompt", image_key: str = "images") -> dict:
    """A checked, normalised copy of one row; raises RowError on the first problem."""

    def fail(field: str, problem: str):
        raise RowError(source, index, field, problem)

    if not isinstance(row, dict):
        fail("<row>", f"must be a mapping, got {_type(row)}")
    data_source = row.get("data_source")
    if not isinstance(data_source, str) or not data_source:
        fail("data_source", f"must be a non-empty string, got {data_source!r}")
    if prompt_key not in row:
        fail(prompt_key, "is missing")
    messages = _check_messages(row[prompt_key], prompt_key, fail)
    reward = row.get("reward_model")
    if not isinstance(reward, dict):
        fail("reward_model", f"must be a mapping with 'ground_truth', got {_type(reward)}")
    if reward.get("ground_truth") is None:
        fail("reward_model.ground_truth", "is missing")
    ability = row.get("ability")
    if ability is not None and not isinstance(ability, str):
        fail("ability", f"must be a string, got {_type(ability)}")
    return {
        "data_source": data_source,
        "prompt": messages,
        "ability": ability or "",
        "reward_model": {"style": reward.get("style") or "rule", "ground_truth": reward["ground_truth"]},
        "extra_info": _check_extra_info(row.get("extra_info"), fail),
        "images": _check_images(row.get(image_key), image_key, fail),
        "agent_name": _check_agent_name(row.get("agent_name"), fail),
    }


AGENT_LOOPS = ("single_turn_agent", "tool_agent")  # verl's rows name their agent loop; rlpost has these two


def _check_agent_name(name: Any, fail) -> str | None:
    if name is not None and name not in AGENT_LOOPS:
        fail("agent_name", f"is {name!r}; rlpost's agent loops are {', '.join(AGENT_LOOPS)} (chosen for the whole "
                           f"run by rollout.multi_turn.enable)")
    return name
