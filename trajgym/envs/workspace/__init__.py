"""The Workspace domain (``trajgym/Workspace-v0``): code and data tasks in a sandbox.

Each episode owns a sandbox holding the task's project: a sales CSV to analyse, a module
whose tests fail, a function to rename, a script to write, or files to answer from. Success
is verified inside the sandbox after the conversation (the project's own and hidden tests,
the JSON a freshly run script writes) plus the facts the agent had to tell the user.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

from trajgym.envs.base import ToolEnv, bounded_changes
from trajgym.envs.verify import outputs_told
from trajgym.envs.workspace.changes import file_changes
from trajgym.envs.workspace.checks import run_checks
from trajgym.envs.workspace.project import Project
from trajgym.envs.workspace.tasks import ENV_ID, make_tasks
from trajgym.envs.workspace.tools import WORKSPACE_TOOLKIT
from trajgym.errors import ConfigError
from trajgym.records.schema import Split, StateChange, Task, Verdict
from trajgym.tools import Toolkit
from trajgym.tools.sandbox import DockerSandbox, ProcessSandbox, Sandbox, SandboxLimits

SandboxFactory = Callable[[SandboxLimits], Sandbox]
BACKENDS: dict[str, SandboxFactory] = {
    "process": lambda limits: ProcessSandbox(limits),
    "docker": lambda limits: DockerSandbox(limits),
}


@dataclass
class WorkspaceState:
    """An episode's sandbox and the project it started from."""

    sandbox: Sandbox
    project: Project


class WorkspaceEnv(ToolEnv[WorkspaceState]):
    """A developer's project in a sandbox: analyse data, fix and refactor code, write scripts."""

    env_id: ClassVar[str] = ENV_ID
    version: ClassVar[int] = 0
    toolkit: ClassVar[Toolkit[Any]] = WORKSPACE_TOOLKIT
    system_prompt: ClassVar[str] = resources.files(__package__).joinpath("policy.md").read_text()
    accepts_task_files: ClassVar[bool] = False  # a task's project is generated, not written

    def __init__(
        self,
        split: str = "train",
        sandbox: str | SandboxFactory = "process",
        sandbox_limits: SandboxLimits | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(sandbox, str) and sandbox not in BACKENDS:
            raise ConfigError(f"Unknown sandbox '{sandbox}'. Choose one of: {', '.join(BACKENDS)}.")
        super().__init__(split=split, **kwargs)
        self._new_sandbox = BACKENDS[sandbox] if isinstance(sandbox, str) else sandbox
        self.sandbox_limits = sandbox_limits or SandboxLimits()

    def split_tasks(self, split: Split) -> Sequence[Task]:
        """Every task of ``split``."""
        return make_tasks(split).tasks

    def new_state(self, task: Task) -> WorkspaceState:
        """A fresh sandbox holding the task's project; the previous episode's is closed."""
        self.end_episode()
        project = make_tasks(task.split).projects[task.id]
        sandbox = self._new_sandbox(self.sandbox_limits)
        for path, content in project.files.items():
            sandbox.write_file(path, content)
        return WorkspaceState(sandbox, project)

    def digest(self, state: WorkspaceState) -> str:
        """A hash of the workspace's files."""
        return state.sandbox.snapshot()

    def state_changes(self, state: WorkspaceState) -> list[StateChange]:
        """The files created, modified or deleted since the project was laid out."""
        return file_changes(state.project.files, state.sandbox)

    def verify(self) -> Verdict:
        """Run the project's checks in the sandbox; the required facts must have been told."""
        assert self.task is not None and self.state is not None
        # Both before the checks write their files.
        final_hash = self.state.sandbox.snapshot()
        changes = bounded_changes(self.state_changes(self.state))
        checks = run_checks(self.state.sandbox, self.state.project)
        outputs = outputs_told(self.task.required_outputs, self.transcript)
        success = all(checks.values()) and all(outputs.values())
        return Verdict(
            reward=1.0 if success else 0.0,
            state_match=all(checks.values()),
            outputs=outputs,
            checks=checks,
            final_state_hash=final_hash,
            changes=changes,
        )

    def end_episode(self) -> None:
        """Close the episode's sandbox (also done by the next reset and by close)."""
        if self.state is not None:
            self.state.sandbox.close()

    def close(self) -> None:
        """Close the current sandbox."""
        self.end_episode()
        super().close()
