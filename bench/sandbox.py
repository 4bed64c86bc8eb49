"""Sandbox cost: p50 / p99 time to acquire a sandbox and to run a trivial command in it,
for each backend available (process; Docker where an engine runs), beside a plain
``subprocess.run`` of the same command, measured in one run.

Target: exec <= 1.5x a bare ``subprocess.run`` of the same command. Both ratios (acquire and
exec over ``subprocess.run``) are printed so that a change can be compared with its baseline.

Run: python bench/sandbox.py [--n 200]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Callable

from trajgym.tools.sandbox import ProcessSandbox, isolation
from trajgym.tools.sandbox.docker import DockerPool, DockerSandbox, docker_available

# The same interpreter on both sides (the sandbox sees /usr only, not a pyenv or venv python).
COMMAND = ["/usr/bin/python3", "-c", "print(1)"]


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(0.99 * (len(ordered) - 1))] * 1e3


def timed(fn: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    print(f"process sandbox isolation: {isolation()}")
    bare = timed(lambda: subprocess.run(COMMAND, capture_output=True, check=True), args.n)
    acquire = timed(lambda: ProcessSandbox().close(), args.n)
    with ProcessSandbox() as sandbox:
        execs = timed(lambda: sandbox.exec(COMMAND), args.n)
    rows = [("subprocess.run", bare), ("process acquire+close", acquire), ("process exec", execs)]
    reason = docker_available()
    if reason is None:
        n = max(10, args.n // 10)  # a container start costs ~0.3 s
        cold = timed(lambda: DockerSandbox().close(), n)
        pool = DockerPool(size=4)
        time.sleep(5)
        pooled = timed(lambda: pool.acquire().close(), 4)
        with DockerSandbox() as box:
            docker_execs = timed(lambda: box.exec(COMMAND), n)
        pool.close()
        rows += [
            ("docker start+remove", cold),
            ("docker pooled acquire+close", pooled),
            ("docker exec", docker_execs),
        ]
    else:
        print(f"docker backend skipped: {reason}")
    for name, samples in rows:
        p50, p99 = percentiles(samples)
        print(f"{name:24s} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    acquire_ratio = statistics.median(acquire) / statistics.median(bare)
    print(f"acquire+close / subprocess.run (p50): {acquire_ratio:.2f}x")
    ratio = statistics.median(execs) / statistics.median(bare)
    print(
        f"exec / subprocess.run (p50): {ratio:.2f}x (target <= 1.5x: "
        f"{'met' if ratio <= 1.5 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
