"""Text tool calls: the lenient parser, and one rendering shared by Python and the template."""

from __future__ import annotations

import json
from typing import Literal

from helpers import tiny_tokenizer

from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.tool_text import chatml, parse_reply, to_text_messages, tools_prompt
from trajgym.envs import make
from trajgym.records.schema import Message
from trajgym.rollouts.rollout import rollout
from trajgym.tools import tool


def test_hermes_calls_with_text_around() -> None:
    m = parse_reply(
        'Let me check.\n<tool_call>{"name": "get_order_details", "arguments": {"order_id": "#W1"}}'
        '</tool_call>\n<tool_call>{"name": "list_product_types", "arguments": {}}</tool_call>'
    )
    assert m.content == "Let me check."
    assert [c.function.name for c in m.tool_calls] == ["get_order_details", "list_product_types"]
    assert json.loads(m.tool_calls[0].function.arguments) == {"order_id": "#W1"}
    assert len({c.id for c in m.tool_calls}) == 2


def test_bare_and_fenced_json_and_missing_close_tag() -> None:
    bare = parse_reply('{"name": "get_user_details", "arguments": {"user_id": "u1"}}')
    assert bare.content is None and bare.tool_calls[0].function.name == "get_user_details"
    fenced = parse_reply(
        '```json\n[{"name": "a", "arguments": {}}, {"name": "b", "parameters": {"x": 1}}]\n```'
    )
    assert [c.function.name for c in fenced.tool_calls] == ["a", "b"]
    assert json.loads(fenced.tool_calls[1].function.arguments) == {"x": 1}
    unclosed = parse_reply('<tool_call>{"name": "a", "arguments": {"k": "v"}}')
    assert unclosed.tool_calls[0].function.name == "a"


def test_invalid_json_is_recorded_as_written() -> None:
    m = parse_reply(
        '<tool_call>{"name": "cancel_pending_order", "arguments": {"order_id": "#W1",}</tool_call>'
    )
    call = m.tool_calls[0]
    assert call.function.name == "cancel_pending_order"
    assert call.function.arguments.startswith('{"name": "cancel_pending_order"')
    nameless = parse_reply("<tool_call>not json at all</tool_call>")
    assert (
        nameless.tool_calls[0].function.name == ""
        and nameless.tool_calls[0].function.arguments == "not json at all"
    )


def test_plain_text_is_just_text() -> None:
    m = parse_reply("Your order {is} on its way [soon].")
    assert m.content == "Your order {is} on its way [soon]." and m.tool_calls is None


def test_invalid_call_gets_an_env_error_not_a_repair() -> None:
    env = make("trajgym/Retail-v1", split="test")
    env.reset(seed=0)
    m = parse_reply(
        '<tool_call>{"name": "get_order_details", "arguments": {"order_id": }</tool_call>'
    )
    obs, *_ = env.step(m)
    assert obs.messages[0].text.startswith(
        "Error: arguments for 'get_order_details' are not valid JSON"
    )


def test_template_renders_exactly_like_python() -> None:
    t = rollout(make("trajgym/Retail-v1", split="test"), ScriptedExpert(), seed=5)
    conversation = to_text_messages(t.messages, t.tools)
    expected = chatml(conversation, add_generation_prompt=True)
    tokenizer = tiny_tokenizer([expected])
    messages = [m.to_openai() for m in t.messages]
    rendered = tokenizer.apply_chat_template(
        messages, tools=list(t.tools), tokenize=False, add_generation_prompt=True
    )
    assert rendered == expected
    assert "<tool_call>" in rendered and "<tool_response>" in rendered


def test_tools_render_as_signatures_in_python_and_template() -> None:
    @tool
    def book(
        state: object,
        city: str,
        nights: int,
        kind: Literal["single", "double"],
        guests: list[str],
        extras: dict[str, int],
        note: str | None = None,
    ) -> str:
        """Book a room."""
        return "ok"

    [line] = tools_prompt([book.schema]).splitlines()[-1:]
    assert line.startswith(
        'book(city: string, nights: integer, kind: "single" | "double", '
        "guests: array of string, extras: {"
    )
    assert line.endswith(
        ', note?: {"anyOf":[{"type":"string"},{"type":"null"}],"default":null}): Book a room.'
    )
    messages = [Message(role="system", content="P."), Message(role="user", content="hi")]
    expected = chatml(to_text_messages(messages, [book.schema]))
    tokenizer = tiny_tokenizer([expected])
    rendered = tokenizer.apply_chat_template(
        [m.to_openai() for m in messages], tools=[book.schema], tokenize=False
    )
    assert rendered == expected


def test_arguments_are_kept_as_written_so_the_next_prompt_shows_the_same_text() -> None:
    written = (
        '<tool_call>{"name": "get_order_details", "arguments": {"order_id":"#W1"}}</tool_call>'
    )
    message = parse_reply(written)
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.arguments == '{"order_id":"#W1"}'
    [rendered] = to_text_messages([message], tools=[])
    assert rendered["content"] == written  # the model reads back exactly what it wrote
