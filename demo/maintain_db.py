"""Maintenance task for one demo database, speaking Bistro's task protocol.

Usage: ``python demo/maintain_db.py --fleet ROOT --out OUTDIR [--hold-seconds S]
NODE STATUS_PIPE JSON_ARG``

Bistro appends the last three arguments: the node name, the path of the status pipe, and a
JSON object whose ``path_to_node`` is the root-first list of node names (instance, host, db).
The task checks ``ROOT/<host>/<node>.sqlite`` (integrity check, ANALYZE, row counts and a
SHA-256 checksum of every row), then writes ``OUTDIR/timeline/<node>.<pid>.json`` with its own start
and end times and ``OUTDIR/report/<node>.json`` with the results. Last, it writes its status to
the pipe: ``done``, ``failed`` when the integrity check finds damage, or ``error_backoff`` on
any other error. Bistro ignores the exit code.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Maintenance:
    """Results of checking one database."""

    integrity: list[str]
    tables: dict[str, int]
    checksum: str

    @property
    def healthy(self) -> bool:
        return self.integrity == ["ok"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Check one demo fleet database; Bistro appends NODE STATUS_PIPE JSON_ARG."
    )
    parser.add_argument("--fleet", type=Path, required=True, help="fleet root directory")
    parser.add_argument("--out", type=Path, required=True, help="directory for results")
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=1.0,
        help=(
            "seconds to sleep after the checks (default 1.0). The sleep models a longer"
            " maintenance window, so several tasks overlap and host limits are exercised."
        ),
    )
    parser.add_argument("node", help="db node name, e.g. h07-fr")
    parser.add_argument("status_pipe", help="path to write the status line to, e.g. /dev/fd/3")
    parser.add_argument("json_arg", help="Bistro's JSON argument with path_to_node")
    args = parser.parse_args(argv)
    if args.hold_seconds < 0:
        parser.error(f"--hold-seconds {args.hold_seconds} is invalid: use a value >= 0")
    return args


def database_path(fleet: Path, node: str, task_arg: dict[str, Any]) -> tuple[str, Path]:
    """Return the host name and database file for ``node`` from ``path_to_node``."""
    path_to_node = task_arg.get("path_to_node")
    if not isinstance(path_to_node, list) or len(path_to_node) < 2:
        raise ValueError(
            f"JSON_ARG path_to_node={path_to_node!r} is invalid: expected a root-first list"
            " ending in [..., host, db]"
        )
    if path_to_node[-1] != node:
        raise ValueError(f"JSON_ARG path_to_node ends in {path_to_node[-1]!r}, not NODE {node!r}")
    host = str(path_to_node[-2])
    return host, fleet / host / f"{node}.sqlite"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _order_by(connection: sqlite3.Connection, table: str) -> str:
    columns = connection.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
    # Column 5 of table_info is the column's position in the primary key (0 = not in it).
    key = sorted((row[5], row[1]) for row in columns if row[5] > 0)
    if not key:
        return "rowid"
    return ", ".join(_quote(name) for _, name in key)


def _encode_blob(value: object) -> dict[str, str]:
    if isinstance(value, bytes):
        return {"blob": value.hex()}
    raise TypeError(f"unexpected SQLite value type {type(value).__name__}")


def _hash_table(connection: sqlite3.Connection, table: str, digest: Any) -> int:
    digest.update(f"table {table}\n".encode())
    query = f"SELECT * FROM {_quote(table)} ORDER BY {_order_by(connection, table)}"
    count = 0
    for row in connection.execute(query):
        line = json.dumps(list(row), ensure_ascii=False, default=_encode_blob)
        digest.update(line.encode() + b"\n")
        count += 1
    return count


def _check_integrity(connection: sqlite3.Connection) -> list[str]:
    try:
        return [row[0] for row in connection.execute("PRAGMA integrity_check")]
    except sqlite3.DatabaseError as exc:
        # Plain DatabaseError means a damaged file ("file is not a database", "malformed").
        # Subclasses such as OperationalError ("database is locked") may pass, so they raise.
        if type(exc) is not sqlite3.DatabaseError:
            raise
        return [str(exc)]


def maintain(path: Path) -> Maintenance:
    """Run the integrity check, ANALYZE, row counts and a checksum over every row.

    The checksum covers tables in name order and rows in primary-key order, so it changes only
    when the data changes.
    """
    if not path.is_file():
        raise FileNotFoundError(f"database {path} not found: rebuild the fleet with demo/fleet.py")
    # mode=rw opens an existing file only, because a typo must not create an empty database.
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    try:
        integrity = _check_integrity(connection)
        if integrity != ["ok"]:
            # A damaged file may fail any further read, so nothing else is attempted.
            return Maintenance(integrity=integrity, tables={}, checksum="")
        connection.execute("ANALYZE")
        connection.commit()
        names = connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"
            " AND name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        digest = hashlib.sha256()
        tables = {name: _hash_table(connection, name, digest) for (name,) in names}
    finally:
        connection.close()
    return Maintenance(integrity=integrity, tables=tables, checksum=digest.hexdigest())


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Write one JSON line through a temporary file, so readers never see half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(record, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)


def write_status(status_pipe: str, label: str) -> None:
    with open(status_pipe, "w", encoding="utf-8") as pipe:
        pipe.write(label + "\n")


def run(args: argparse.Namespace, start: float) -> str:
    """Check the database, record the results and return the status label."""
    host, path = database_path(args.fleet, args.node, json.loads(args.json_arg))
    result = maintain(path)
    time.sleep(args.hold_seconds)
    end = time.time()

    node = args.node
    timeline = {"node": node, "host": host, "start": start, "end": end, "pid": os.getpid()}
    # One file per run of the task, so a node processed twice shows up as two records.
    write_json(args.out / "timeline" / f"{node}.{os.getpid()}.json", timeline)
    report = {
        "node": node,
        "host": host,
        "integrity": "ok" if result.healthy else result.integrity,
        "tables": result.tables,
        "checksum": result.checksum,
    }
    write_json(args.out / "report" / f"{node}.json", report)
    if not result.healthy:
        print(f"integrity check of {path} failed: {result.integrity}", file=sys.stderr)
        return "failed"
    return "done"


def main(argv: Sequence[str] | None = None) -> int:
    # Taken before anything else so the recorded interval covers all of the task's work.
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
