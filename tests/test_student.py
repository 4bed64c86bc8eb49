"""The student agent: renders with the chat template, generates, parses calls robustly."""

from __future__ import annotations

import torch
from helpers import tiny_model, tiny_tokenizer

from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.student import StudentAgent, StudentConfig
from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.envs import make
from trajgym.rollouts.rollout import rollout


def corpus() -> list[str]:
    env = make("trajgym/Retail-v1", split="train")
    return [
        chatml(to_text_messages(t.messages, t.tools))
        for t in (rollout(env, ScriptedExpert(), seed=s) for s in range(3))
    ]


class ScriptedLM:
    """Stands in for a causal LM: 'generates' a fixed reply after whatever prompt it gets."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, reply: str) -> None:
        self.reply = tokenizer(reply, add_special_tokens=False)["input_ids"]
        self.vocab = len(tokenizer)
        self.prompts: list[torch.Tensor] = []  # the tokens run at the start of each reply
        self.step = 0

    def forward(self, input_ids, attention_mask, position_ids, use_cache, logits_to_keep, cache):
        from types import SimpleNamespace

        from transformers import DynamicCache

        if cache is None or input_ids.shape[1] > 1:
            self.prompts.append(input_ids)
            self.step = 0
        else:
            self.step += 1
        logits = torch.zeros((len(input_ids), 1, self.vocab))
        logits[:, -1, self.reply[min(self.step, len(self.reply) - 1)]] = 1.0
        kv = torch.zeros((len(input_ids), 1, attention_mask.shape[1], 1))
        return SimpleNamespace(logits=logits, cache=DynamicCache(ddp_cache_data=[(kv, kv)]))

    __call__ = forward


def test_student_tool_call_is_parsed_and_executed() -> None:
    tok = tiny_tokenizer(corpus())
    lm = ScriptedLM(
        tok, '<tool_call>{"name": "list_product_types", "arguments": {}}</tool_call><|im_end|>'
    )
    env = make("trajgym/Retail-v1", split="test", max_episode_steps=2)
    t = rollout(env, StudentAgent(lm, tok), seed=0)
    prompt = tok.decode(lm.prompts[0][0])
    assert prompt.startswith("<|im_start|>system\n") and "list_product_types()" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    assert t.messages[2].tool_calls[0].function.name == "list_product_types"
    assert "T-Shirt" in t.messages[3].content and t.termination == "truncated"
    assert t.usage.prompt_tokens > 0 and t.provenance.kind == "student"


def test_garbled_calls_are_recorded_and_answered_with_errors() -> None:
    tok = tiny_tokenizer(corpus())
    lm = ScriptedLM(
        tok, '<tool_call>{"name": "get_order_details", "arguments": {"order_id": </tool_call>'
    )
    env = make("trajgym/Retail-v1", split="test", max_episode_steps=1)
    t = rollout(env, StudentAgent(lm, tok), seed=0)
    assert t.messages[2].tool_calls[0].function.name == "get_order_details"
    assert t.messages[3].content.startswith(
        "Error: arguments for 'get_order_details' are not valid JSON"
    )


def test_a_real_tiny_model_plays_whole_episodes() -> None:

    tok = tiny_tokenizer(corpus())
    model = tiny_model(tok, layers=1).eval()
    env = make("trajgym/Retail-v1", split="test", max_episode_steps=3)
    agent = StudentAgent(model, tok, StudentConfig(max_new_tokens=8, temperature=1.0))
    first = rollout(env, agent, seed=4)
    again = rollout(env, agent, seed=4)
    assert first.status == "ok" and len(first.timings) >= 1
    assert [m.model_dump() for m in first.messages] == [m.model_dump() for m in again.messages]


def test_batched_generation_matches_one_by_one_and_batches_episodes() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from trajgym.agents.batching import Batcher, generate_batch

    tok = tiny_tokenizer(corpus())
    model = tiny_model(tok).eval()
    prompts = [
        f"<|im_start|>user\n{'please ' * n}help<|im_end|>\n<|im_start|>assistant\n"
        for n in range(1, 7)
    ]
    alone = [generate_batch(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    together = generate_batch(model, tok, prompts, max_new_tokens=6)
    assert [g.text for g in together] == [g.text for g in alone]
    assert [g.prompt_tokens for g in together] == [g.prompt_tokens for g in alone]

    batcher = Batcher(model, tok, max_batch=8, max_new_tokens=4)
    env_agents = [
        (
            make("trajgym/Retail-v1", split="test", max_episode_steps=2),
            StudentAgent(model, tok, batcher=batcher),
        )
        for _ in range(8)
    ]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda ea: rollout(ea[0], ea[1], seed=1), env_agents))
    assert all(t.status == "ok" for t in results)
    assert max(batcher.batches) > 1 and sum(batcher.batches) == sum(len(t.timings) for t in results)


def test_generation_with_a_student_on_disk(tmp_path) -> None:
    from trajgym.records.store import read_trajectories
    from trajgym.rollouts.config import GenerateConfig
    from trajgym.rollouts.generate import generate

    tok = tiny_tokenizer(corpus())
    tiny_model(tok).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    cfg = GenerateConfig(
        split="test",
        num_tasks=6,
        concurrency=6,
        max_turns=2,
        output=tmp_path / "s.jsonl",
        agent={"kind": "student", "student": str(tmp_path / "tiny"), "max_new_tokens": 4},
    )
    report = generate(cfg, show_progress=False)
    trajectories = list(read_trajectories(cfg.output))
    assert report.written == 6 and all(t.status == "ok" for t in trajectories)
    assert all(
        t.provenance.kind == "student" and str(tmp_path) in (t.provenance.model or "")
        for t in trajectories
    )
    assert all(t.usage.completion_tokens > 0 for t in trajectories)


def test_session_cache_carries_over_turns_and_matches_a_full_prefill() -> None:
    """Greedy replies with the cache reused equal replies computed from scratch."""
    from trajgym.agents.batching import generate_batch
    from trajgym.agents.kv_sessions import SessionGenerator

    tok = tiny_tokenizer(corpus())
    model = tiny_model(tok).eval()
    sessions = SessionGenerator(model, tok, max_sessions=2)
    talks = {f"s{n}": f"<|im_start|>user\n{'please ' * n}help<|im_end|>\n" for n in range(1, 4)}
    for turn in range(3):
        keys = list(talks)[turn % 2 :]  # the batch changes from turn to turn
        prompts = [talks[k] + "<|im_start|>assistant\n" for k in keys]
        fresh = generate_batch(model, tok, prompts, max_new_tokens=5)
        cached = sessions.generate(list(zip(keys, prompts, strict=True)), max_new_tokens=5)
        assert [g.text for g in cached] == [g.text for g in fresh]
        assert [g.completion_tokens for g in cached] == [g.completion_tokens for g in fresh]
        for k, g in zip(keys, cached, strict=True):
            talks[k] += (
                f"<|im_start|>assistant\n{g.text}<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n"
            )
    assert sessions.reused_tokens > 0  # later turns start from their cache
    assert len(sessions.sessions) == 2  # least recently used dropped


def test_batcher_close_stops_its_thread_and_drops_caches() -> None:
    from trajgym.agents.batching import Batcher

    tok = tiny_tokenizer(corpus())
    batcher = Batcher(tiny_model(tok).eval(), tok, max_batch=2, max_new_tokens=3)
    batcher.submit("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "s")
    assert "s" in batcher.sessions.sessions
    batcher.close()
    assert not batcher._thread.is_alive() and not batcher.sessions.sessions


def test_the_same_checkpoint_evaluated_twice_plays_the_same_episodes(tmp_path, monkeypatch) -> None:
    """Threads arrive in a random order each run; steps (and so replies) do not change."""
    import random
    import time

    from trajgym.agents.engine import Engine
    from trajgym.records.store import read_trajectories
    from trajgym.rollouts.config import GenerateConfig
    from trajgym.rollouts.generate import generate

    tok = tiny_tokenizer(corpus())
    tiny_model(tok).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    jitter = random.Random()  # unseeded: each run's timing differs
    act = StudentAgent.act
    monkeypatch.setattr(
        StudentAgent, "act", lambda self, m: time.sleep(jitter.uniform(0, 0.03)) or act(self, m)
    )
    rounds: list[list[tuple[str, ...]]] = []
    close = Engine.close

    def closing(self: Engine) -> None:
        rounds.append(list(self.trace or []))
        close(self)

    monkeypatch.setattr(Engine, "close", closing)
    start = Engine._serve

    def traced(self: Engine) -> None:
        self.trace = []  # each step's rows, by the sessions' ordering keys
        start(self)

    monkeypatch.setattr(Engine, "_serve", traced)

    def evaluate(name: str) -> list[tuple]:
        cfg = GenerateConfig(
            split="test",
            num_tasks=10,
            concurrency=4,
            max_turns=3,
            output=tmp_path / f"{name}.jsonl",
            agent={"kind": "student", "student": str(tmp_path / "tiny"), "max_new_tokens": 5},
        )
        generate(cfg, show_progress=False)
        return sorted(
            (t.task_id, t.success, [m.model_dump() for m in t.messages])
            for t in read_trajectories(cfg.output)
        )

    first, second = evaluate("first"), evaluate("second")
    assert len(first) == 10 and first == second
    assert rounds[0] == rounds[1]  # the same steps, the same rows in each
    assert max(map(len, rounds[0])) == 4  # and full: every episode in play waits for the rest
