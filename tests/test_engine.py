"""The generation engine: transformers' own greedy tokens, continuous batching, shared prefixes.

Equality is asked of fp32 runs (the engine's packed matmuls sum in another order than
transformers', so tokens are held equal, log-probs to 1e-4). The default student checks the
real shapes and a real chat; a tiny Llama checks LoRA, weight refresh and the fallback.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from conftest import needs_smollm2
from helpers import tiny_model, tiny_tokenizer

from trajgym.agents.batching import Batcher
from trajgym.agents.engine import Engine, local_engine
from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.envs import make
from trajgym.rollouts.rollout import rollout

NEW = 24  # new tokens per reply


def _reference(model: Any, tokenizer: Any, prompt: str, new: int = NEW) -> list[int]:
    """transformers' greedy continuation of one prompt, alone (no padding, no batch)."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=new,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    return out[0, ids.shape[1] :].tolist()


def _expert_prompts(tokenizer: Any, episodes: int, upto: int = 2) -> list[str]:
    """RetailLite conversations up to their first assistant turn, as the student renders them."""
    env = make("trajgym/RetailLite-v0", split="test")
    out = []
    for seed in range(episodes):
        t = rollout(env, ScriptedExpert(), seed=seed)
        messages = [m.to_openai() for m in t.messages[:upto]]
        out.append(
            tokenizer.apply_chat_template(
                messages, tools=list(t.tools), tokenize=False, add_generation_prompt=True
            )
        )
    return out


def _all_at_once(
    engine: Engine, prompts: list[str], sessions: list[str], threads: int = 0
) -> list[Any]:
    with ThreadPoolExecutor(threads or len(prompts)) as pool:
        return list(pool.map(engine.submit, prompts, sessions))


@pytest.fixture(scope="module")
def student() -> tuple[Any, Any]:
    from trajgym.agents.models import load_student

    model, tokenizer = load_student(dtype="float32")
    return model.eval(), tokenizer


@needs_smollm2
def test_greedy_replies_are_transformers_tokens_with_the_prefix_computed_once(student) -> None:
    model, tokenizer = student
    prompts = _expert_prompts(tokenizer, 4)
    expected = [_reference(model, tokenizer, p) for p in prompts]
    engine = Engine(model, tokenizer, max_new_tokens=NEW, dtype="float32", slots=2)
    try:
        sessions = [f"task{i}|0|a" for i in range(len(prompts))]
        got = _all_at_once(engine, prompts, sessions, threads=2)
        assert [list(g.token_ids) for g in got] == expected
        system = tokenizer(prompts[0], add_special_tokens=False).input_ids
        shared = system.index(tokenizer.eos_token_id) + 1  # the system turn: tools, policy
        assert engine.stats.prefix_tokens == shared  # once, for four conversations
        assert engine.stats.reused_tokens >= shared * (len(prompts) - 1)
        # Four conversations, two in flight, in two slots: a finished one's slot is taken by
        # the next at once (never a round waiting for the longest reply).
        assert engine.cache.slots == 2 and max(engine.stats.batch_sizes) == 2
        # Log-probs of the greedy tokens are the model's own.
        g = got[0]
        with torch.no_grad():
            ids = torch.tensor([list(g.prompt_ids) + list(g.token_ids)])
            logits = model(ids).logits[0, len(g.prompt_ids) - 1 : -1].float()
        own = torch.log_softmax(logits, -1).gather(-1, ids[0, len(g.prompt_ids) :, None])
        assert torch.allclose(torch.tensor(g.logprobs), own.squeeze(-1), atol=1e-4)
    finally:
        engine.close()


@needs_smollm2
def test_a_conversation_continues_from_its_cache_as_a_full_prompt_would(student) -> None:
    model, tokenizer = student
    [first] = _expert_prompts(tokenizer, 1, upto=2)
    [third] = _expert_prompts(tokenizer, 1, upto=4)  # the same episode two turns on
    engine = Engine(model, tokenizer, max_new_tokens=NEW, dtype="float32", slots=4)
    try:
        engine.submit(first, "task0|0|a")
        computed = engine.stats.computed_tokens
        later = engine.submit(third, "task0|0|a")
        reused = len(tokenizer(first, add_special_tokens=False).input_ids) - 1
        assert engine.stats.reused_tokens >= reused  # the first turn's keys and values kept
        new = engine.stats.computed_tokens - computed
        assert new < len(later.prompt_ids) - reused + NEW + 1
        assert list(later.token_ids) == _reference(model, tokenizer, third)
    finally:
        engine.close()


def _episodes(engine: Engine, model: Any, tokenizer: Any, n: int, slots: int) -> list[Any]:
    """``n`` Retail test episodes through ``engine``, ``slots`` in flight, deterministic."""
    from trajgym.agents.student import StudentAgent, StudentConfig

    engine.expect(n, slots)

    def play(seed: int) -> Any:
        env = make("trajgym/Retail-v1", split="test", max_episode_steps=3)
        agent = StudentAgent(model, tokenizer, StudentConfig(max_new_tokens=8), batcher=engine)
        try:
            return rollout(env, agent, seed=seed)
        finally:
            agent.end()
            engine.finished()

    with ThreadPoolExecutor(slots) as pool:
        return list(pool.map(play, range(n)))


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    env = make("trajgym/Retail-v1", split="train")
    texts = [
        chatml(to_text_messages(t.messages, t.tools))
        for t in (rollout(env, ScriptedExpert(), seed=s) for s in range(3))
    ]
    tokenizer = tiny_tokenizer(texts)
    return tiny_model(tokenizer).eval(), tokenizer


def test_sampled_replies_do_not_depend_on_which_rows_share_a_step(tiny) -> None:
    model, tokenizer = tiny
    prompt = "<|im_start|>user\nhello there, where is my order<|im_end|>\n<|im_start|>assistant\n"
    others = [prompt.replace("hello", "hi" * n) for n in range(1, 6)]
    alone = Engine(model, tokenizer, max_new_tokens=12, temperature=1.0, seed=7)
    crowded = Engine(model, tokenizer, max_new_tokens=12, temperature=1.0, seed=7)
    try:
        one = alone.submit(prompt, "task|1|x")
        many = _all_at_once(
            crowded, [prompt, *others], ["task|1|x"] + [f"o{n}|1|x" for n in range(5)]
        )
        assert many[0].token_ids == one.token_ids and len(one.token_ids) == 12
        assert many[0].logprobs == pytest.approx(one.logprobs, abs=1e-5)
        crowded.reseed(8)  # another run's streams
        assert crowded.submit(prompt, "task|1|y").token_ids != one.token_ids
    finally:
        alone.close()
        crowded.close()


def test_an_adapter_is_served_merged_and_a_refresh_reads_new_weights(tiny) -> None:
    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny
    model = get_peft_model(
        tiny_model(tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"])
    ).eval()
    prompt = "<|im_start|>user\nmy order please<|im_end|>\n<|im_start|>assistant\n"
    engine = Engine(model, tokenizer, max_new_tokens=10, dtype="float32")
    try:
        assert list(engine.submit(prompt).token_ids) == _reference(model, tokenizer, prompt, 10)
        with torch.no_grad():  # an "update": the adapter now changes the model
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
        changed = _reference(model, tokenizer, prompt, 10)
        engine.refresh()
        assert list(engine.submit(prompt).token_ids) == changed
    finally:
        engine.close()


def test_dropped_caches_give_their_memory_back_and_replies_stay_the_same(tiny) -> None:
    model, tokenizer = tiny
    prompt = "<|im_start|>user\nwhere is my order<|im_end|>\n<|im_start|>assistant\n"
    engine = Engine(model, tokenizer, max_new_tokens=10, dtype="float32")
    try:
        first = list(engine.submit(prompt, "a|1|x").token_ids)
        used = engine.cache
        engine.drop_caches()
        assert engine.cache is not used and used.keys.numel() == used.values.numel() == 0
        assert not engine._sessions and not engine._prefixes
        assert list(engine.submit(prompt, "a|1|x").token_ids) == first
    finally:
        engine.close()


def test_the_same_episodes_replay_whatever_the_threads_timing(tiny) -> None:
    model, tokenizer = tiny
    runs = []
    for _ in range(2):
        engine = Engine(model, tokenizer, max_new_tokens=8, slots=3)
        engine.trace = []
        try:
            played = _episodes(engine, model, tokenizer, 7, 3)
        finally:
            engine.close()
        runs.append(([[m.model_dump() for m in t.messages] for t in played], engine.trace))
    assert runs[0] == runs[1]
    assert all(t.status == "ok" for t in played)


def test_a_model_the_engine_cannot_run_gets_the_batcher() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = tiny_tokenizer(["hello world, how are you"])
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=64)
    )
    with pytest.raises(ValueError, match="model type 'gpt2'"):
        Engine(model, tokenizer)
    fallback = local_engine(model, tokenizer, slots=32, max_new_tokens=4)
    try:
        assert isinstance(fallback, Batcher) and fallback.max_batch == 16
    finally:
        fallback.close()
