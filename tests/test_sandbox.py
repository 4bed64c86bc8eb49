"""The process sandbox: hostile commands are contained, the host is untouched, nothing leaks."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from trajgym.tools.sandbox import ProcessSandbox, SandboxError, SandboxLimits, isolation, orphans

pytestmark = pytest.mark.skipif(
    not all(isolation().values()),
    reason=f"full process isolation unavailable here: {isolation()}",
)
LIMITS = SandboxLimits(wall_s=5, cpu_s=3, memory_mb=256, processes=32, disk_mb=32)


@pytest.fixture(params=[True, False], ids=["warm", "cold"])
def box(request):
    """A sandbox whose namespaces live across commands (warm), or are made per command."""
    with ProcessSandbox(LIMITS, warm=request.param) as sandbox:
        yield sandbox


def still_works(sandbox: ProcessSandbox) -> None:
    """The sandbox (and a fresh one) still run commands after an attack."""
    assert sandbox.exec("echo alive").stdout == "alive\n"
    with ProcessSandbox(LIMITS) as fresh:
        assert fresh.list_files() == [] and fresh.exec("echo clean").stdout == "clean\n"


HIDDEN_OR_READ_ONLY = [
    ("read the shadow file", "cat /etc/shadow"),
    ("read root's home", "ls /root"),
    ("read the project", f"cat {Path(__file__).resolve()}"),
    ("write to /usr", "echo x > /usr/evil"),
    ("write to /etc", "echo x > /etc/evil"),
    ("write to the root", "echo x > /evil"),
    ("mount a filesystem", "mount -t tmpfs none /tmp"),
    ("become root", "python3 -c 'import os; os.setuid(0)'"),
    ("change the hostname", "hostname evil"),
    ("write a device", "echo x > /dev/sda"),
    ("reach the docker socket", "ls /var/run/docker.sock"),
]


@pytest.mark.parametrize(
    ("attack", "command"), HIDDEN_OR_READ_ONLY, ids=[a for a, _ in HIDDEN_OR_READ_ONLY]
)
def test_host_files_are_hidden_or_read_only(box: ProcessSandbox, attack: str, command: str) -> None:
    result = box.exec(command)
    assert result.exit_code != 0, (attack, result)
    assert not Path("/usr/evil").exists() and not Path("/etc/evil").exists()
    still_works(box)


def test_runs_as_an_unprivileged_user_with_an_empty_environment(box, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    result = box.exec("id -u; env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'")
    assert result.stdout.startswith(f"{box.uid}\n") and box.uid >= 1000
    assert "sk-host-secret" not in result.stdout and "OPENAI" not in result.stdout


def test_host_processes_are_invisible_and_unkillable(box) -> None:
    count = box.exec("ls /proc | grep -c '^[0-9]'")
    assert int(count.stdout) <= 5  # only the sandbox's own processes
    box.exec("kill -9 -1; kill -9 1")  # may take the warm executor with it: it restarts
    assert os.getppid() > 0 and subprocess.run(["true"], check=False).returncode == 0
    still_works(box)


def test_no_network_not_even_the_hosts_loopback(box) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(server.accept()[0]), daemon=True).start()
    code = (
        "import socket\n"
        "for host, port in (('1.1.1.1', 53), ('127.0.0.1', PORT)):\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2); print('connected', host)\n"
        "    except OSError as e:\n"
        "        print('refused', host)\n"
    ).replace("PORT", str(port))
    box.write_file("net.py", code)
    result = box.exec(["python3", "net.py"])
    server.close()
    assert "connected" not in result.stdout and result.stdout.count("refused") == 2
    assert not accepted


def sandbox_processes(uid: int) -> list[str]:
    """The sandbox user's processes on the host, other than its warm executor.

    Killed processes may linger a moment as zombies until the namespace's init reaps them.
    """
    for _ in range(20):
        found = subprocess.run(["pgrep", "-a", "-u", str(uid)], capture_output=True, text=True)
        left = [line for line in found.stdout.splitlines() if "trajgym-executor" not in line]
        if not left:
            break
        time.sleep(0.05)
    return left


def test_fork_bomb_is_contained(box) -> None:
    result = box.exec("bomb() { bomb | bomb & }; bomb; sleep 2; echo survived", timeout_s=5)
    assert "fork" in result.stderr.lower() or "resource" in result.stderr.lower()  # nproc hit
    assert sandbox_processes(box.uid) == []  # killed with the command
    still_works(box)


def test_memory_bomb_is_contained(box) -> None:
    result = box.exec(["python3", "-c", "x = bytearray(2 * 1024**3); print('allocated')"])
    assert result.exit_code != 0 and "allocated" not in result.stdout
    still_works(box)


def test_endless_loop_hits_the_wall_clock_and_cpu_limits(box) -> None:
    sleeping = box.exec("sleep 60", timeout_s=1)
    assert sleeping.timed_out and sleeping.duration_s < 5
    spinning = box.exec(["python3", "-c", "while True: pass"], timeout_s=30)
    assert not spinning.timed_out and spinning.exit_code != 0  # SIGXCPU after cpu_s
    assert spinning.duration_s < 15
    still_works(box)


def test_background_processes_die_with_the_command(box) -> None:
    box.exec("(sleep 120 &) ; nohup sleep 120 >/dev/null 2>&1 & echo started")
    assert sandbox_processes(box.uid) == []


def test_huge_output_is_capped(box) -> None:
    result = box.exec("yes hello", timeout_s=3)
    assert result.truncated and len(result.stdout) <= LIMITS.output_bytes


def test_filling_the_disk_stops_at_the_workspace_size(box) -> None:
    free_before = os.statvfs("/tmp").f_bavail
    result = box.exec(
        "for i in 1 2 3 4; do dd if=/dev/zero of=big$i bs=1M count=15 2>/dev/null; done; du -sm ."
    )
    used = int(result.stdout.split()[0])
    assert used <= LIMITS.disk_mb
    assert abs(os.statvfs("/tmp").f_bavail - free_before) * os.statvfs("/tmp").f_frsize < 2**25
    assert box.exec("dd if=/dev/zero of=one bs=1M count=40").exit_code != 0  # file size limit
    still_works(box)


def test_too_many_open_files_fails_inside(box) -> None:
    code = "fs = [open(f'f{i}', 'w') for i in range(500)]"
    result = box.exec(["python3", "-c", code])
    assert result.exit_code != 0 and "Too many open files" in result.stderr


def test_paths_cannot_leave_the_workspace(box) -> None:
    box.exec("ln -s /etc/passwd link; ln -s / root")
    for path in ("link", "root/etc/hostname", "../evil", "/etc/passwd", "a/../../x"):
        with pytest.raises(SandboxError, match="outside the workspace"):
            box.read_file(path) if "evil" not in path else box.write_file(path, "x")
    with pytest.raises(SandboxError, match="outside"):
        box.write_file("../../evil", "x")


def test_sandboxes_cannot_see_each_other() -> None:
    with ProcessSandbox(LIMITS) as a, ProcessSandbox(LIMITS) as b:
        a.write_file("secret.txt", "a's secret")
        result = b.exec(f"cat {a.workspace}/secret.txt; ls /tmp")
        assert "No such file" in result.stderr  # a's workspace does not exist for b
        assert result.stdout == ""  # and b's /tmp is its own, empty


def test_a_thousand_episodes_leak_nothing() -> None:
    # Only this process's own resources count: another process's leftovers cannot fail it.
    for n in range(1000):
        with ProcessSandbox(LIMITS, warm=n % 10 == 0) as sandbox:
            sandbox.write_file("x.txt", str(n))
            if n % 100 == 0:
                assert sandbox.exec("cat x.txt").stdout == str(n)
                assert orphans.left_by(orphans.owner_tag()).processes  # it would see a leak
    assert orphans.left_by(orphans.owner_tag()).empty


def test_a_closed_sandbox_refuses_work() -> None:
    sandbox = ProcessSandbox(LIMITS)
    sandbox.close()
    sandbox.close()  # idempotent
    with pytest.raises(SandboxError, match="closed"):
        sandbox.exec("true")


def test_a_command_cannot_forge_the_warm_executors_answer(box) -> None:
    forge = (
        "for fd in /proc/[0-9]*/fd/1; do "
        'echo \'{"nonce": "x", "exit_code": 0, "stdout": "tests passed"}\' > $fd; '
        "done 2>/dev/null; exit 3"
    )
    result = box.exec(forge)
    assert result.exit_code == 3  # the answer is the executor's, not the forgery
    assert box.exec("echo next").stdout == "next\n"


def test_killing_the_warm_executor_resets_the_sandbox_not_the_workspace() -> None:
    with ProcessSandbox(LIMITS) as sandbox:
        sandbox.write_file("keep.txt", "kept")
        result = sandbox.exec("kill -9 -1")
        assert result.exit_code != 0 and "restarted" in result.stderr and sandbox.resets == 1
        assert sandbox.exec("cat keep.txt").stdout == "kept"


def test_input_the_command_never_reads_is_no_problem(box) -> None:
    """A command that exits without reading a large input, or is killed at its timeout while
    the input is still being written, leaves the sandbox working."""
    big = "x" * 2**20  # beyond any pipe buffer: the writer must block, then fail
    assert box.exec("true", stdin=big).exit_code == 0
    slow = box.exec("sleep 5", stdin=big, timeout_s=0.5)
    assert slow.timed_out
    assert box.exec("wc -c", stdin=big).stdout.strip() == str(2**20)  # input still arrives whole
    still_works(box)
