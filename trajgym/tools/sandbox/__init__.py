"""Sandboxes for tools that run code: one per episode, always closed."""

from trajgym.tools.sandbox.base import ExecResult, Sandbox, SandboxError, SandboxLimits
from trajgym.tools.sandbox.docker import DockerPool, DockerSandbox, docker_available
from trajgym.tools.sandbox.process import ProcessSandbox, isolation

__all__ = [
    "DockerPool",
    "DockerSandbox",
    "ExecResult",
    "ProcessSandbox",
    "Sandbox",
    "SandboxError",
    "SandboxLimits",
    "docker_available",
    "isolation",
]
