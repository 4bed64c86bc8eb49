"""Tool calls written as text, for models without native function calling.

The format is Hermes / ChatML-with-tools: the tool schemas go in the system prompt, a call is
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` and a result comes back as
``<tool_response>...</tool_response>``. The parser is lenient about what it accepts (bare
JSON, several calls, a missing closing tag) but never repairs a call: a call it cannot read
is recorded as written, so the environment answers it with an error the model can learn from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

from trajgym.records.schema import FunctionCall, Message, ToolCall

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.S)
_NAME = re.compile(r'"name"\s*:\s*"([^"]*)"')
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system-prompt section that lists the tools (as compact signatures) and the format.

    Signatures instead of JSON schemas: a third of the tokens, which a small student pays for
    on every turn of every conversation, in training and in inference.
    """
    lines = [
        "# Tools",
        'Call a function with one line: <tool_call>{"name": ..., "arguments": {...}}</tool_call>',
        "The functions (a ? marks an optional argument):",
        *(tool_signature(t) for t in tools),
    ]
    return "\n".join(lines)


def tool_signature(tool: dict[str, Any]) -> str:
    """``name(arg: type, choice: "a" | "b", opt?: type): description`` for one tool schema."""
    f = tool.get("function", tool)
    params = f.get("parameters") or {}
    required = params.get("required", [])
    args = [
        f"{name}{'' if name in required else '?'}: {_type_text(p)}"
        for name, p in params.get("properties", {}).items()
    ]
    return f"{f['name']}({', '.join(args)}): {f.get('description') or ''}"


def _type_text(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in prop["enum"])
    kind = prop.get("type")
    if isinstance(kind, str) and kind not in ("array", "object"):
        return kind
    items = prop.get("items", {})
    if kind == "array" and isinstance(items.get("type"), str):
        return f"array of {items['type']}"
    return json.dumps(prop, separators=(",", ":"), ensure_ascii=False)


def render_call(call: ToolCall) -> str:
    """One tool call in the text format; the arguments are written exactly as the model did."""
    name = json.dumps(call.function.name, ensure_ascii=False)
    body = f'{{"name": {name}, "arguments": {call.function.arguments}}}'
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def chatml(conversation: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Text-mode messages (from :func:`to_text_messages`) as one ChatML string."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in conversation)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def chat_template() -> str:
    """The ChatML-with-tools Jinja template that renders exactly like :func:`chatml`."""
    return resources.files("trajgym.agents").joinpath("templates/chatml_tools.jinja").read_text()


def render_response(message: Message) -> str:
    """A tool result in the text format."""
    return f"<tool_response>\n{message.text}\n</tool_response>"


def parse_reply(text: str, id_prefix: str = "call") -> Message:
    """Turn a model's text into an assistant message with any tool calls it wrote."""
    calls: list[ToolCall] = []
    blocks = _BLOCK.findall(text)
    if blocks:
        content = _BLOCK.sub("", text).strip()
        bodies = [b.strip() for b in blocks]
    else:
        bare = _bare_calls(text)
        content, bodies = ("", bare) if bare else (text.strip(), [])
    for n, body in enumerate(bodies):
        calls.append(_to_call(body, f"{id_prefix}_{n}"))
    return Message(role="assistant", content=content or None, tool_calls=tuple(calls) or None)


def _bare_calls(text: str) -> list[str]:
    """Bodies of calls written as bare JSON (an object, or a list of objects), if any."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    if not stripped.startswith(("{", "[")):
        return []
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return []
    items = value if isinstance(value, list) else [value]
    if items and all(isinstance(i, dict) and "name" in i for i in items):
        return [json.dumps(i) for i in items]
    return []


def _to_call(body: str, call_id: str) -> ToolCall:
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        key = "arguments" if "arguments" in value else "parameters"
        args = value.get(key, {})
        arguments = args if isinstance(args, str) else _as_written(body, key, args)
        return ToolCall(id=call_id, function=FunctionCall(name=value["name"], arguments=arguments))
    # Unreadable: keep the text as the arguments so that the env reports what is wrong.
    name = _NAME.search(body)
    return ToolCall(
        id=call_id, function=FunctionCall(name=name.group(1) if name else "", arguments=body)
    )


def _as_written(body: str, key: str, value: object) -> str:
    """The JSON of ``key``'s value exactly as the model wrote it (spacing included).

    The conversation is rendered back to the model on the next turn: re-serialized arguments
    (`{"a": 1}` for a written `{"a":1}`) would show it a history it never wrote, and break
    the token prefix that RL's turns share.
    """
    found = re.search(rf'"{key}"\s*:\s*', body)
    if found:
        try:
            parsed, end = json.JSONDecoder().raw_decode(body, found.end())
        except json.JSONDecodeError:
            parsed, end = None, 0
        if parsed == value:
            return body[found.end() : end]
    return json.dumps(value)


def to_text_messages(
    messages: Sequence[Message], tools: Sequence[dict[str, Any]]
) -> list[dict[str, str]]:
    """A conversation for a model without native tools: calls and results become text."""
    out: list[dict[str, str]] = []
    for m in messages:
        if m.role == "system":
            out.append({"role": "system", "content": f"{m.text}\n\n{tools_prompt(tools)}"})
        elif m.role == "assistant":
            parts = [m.text] if m.text else []
            parts += [render_call(c) for c in m.tool_calls or ()]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        elif m.role == "tool":
            text = render_response(m)
            if (
                out
                and out[-1]["role"] == "user"
                and out[-1]["content"].startswith("<tool_response>")
            ):
                out[-1]["content"] += "\n" + text  # parallel results share one turn
            else:
                out.append({"role": "user", "content": text})
        else:
            out.append({"role": "user", "content": m.text})
    return out
