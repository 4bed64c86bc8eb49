"""Generation throughput against the bound that concurrency and provider latency allow.

A fake OpenAI-compatible server (in its own process, so it does not share our GIL) answers
every call after a fixed latency L. With C episodes in flight and k model calls per episode on
average, no generator can beat C / (k * L) episodes/s; we print what `generate` achieves as a
ratio of that bound. Target: >= 0.9 at 256 concurrent episodes on 2 cores.

Run: python bench/generation.py [--concurrency 256] [--episodes 1024] [--latency 2.0]
                                [--backend local|ray] [--ray-chunk 64]

With ``--backend ray`` the episodes run on a local Ray cluster (one worker process per core),
so the per-call CPU of litellm is spread over processes instead of one GIL.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
from pathlib import Path

from trajgym.agents.llm import LLMConfig
from trajgym.testing.fake_openai import serve_forever
from trajgym.trajectories.generate import AgentSpec, GenerateConfig, generate
from trajgym.trajectories.store import read_trajectories


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--episodes", type=int, default=2048)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--backend", choices=["local", "ray"], default="local")
    parser.add_argument("--ray-chunk", type=int, default=64)
    args = parser.parse_args()

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
            teacher=AgentSpec(kind="litellm", llm=llm),
            backend=args.backend,
            ray_chunk=args.ray_chunk,
            ray_task_cpus=0.01,  # the chunks wait on the network: let every one start
        )
        report = generate(cfg, show_progress=False)
        wall = report.episodes_wall_s  # setup (task generation, store) is reported apart
        trajectories = list(read_trajectories(cfg.output))
        calls = sum(len(t.timings) for t in trajectories)
        agent_s = [s.agent_s for t in trajectories for s in t.timings]
        env_s = [s.env_s for t in trajectories for s in t.timings]
    server.kill()
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
    verdict = "met" if achieved / bound >= 0.9 else "MISSED"
    print(
        f"achieved {achieved:.1f} episodes/s; bound {bound:.1f} episodes/s; "
        f"ratio {achieved / bound:.3f} (target >= 0.9: {verdict})"
    )


if __name__ == "__main__":
    main()
