"""Process helpers for the demo stack: free ports, log tails, sessions, listening sockets.

They read Linux's /proc and the ``ss`` tool from iproute2.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now.

    NOTE: another process may take the port before the api-server binds it; startup then
    fails with the api-server log in the error.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a log file, or a note that it is missing."""
    if not path.is_file():
        return f"({path} missing)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """Return (state, process group, session) of ``pid`` from /proc, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces, so split after the last ")".
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[3])


def session_members(session_ids: set[int]) -> list[int]:
    """Return live (non-zombie) pids whose process group or session is in ``session_ids``.

    Task processes move to a process group of their own but stay in the session, so both
    ids are checked.
    """
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is None or stat[0] == "Z":
            continue
        if stat[1] in session_ids or stat[2] in session_ids:
            members.append(int(entry.name))
    return sorted(members)


def home_members(home: Path) -> list[int]:
    """Return live pids that run in ``home`` or have ``AIRFLOW_HOME=home`` in their environment.

    The api-server's worker process starts a session of its own, so it escapes both the
    process group and the session of the api-server. Airflow's processes rename themselves
    with setproctitle, which can overwrite the environment that /proc shows, so the working
    directory, which every stack process inherits, is checked too.
    """
    wanted = f"AIRFLOW_HOME={home}".encode()
    home_text = str(home)
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _proc_stat(int(entry.name))
        if stat is None or stat[0] == "Z":
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            cwd = ""
        if cwd == home_text:
            members.append(int(entry.name))
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            members.append(int(entry.name))
    return sorted(members)


def listening_sockets(pids: set[int]) -> list[tuple[str, int]] | None:
    """Return (local address, pid) for each TCP socket in LISTEN state owned by ``pids``.

    Returns None when ``ss`` (iproute2) is not installed, so callers can skip the check.
    """
    ss = shutil.which("ss")
    if ss is None:
        return None
    output = subprocess.run(
        [ss, "-ltnpH"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    found = []
    for line in output.splitlines():
        columns = line.split()
        if len(columns) < 4:
            continue
        for pid in re.findall(r"pid=(\d+)", line):
            if int(pid) in pids:
                found.append((columns[3], int(pid)))
    return found


def is_loopback(address: str) -> bool:
    """Tell whether an ``ss`` local address such as ``127.0.0.1:8080`` is on loopback."""
    host = address.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host == "::1"


def signal_group(pgid: int, signum: signal.Signals) -> None:
    """Send ``signum`` to a process group that may already be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


def signal_pid(pid: int, signum: signal.Signals) -> None:
    """Send ``signum`` to a process that may already be gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
