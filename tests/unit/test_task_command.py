"""How a task's command is stopped: at its timeout, when its supervisor is gone, on kill.

Each command here starts a grandchild that records its pid, so the tests can check that
the whole process group went, not only the command itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bistro_provider.core.protocol import CommandResult, run_task_command
from bistro_provider.operators.job import BistroTaskOperator

HANG = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(sys.argv[1], "w").write(str(child.pid))
    time.sleep(600)
    """
)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def hang_command(tmp_path: Path) -> tuple[list[str], Path]:
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    pid_file = tmp_path / "grandchild.pid"
    return [sys.executable, str(script), str(pid_file)], pid_file


def test_timeout_kills_whole_group(hang_command: tuple[list[str], Path]) -> None:
    command, pid_file = hang_command
    started = time.monotonic()

    result = run_task_command(command, "db1", {}, timeout=5, on_output=lambda line: None)

    assert result.timed_out is True
    assert result.abandoned is False
    assert time.monotonic() - started >= 5
    assert wait_gone(int(pid_file.read_text()))


def test_keep_running_false_abandons_command(hang_command: tuple[list[str], Path]) -> None:
    command, pid_file = hang_command
    result = run_task_command(
        command, "db1", {}, on_output=lambda line: None, keep_running=lambda: not pid_file.exists()
    )

    assert result.abandoned is True
    assert result.timed_out is False
    assert wait_gone(int(pid_file.read_text()))


def test_on_start_gets_command_pid(tmp_path: Path) -> None:
    script = tmp_path / "pid.py"
    script.write_text("import os, sys\nopen(sys.argv[2], 'w').write('done')\nprint(os.getpid())")
    pids: list[int] = []
    lines: list[str] = []

    result = run_task_command(
        [sys.executable, str(script)], "db1", {}, on_output=lines.append, on_start=pids.append
    )

    assert result.status_text == "done"
    assert pids == [int(lines[-1])]


def test_command_dies_with_killed_parent(
    tmp_path: Path, hang_command: tuple[list[str], Path]
) -> None:
    command, pid_file = hang_command
    runner = tmp_path / "runner.py"
    runner.write_text(
        "import sys\n"
        "from bistro_provider.core.protocol import run_task_command\n"
        f"run_task_command({command!r}, 'db1', {{}}, die_with_parent=True,\n"
        "                 on_start=lambda pid: open(sys.argv[1], 'w').write(str(pid)))\n"
    )
    command_pid_file = tmp_path / "command.pid"
    parent = subprocess.Popen(
        [sys.executable, str(runner), str(command_pid_file)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and command_pid_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)

    parent.send_signal(signal.SIGKILL)
    parent.wait()

    assert wait_gone(int(command_pid_file.read_text()))


def operator(timeout: float | None = 4.0) -> BistroTaskOperator:
    return BistroTaskOperator(
        task_id="run", job="j", node="db1", config_file="unused", command_timeout=timeout
    )


def test_timed_out_result_is_error_backoff_with_reason() -> None:
    result = CommandResult(status_text="", returncode=-9, timed_out=True)

    kind, data = operator()._result_of(result)

    assert kind == "error_backoff"
    assert data is not None
    assert data["timed_out"] is True
    assert "timed out after 4 s" in data["exception"]


def test_abandoned_result_is_error_backoff() -> None:
    result = CommandResult(status_text="done\n", returncode=-9, abandoned=True)

    kind, data = operator()._result_of(result)

    assert kind == "error_backoff"
    assert data is not None
    assert "supervisor exited" in data["exception"]


def test_on_kill_kills_running_command(hang_command: tuple[list[str], Path]) -> None:
    command, pid_file = hang_command
    task = operator(None)
    process = subprocess.Popen(command, start_new_session=True)
    task._remember_command(process.pid)
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)

    task.on_kill()
    process.wait(10)

    assert process.returncode == -signal.SIGKILL
    assert wait_gone(int(pid_file.read_text()))
