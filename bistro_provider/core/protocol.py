"""Bistro's task protocol: how a job's command is started and how it reports its status.

The command runs as ``[*command, node, status_pipe_path, json_argument]`` with no shell in
between, so node names and job config reach it as single argv entries whatever characters
they contain. The task writes its status to the pipe; the last line counts and the exit
code is ignored.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_STATUS_BYTES = 1 << 20
"""The status pipe is read up to this size; the rest is drained and dropped."""
WATCH_INTERVAL = 1.0
"""Seconds between two `keep_running` checks of a running command."""
_PR_SET_PDEATHSIG = 1
"""prctl option from <linux/prctl.h>: the signal a process gets when its parent dies."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished task command left behind."""

    status_text: str
    returncode: int | None
    timed_out: bool = False
    status_truncated: bool = False
    abandoned: bool = False
    """The command was killed because `keep_running` returned False."""


def task_argument(
    *,
    job: str,
    path_to_node: Sequence[str],
    config: dict[str, Any],
    resources_by_node: dict[str, dict[str, int]],
    prev_status: dict[str, Any] | None,
    worker_node: str,
    worker_host: str,
) -> dict[str, Any]:
    """Build the JSON argument that Bistro passes to every task."""
    argument: dict[str, Any] = {
        "id": job,
        "path_to_node": list(path_to_node),
        "config": config,
        "resources_by_node": resources_by_node,
        "worker_node": worker_node,
        "worker_host": worker_host,
    }
    if prev_status is not None:
        argument["prev_status"] = prev_status
    return argument


def _drain(fd: int, sink: bytearray, truncated: list[bool]) -> None:
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(65536):
            room = MAX_STATUS_BYTES - len(sink)
            if room > 0:
                sink.extend(chunk[:room])
            if len(chunk) > room:
                truncated[0] = True


def run_task_command(
    command: Sequence[str],
    node: str,
    argument: dict[str, Any],
    *,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    on_output: Callable[[str], None] = print,
    on_start: Callable[[int], None] | None = None,
    keep_running: Callable[[], bool] | None = None,
    die_with_parent: bool = False,
) -> CommandResult:
    """Run one task with Bistro's protocol and return its status text and exit code.

    stdout and stderr are merged and passed line by line to `on_output`. The command runs
    in a session of its own, so its process group can be killed as a whole: after `timeout`
    seconds (`timed_out` is set), or as soon as `keep_running` returns False (checked every
    `WATCH_INTERVAL` seconds; `abandoned` is set).

    :param on_start: called with the command's pid, which is also its process group id.
    :param die_with_parent: ask Linux to SIGKILL the command when the thread that started
        it dies, so a killed task process cannot leave its command holding resources.
    :raises FileNotFoundError: if the command's program does not exist.
    :raises PermissionError: if it is not executable.
    """
    if not command:
        raise ValueError("the job has no command; set 'command' in the job config")
    read_fd, write_fd = os.pipe()
    status = bytearray()
    truncated = [False]
    reader = threading.Thread(target=_drain, args=(read_fd, status, truncated), daemon=True)
    argv = [*command, node, f"/dev/fd/{write_fd}", json.dumps(argument)]
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,
            # The hook only calls prctl through a ctypes function loaded before the fork, so
            # it takes no lock that another thread could hold.
            preexec_fn=_parent_death_signal() if die_with_parent else None,  # noqa: PLW1509
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    if on_start is not None:
        on_start(process.pid)
    reader.start()
    watchdog = _Watchdog(process.pid, timeout, keep_running)
    _stream_output(process, on_output, watchdog)
    reader.join()
    return CommandResult(
        status_text=bytes(status).decode("utf-8", errors="replace"),
        returncode=process.returncode,
        timed_out=watchdog.reason == "timeout",
        status_truncated=truncated[0],
        abandoned=watchdog.reason == "abandoned",
    )


def _parent_death_signal() -> Callable[[], None] | None:
    """Return a pre-exec hook that sets PR_SET_PDEATHSIG to SIGKILL, or None off Linux."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def set_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return set_signal


class _Watchdog(threading.Thread):
    """Kills a command's process group at its deadline or once `keep_running` says so."""

    def __init__(
        self, pgid: int, timeout: float | None, keep_running: Callable[[], bool] | None
    ) -> None:
        super().__init__(name=f"bistro-watchdog-{pgid}", daemon=True)
        self.pgid = pgid
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.keep_running = keep_running
        self.finished = threading.Event()
        self.reason: str | None = None

    def run(self) -> None:
        while True:
            wait = WATCH_INTERVAL
            if self.deadline is not None:
                wait = min(wait, max(self.deadline - time.monotonic(), 0.0))
            if self.finished.wait(wait):
                return
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self._kill("timeout")
                return
            if self.keep_running is not None and not self.keep_running():
                self._kill("abandoned")
                return

    def _kill(self, reason: str) -> None:
        self.reason = reason
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _stream_output(
    process: subprocess.Popen[bytes], on_output: Callable[[str], None], watchdog: _Watchdog
) -> None:
    """Forward the process output until it exits, while `watchdog` may kill its group."""
    assert process.stdout is not None
    if watchdog.deadline is not None or watchdog.keep_running is not None:
        watchdog.start()
    try:
        for raw in process.stdout:
            on_output(raw.decode("utf-8", errors="replace").rstrip("\n"))
        process.wait()
    finally:
        watchdog.finished.set()
