"""Generation throughput against the bound that concurrency and provider latency allow.

A fake OpenAI-compatible server (in its own process, so it does not share our GIL) answers
every call after a fixed latency L. With C episodes in flight and k model calls per episode on
average, no generator can beat C / (k * L) episodes/s. Two ratios to that bound are printed:

- steady state (the target, >= 0.9 at C = 256 on 2 cores): the mean number of calls waiting
  at the provider, over C, while every slot had an episode to play (from the end of the
  start ramp to the start of the last episode, read from the server's request log). Any
  time a slot spends elsewhere (our client, environments, threads, the store) lowers it.
- end to end: episodes / wall time. A finite batch cannot reach the bound (the last episodes
  run with slots idle beside them), so it is also printed against an ideal zero-overhead
  generator playing the same episodes in the same order (a simulation).

Run: python bench/generation.py [--concurrency 256] [--episodes 2048] [--latency 2.0]
                                [--ramp L] [--backend local|ray] [--ray-workers N]

With ``--backend ray`` the episodes run on a local Ray cluster (one worker process per core),
so the per-call CPU of litellm is spread over processes instead of one GIL.
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing as mp
import tempfile
import time
import urllib.request
from pathlib import Path

from trajgym.llm.client import LLMConfig
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec, GenerateConfig
from trajgym.rollouts.generate import generate, plan
from trajgym.testing.fake_openai import serve_forever


def in_flight_share(
    spans: list[tuple[float, float]], start: float, end: float, slots: int
) -> float:
    """Mean requests in flight over [start, end], as a share of ``slots``."""
    busy = sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)
    return busy / (slots * (end - start))


def ideal_makespan(calls: list[int], slots: int, latency: float, ramp: float) -> float:
    """Wall time of a zero-overhead generator: each episode calls * latency, greedy slots."""
    free = [ramp * i / slots for i in range(slots)]
    heapq.heapify(free)
    for k in calls:
        heapq.heappush(free, heapq.heappop(free) + k * latency)
    return max(free)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=2048)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument(
        "--ramp", type=float, default=None, help="start ramp, ramp_s (default: the latency)"
    )
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--ray-workers", type=int, default=None)
    args = parser.parse_args()
    if args.ramp is None:  # one latency: the first calls come back as a stream, not a burst
        args.ramp = args.latency

    ports: mp.Queue[int] = mp.Queue()
    server = mp.Process(target=serve_forever, args=(ports, args.latency), daemon=True)
    server.start()
    port = ports.get(timeout=30)
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLMConfig(
            model="openai/fake",
            api_base=f"http://127.0.0.1:{port}/v1",
            max_concurrency=args.concurrency,
            timeout_s=60,
        )
        cfg = GenerateConfig(
            num_tasks=args.episodes,
            concurrency=args.concurrency,
            output=Path(tmp) / "t.jsonl",
            agent=AgentSpec(kind="litellm", llm=llm),
            ramp_s=args.ramp,
            backend=args.backend,
            ray_workers=args.ray_workers,
            ray_worker_cpus=0.01,  # workers wait on the network: let every one start
        )
        clock = time.time() - time.perf_counter()  # the report's perf_counter -> wall clock
        report = generate(cfg, show_progress=False)
        wall = report.episodes_wall_s  # setup (task generation, store) is reported apart
        trajectories = list(read_trajectories(cfg.output))
        calls = sum(len(t.timings) for t in trajectories)
        agent_s = [s.agent_s for t in trajectories for s in t.timings]
        env_s = [s.env_s for t in trajectories for s in t.timings]
        per_key = {t.key: len(t.timings) for t in trajectories}
        ideal = ideal_makespan(
            [per_key[k] for k in plan(cfg)], args.concurrency, args.latency, args.ramp
        )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats") as reply:
        spans = [tuple(span) for span in json.load(reply)["spans"]]
    server.kill()
    window = (min(a for a, _ in spans) + args.ramp, report.all_started + clock)
    steady = in_flight_share(spans, *window, args.concurrency)
    per_episode = calls / report.written
    bound = args.concurrency / (per_episode * args.latency)
    achieved = report.written / wall
    print(
        f"{report.written} episodes ({report.errors} errors), {calls} model calls "
        f"({per_episode:.2f} per episode), latency {args.latency}s, "
        f"concurrency {args.concurrency}, backend {args.backend}"
    )
    print(
        f"mean model call {sum(agent_s) / len(agent_s):.3f}s (latency {args.latency}s), "
        f"mean env step {1e3 * sum(env_s) / len(env_s):.2f} ms"
    )
    print(f"setup {report.wall_s - wall:.1f}s; episodes phase {wall:.1f}s")
    verdict = "met" if steady >= 0.9 else "MISSED"
    print(
        f"steady state ({window[1] - window[0]:.1f}s while every slot had work): "
        f"{steady:.3f} of the bound (target >= 0.9: {verdict})"
    )
    print(
        f"end to end: {achieved:.1f} episodes/s, bound {bound:.1f}: ratio {achieved / bound:.3f}; "
        f"an ideal generator of these episodes takes {ideal:.1f}s (ratio "
        f"{report.written / ideal / bound:.3f}): we reach {ideal / wall:.3f} of it"
    )


if __name__ == "__main__":
    main()
