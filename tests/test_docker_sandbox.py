"""The Docker sandbox, against a real engine (scripts/docker_setup.sh starts one and builds
the image; without an engine these tests skip, saying why)."""

from __future__ import annotations

import time

import pytest

from trajgym.tools.sandbox import SandboxError, SandboxLimits
from trajgym.tools.sandbox.docker import LABEL, DockerPool, DockerSandbox, docker_available

REASON = docker_available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no Docker sandbox here: {REASON}")
LIMITS = SandboxLimits(wall_s=5, cpu_s=3, memory_mb=128, processes=32, disk_mb=16)


@pytest.fixture
def box():
    with DockerSandbox(LIMITS) as sandbox:
        yield sandbox


def test_runs_commands_in_the_workspace_as_an_unprivileged_user(box) -> None:
    box.write_file("data/in.txt", "hello")
    result = box.exec("cat data/in.txt; id -u; pwd; echo out > made.txt")
    assert result.ok and result.stdout == "hello65534\n/workspace\n"
    assert box.read_file("made.txt") == "out\n" and box.list_files() == ["data/in.txt", "made.txt"]
    assert (
        box.exec(["python3", "-c", "import sys; print(sys.stdin.read()[::-1])"], "abc").stdout
        == "cba\n"
    )


def test_no_network_read_only_root_and_no_privileges(box) -> None:
    net = box.exec(["python3", "-c", "import socket; socket.create_connection(('1.1.1.1', 53), 2)"])
    assert net.exit_code != 0
    assert box.exec("echo x > /etc/evil").exit_code != 0
    assert box.exec("python3 -c 'import os; os.setuid(0)'").exit_code != 0


def test_limits_and_timeouts_are_enforced(box) -> None:
    assert box.exec(["python3", "-c", "x = bytearray(512 * 1024**2)"]).exit_code != 0
    slow = box.exec("sleep 30", timeout_s=1)
    assert slow.timed_out and slow.duration_s < 5
    assert box.exec("yes", timeout_s=2).truncated
    bomb = box.exec("bomb() { bomb | bomb & }; bomb; sleep 1; echo after")
    assert "after" in bomb.stdout or bomb.exit_code != 0
    assert box.exec("echo alive").stdout == "alive\n"


def test_containers_are_removed_on_close(box) -> None:
    name = box.container.name
    box.close()
    assert name not in [c.name for c in box.client.containers.list(all=True)]
    with pytest.raises(SandboxError, match="closed"):
        box.exec("true")


def test_orphans_of_a_dead_process_are_swept(box) -> None:
    import trajgym.tools.sandbox.docker as module

    orphan = box.client.containers.run(
        "trajgym-sandbox:bookworm", ["sleep", "60"], detach=True, labels={LABEL: "999999999"}
    )
    module._swept = False
    with DockerSandbox(LIMITS):
        pass
    assert orphan.name not in [c.name for c in box.client.containers.list(all=True)]


def test_a_warm_pool_hands_out_started_sandboxes_quickly() -> None:
    pool = DockerPool(size=2, limits=LIMITS)
    try:
        time.sleep(3)  # let the pool start its containers
        started = time.perf_counter()
        sandbox = pool.acquire()
        waited = time.perf_counter() - started
        with sandbox:
            assert sandbox.exec("echo pooled").stdout == "pooled\n"
        assert waited < 0.1
    finally:
        pool.close()


def test_a_dropped_sandbox_removes_its_container() -> None:
    import gc

    box = DockerSandbox(LIMITS)
    name, client, workspace = box.container.name, box.client, box.workspace
    del box
    gc.collect()
    assert name not in [c.name for c in client.containers.list(all=True)]
    assert not workspace.exists()


def test_the_container_of_a_sigkilled_owner_is_swept() -> None:
    import json
    import os
    import signal
    import subprocess
    import sys

    import trajgym.tools.sandbox.docker as module

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import json, time\n"
            "from trajgym.tools.sandbox.docker import DockerSandbox\n"
            "box = DockerSandbox()\n"
            "print(json.dumps([box.container.name, str(box.workspace)]), flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    name, workspace = json.loads(child.stdout.readline())
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    module._swept = True  # the first sandbox here must not sweep yet: we look at the leak
    with DockerSandbox(LIMITS) as box:
        assert name in [c.name for c in box.client.containers.list(all=True)]  # the leak
        module._swept = False
        with DockerSandbox(LIMITS):
            pass
        assert name not in [c.name for c in box.client.containers.list(all=True)]
    from trajgym.tools.sandbox import orphans

    orphans.sweep()
    assert not os.path.exists(workspace)
