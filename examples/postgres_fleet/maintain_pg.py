"""Maintenance task for one PostgreSQL database, speaking Bistro's task protocol.

Usage: ``python maintain_pg.py --ports FILE --out OUTDIR [--hold-seconds S]
NODE STATUS_PIPE JSON_ARG``

Bistro appends the last three arguments: the node name (the database), the path of the
status pipe, and a JSON object whose ``path_to_node`` is the root-first list of node names
(instance, host, db). The task connects to database NODE on the host's cluster
(127.0.0.1, port from the ports file) with ``application_name = 'bistro_batch'``, runs
ANALYZE, counts the rows of every table in the ``public`` schema and keeps the connection
open for ``--hold-seconds``. After closing it, the task waits until its server process has
left ``pg_stat_activity``, so the server never shows the connection after the task
reported its status. It then writes ``OUTDIR/timeline/<node>.json`` with its own start and
end times, ``OUTDIR/report/<node>.json`` with the results, and last its status to the pipe:
``done``, or ``error_backoff`` on any error. Bistro ignores the exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    # Run as a script: make `demo` and `examples` importable from the repository root.
    sys.path.insert(0, str(REPO_ROOT))

import psycopg2  # noqa: E402
from psycopg2 import sql  # noqa: E402
from psycopg2.extensions import connection as PgConnection  # noqa: E402

from demo.maintain_db import write_json, write_status  # noqa: E402
from examples.postgres_fleet.list_dbs import read_ports  # noqa: E402

BATCH_APPLICATION_NAME = "bistro_batch"
EXIT_CHECK_APPLICATION_NAME = "bistro_exit_check"
EXIT_WAIT_SECONDS = 10.0

TABLES_QUERY = (
    "SELECT table_name FROM information_schema.tables"
    " WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1"
)


@dataclass(frozen=True)
class Maintenance:
    """Results of maintaining one database."""

    tables: dict[str, int]
    backend_pid: int
    server_version: int


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Maintain one PostgreSQL database; Bistro appends NODE STATUS_PIPE JSON_ARG."
    )
    parser.add_argument(
        "--ports", type=Path, required=True, help="JSON file mapping host names to ports"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory for results")
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=1.0,
        help=(
            "seconds to keep the connection open after the work (default 1.0). The wait"
            " models a longer maintenance window, so several tasks overlap on a host."
        ),
    )
    parser.add_argument("node", help="db node name, which is the database name, e.g. pg1_db03")
    parser.add_argument("status_pipe", help="path to write the status line to, e.g. /dev/fd/3")
    parser.add_argument("json_arg", help="Bistro's JSON argument with path_to_node")
    args = parser.parse_args(argv)
    if args.hold_seconds < 0:
        parser.error(f"--hold-seconds {args.hold_seconds} is invalid: use a value >= 0")
    return args


def host_of(node: str, task_arg: dict[str, Any]) -> str:
    """Return the host name of ``node`` from ``path_to_node`` (``[..., host, db]``)."""
    path_to_node = task_arg.get("path_to_node")
    if not isinstance(path_to_node, list) or len(path_to_node) < 2:
        raise ValueError(
            f"JSON_ARG path_to_node={path_to_node!r} is invalid: expected a root-first list"
            " ending in [..., host, db]"
        )
    if path_to_node[-1] != node:
        raise ValueError(f"JSON_ARG path_to_node ends in {path_to_node[-1]!r}, not NODE {node!r}")
    return str(path_to_node[-2])


def connect(port: int, dbname: str, application_name: str) -> PgConnection:
    """Open an autocommit connection to ``dbname`` on 127.0.0.1:``port``."""
    connection = psycopg2.connect(
        host="127.0.0.1",
        port=port,
        dbname=dbname,
        user="postgres",
        application_name=application_name,
        connect_timeout=10,
    )
    # Autocommit, so that no transaction stays open during the hold.
    connection.autocommit = True
    return connection


def maintain(connection: PgConnection) -> Maintenance:
    """Run ANALYZE and count the rows of every table in the ``public`` schema."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute(TABLES_QUERY)
        names = [name for (name,) in cursor.fetchall()]
        tables = {}
        for name in names:
            cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
            tables[name] = int(cursor.fetchone()[0])
        cursor.execute("SELECT pg_backend_pid()")
        backend_pid = int(cursor.fetchone()[0])
    return Maintenance(tables, backend_pid, connection.server_version)


def wait_for_backend_exit(port: int, backend_pid: int) -> None:
    """Wait until server process ``backend_pid`` has left ``pg_stat_activity``.

    A server process exits shortly after its client closes the connection, not at once.
    Waiting here means the task reports its status, and so frees its admission, only after
    the server has dropped the connection.

    :raises TimeoutError: when the process is still listed after 10 s.
    """
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    connection = connect(port, "postgres", EXIT_CHECK_APPLICATION_NAME)
    try:
        with connection.cursor() as cursor:
            while True:
                # Each statement runs in its own transaction, so it reads a fresh snapshot.
                cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend_pid,))
                if cursor.fetchone() is None:
                    return
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"server process {backend_pid} on port {port} is still in"
                        f" pg_stat_activity {EXIT_WAIT_SECONDS:.0f} s after the close"
                    )
                time.sleep(0.01)
    finally:
        connection.close()


def run(args: argparse.Namespace, start: float) -> str:
    """Maintain the database, record the results and return the status label."""
    host = host_of(args.node, json.loads(args.json_arg))
    ports = read_ports(args.ports)
    if host not in ports:
        raise ValueError(f"host {host!r} is not in {args.ports}: hosts there are {sorted(ports)}")
    port = ports[host]
    connection = connect(port, args.node, BATCH_APPLICATION_NAME)
    try:
        result = maintain(connection)
        time.sleep(args.hold_seconds)
    finally:
        connection.close()
    wait_for_backend_exit(port, result.backend_pid)
    end = time.time()

    node = args.node
    timeline = {"node": node, "host": host, "start": start, "end": end, "pid": os.getpid()}
    write_json(args.out / "timeline" / f"{node}.json", timeline)
    report = {
        "node": node,
        "host": host,
        "port": port,
        "tables": result.tables,
        "backend_pid": result.backend_pid,
        "server_version": result.server_version,
    }
    write_json(args.out / "report" / f"{node}.json", report)
    return "done"


def main(argv: Sequence[str] | None = None) -> int:
    # Taken before anything else so the recorded interval covers the whole connection.
    start = time.time()
    args = parse_args(argv)
    try:
        status = run(args, start)
    except Exception:
        traceback.print_exc()
        status = "error_backoff"
    write_status(args.status_pipe, status)
    return 0 if status == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
