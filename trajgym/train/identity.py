"""What made a result: digests of model weights, of an agent, and of the code that ran.

A stored result (an evaluation's episodes) may be reused only when the model, the agent's
settings and the code that made it are the same. The digests here name those: a model folder
by its files' bytes (a retrained student has new weights, so a new digest), an agent by its
spec plus its weights, and the code by its commit and uncommitted changes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from trajgym.rollouts.config import AgentSpec

# Not part of a model: training state and reports that sit beside the weights.
_NOT_WEIGHTS = {"checkpoint", "tracking", "summary.json", "loss.png", "curves.png", "config.yaml"}


def folder_digest(folder: str | Path) -> str:
    """sha256 over a model folder's file names and bytes (training state left out)."""
    root = Path(folder)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not set(p.relative_to(root).parts) & _NOT_WEIGHTS
    )
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(_file_digest(path, path.stat().st_size, path.stat().st_mtime_ns).encode())
    return digest.hexdigest()


@functools.cache
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:
    """A file's sha256, memoized while its size and modification time are unchanged."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def model_digest(student: str) -> str:
    """The digest of a student's weights: its folder's, or its name's when it is a hub id."""
    from trajgym.agents.models import DEFAULT_STUDENT, default_student_path

    folder = default_student_path() if student == DEFAULT_STUDENT else Path(student)
    if folder.is_dir():
        return folder_digest(folder)
    return hashlib.sha256(f"hub:{student}".encode()).hexdigest()  # offline: its name only


def agent_identity(agent: AgentSpec) -> dict[str, Any]:
    """What decides an agent's replies: its settings, and for a student its weights' digests."""
    identity: dict[str, Any] = {"spec": agent.model_dump(mode="json")}
    if agent.kind == "student":
        identity["weights"] = model_digest(agent.student)
        identity["adapter"] = folder_digest(agent.adapter) if agent.adapter else None
    return identity


@functools.cache
def code_identity() -> str:
    """The commit of trajgym's checkout, plus a digest of uncommitted changes (if any)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD").strip()
    if not commit:  # an installed package: its version is all there is
        from importlib.metadata import version

        return f"trajgym {version('trajgym')}"
    changes = git("diff", "HEAD", "--", "trajgym")
    return commit + (f"+{hashlib.sha256(changes.encode()).hexdigest()[:12]}" if changes else "")


def identity_digest(identity: dict[str, Any]) -> str:
    """A short, stable name for an identity (its canonical JSON's sha256)."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
