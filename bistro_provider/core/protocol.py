"""Bistro's task protocol: how a job's command is started and how it reports its status.

The command runs as ``[*command, node, status_pipe_path, json_argument]`` with no shell in
between, so node names and job config reach it as single argv entries whatever characters
they contain. The task writes its status to the pipe; the last line counts and the exit
code is ignored.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

MAX_STATUS_BYTES = 1 << 20
"""The status pipe is read up to this size; the rest is drained and dropped."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished task command left behind."""

    status_text: str
    returncode: int | None
    timed_out: bool = False
    status_truncated: bool = False


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
) -> CommandResult:
    """Run one task with Bistro's protocol and return its status text and exit code.

    stdout and stderr are merged and passed line by line to `on_output`. On timeout the
    process group is killed and `timed_out` is set.

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
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    reader.start()
    timed_out = _stream_output(process, on_output, timeout)
    reader.join()
    return CommandResult(
        status_text=bytes(status).decode("utf-8", errors="replace"),
        returncode=process.returncode,
        timed_out=timed_out,
        status_truncated=truncated[0],
    )


def _stream_output(
    process: subprocess.Popen[bytes], on_output: Callable[[str], None], timeout: float | None
) -> bool:
    """Forward the process output until it exits; kill its group after `timeout` seconds."""
    assert process.stdout is not None
    timer: threading.Timer | None = None
    timed_out = [False]
    if timeout is not None:

        def kill() -> None:
            timed_out[0] = True
            try:
                os.killpg(process.pid, 9)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
    try:
        for raw in process.stdout:
            on_output(raw.decode("utf-8", errors="replace").rstrip("\n"))
        process.wait()
    finally:
        if timer is not None:
            timer.cancel()
    return timed_out[0]
