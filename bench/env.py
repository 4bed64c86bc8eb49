"""Environment overheads, as ratios against baselines measured in the same run.

1. A tool step through ``env.step`` (JSON parsing, validation, dispatch, the tool message, the
   gymnasium wrappers) against calling the same tool function directly. Target: <= 30 us.
2. Reset plus final verification (gold replay on a fresh state, hash comparison, transcript
   checks) against a peer's approach of reloading and hashing the whole world. Target: <= 5 ms.

Run: python bench/env.py
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable

import trajgym  # noqa: F401
from trajgym.envs import make
from trajgym.envs.retail.tools import RetailState, get_order_details
from trajgym.envs.retail.world import World, make_world
from trajgym.records.schema import FunctionCall, Message, ToolCall


def per_call(fn: Callable[[], object], n: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean seconds per call."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n)
    return statistics.median(times)


def main() -> None:
    env = make("trajgym/Retail-v1", split="test")
    world = make_world(0)
    print(f"world: {len(world.customers)} customers, {len(world.orders)} orders")
    tasks = env.unwrapped.tasks("test")
    _, info = env.reset(seed=0, options={"task_id": tasks[0].id})
    order_id = next(iter(world.orders))
    action = Message(
        role="assistant",
        tool_calls=(
            ToolCall(
                id="c1",
                function=FunctionCall(
                    name="get_order_details", arguments=json.dumps({"order_id": order_id})
                ),
            ),
        ),
    )
    state = RetailState(world)
    bare = per_call(lambda: get_order_details.fn(state, order_id=order_id), 20000)
    step = per_call(lambda: env.step(action), 20000)
    print(
        f"tool step: {step * 1e6:.1f} us via env.step vs {bare * 1e6:.1f} us bare "
        f"(ratio {step / bare:.1f}x; target <= 30 us: {'met' if step <= 30e-6 else 'MISSED'})"
    )

    base = env.unwrapped
    ids = [t.id for t in tasks[:200]]
    counter = iter(range(10**9))

    def reset_and_verify() -> None:
        i = next(counter)
        env.reset(seed=i, options={"task_id": ids[i % len(ids)]})
        base.verify()

    ours = per_call(reset_and_verify, 2000)
    blob = world.model_dump_json()

    def reload_and_hash() -> None:
        fresh = World.model_validate_json(blob)
        hashlib.sha256(fresh.model_dump_json().encode()).hexdigest()
        hashlib.sha256(fresh.model_dump_json().encode()).hexdigest()  # gold and final states

    peer = per_call(reload_and_hash, 3, repeats=3)
    print(
        f"reset + verify: {ours * 1e3:.3f} ms vs reload-and-hash {peer * 1e3:.1f} ms "
        f"(speed-up {peer / ours:.0f}x; target <= 5 ms: {'met' if ours <= 5e-3 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
