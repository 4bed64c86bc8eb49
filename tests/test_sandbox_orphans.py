"""Nothing a sandbox holds outlives it: dropped, crashed and SIGKILLed owners leave nothing.

Each case looks only at the resources of the process it made (by owner tag), so what other
processes left on this machine cannot fail it.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium
import pytest

import trajgym  # noqa: F401 (registers the envs)
from trajgym.tools.sandbox import ProcessSandbox, SandboxLimits, isolation, orphans

pytestmark = pytest.mark.skipif(
    not all(isolation().values()),
    reason=f"full process isolation unavailable here: {isolation()}",
)
LIMITS = SandboxLimits(wall_s=5, cpu_s=3, memory_mb=256, processes=32, disk_mb=16)
# A child that opens a warm sandbox, says who it is and where, then dies as told.
CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from trajgym.tools.sandbox import ProcessSandbox, SandboxLimits, orphans
    box = ProcessSandbox(SandboxLimits(disk_mb=16))
    box.write_file("x.txt", "x")
    print(json.dumps({"tag": orphans.owner_tag(), "workspace": str(box.workspace)}), flush=True)
    how = sys.argv[1]
    if how == "crash":
        os._exit(3)  # no finalizers, no atexit
    if how == "exit":
        sys.exit(0)  # the sandbox is still open: its finalizer runs at exit
    time.sleep(600)  # SIGKILLed by the test
    """
)


def _child(how: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, how], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, json.loads(child.stdout.readline())


def _mine() -> orphans.Leftovers:
    gc.collect()
    return orphans.left_by(orphans.owner_tag())


def test_a_dropped_sandbox_is_released_by_its_finalizer() -> None:
    box = ProcessSandbox(LIMITS)
    box.write_file("x.txt", "x")
    workspace = box.workspace
    assert workspace.name.startswith(orphans.workspace_prefix())
    assert str(workspace) in _mine().mounts and _mine().processes  # a mount and an executor
    del box
    assert _mine().empty and not workspace.exists()


@pytest.mark.parametrize(
    "env_id", sorted(e for e in gymnasium.registry if e.startswith("trajgym/"))
)
def test_check_env_on_every_registered_env_leaves_no_mount(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(gymnasium.make(env_id).unwrapped, skip_render_check=True)
    assert _mine().empty
    assert orphans.workspace_prefix() not in Path("/proc/mounts").read_text()


def test_an_exit_with_a_sandbox_open_leaves_nothing() -> None:
    child, said = _child("exit")
    assert child.wait(30) == 0
    assert orphans.left_by(said["tag"]).empty


@pytest.mark.parametrize("how", ["crash", "sigkill"])
def test_what_a_crashed_or_killed_owner_left_is_swept(how: str) -> None:
    child, said = _child(how)
    if how == "sigkill":
        os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    left = orphans.left_by(said["tag"])
    assert left.mounts == (said["workspace"],)  # the owner could not clean up: this is the leak
    mine = ProcessSandbox(LIMITS)  # a live sandbox of ours: the sweep must spare it
    swept = orphans.sweep()
    assert swept.workspaces >= 1 and orphans.left_by(said["tag"]).empty
    assert mine.exec("echo alive").stdout == "alive\n" and mine.workspace.exists()
    mine.close()


def test_sandbox_uid_processes_of_a_dead_owner_are_killed() -> None:
    # What a weak-isolation sandbox (no pid namespace) leaves when its owner is SIGKILLed: a
    # sandbox-uid process marked with the dead owner, reparented away from it.
    spawn = textwrap.dedent(
        """
        import os, subprocess, sys
        from trajgym.tools.sandbox import orphans
        env = {"PATH": "/usr/bin:/bin", orphans.OWNER_ENV: orphans.owner_tag()}
        argv = ["setpriv", "--reuid=259999", "--regid=259999", "--clear-groups", "sleep", "600"]
        quiet = subprocess.DEVNULL
        p = subprocess.Popen(argv, env=env, start_new_session=True, stdout=quiet, stderr=quiet)
        print(orphans.owner_tag(), p.pid, flush=True)
        os._exit(0)
        """
    )
    out = subprocess.run([sys.executable, "-c", spawn], capture_output=True, text=True, check=True)
    tag, pid = out.stdout.split()
    for _ in range(50):  # until setpriv has changed its uid
        if orphans.left_by(tag).processes:
            break
        time.sleep(0.1)
    assert orphans.left_by(tag).processes == (int(pid),)
    assert orphans.sweep().processes >= 1
    for _ in range(50):  # SIGKILL is asynchronous
        if not orphans.left_by(tag).processes:
            break
        time.sleep(0.1)
    assert orphans.left_by(tag).empty


def test_the_first_sandbox_of_a_process_sweeps() -> None:
    child, said = _child("crash")
    child.wait(30)
    assert not orphans.left_by(said["tag"]).empty
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from trajgym.tools.sandbox import ProcessSandbox\nProcessSandbox().close()",
        ],
        check=True,
    )
    assert orphans.left_by(said["tag"]).empty


def test_a_reused_pid_is_not_its_old_owner() -> None:
    me = orphans.owner_tag()
    pid, start = me.split(".")
    assert orphans.owner_alive(me)
    assert not orphans.owner_alive(f"{pid}.{int(start) + 1}")  # same pid, another process
    assert not orphans.owner_alive("999999999.1") and not orphans.owner_alive("garbage")
