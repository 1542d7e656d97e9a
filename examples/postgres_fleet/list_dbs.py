"""Node source script for the PostgreSQL example: print the children of one node.

Usage: ``python list_dbs.py PORTS_JSON_FILE PARENT``

PORTS_JSON_FILE maps each host name to the port of its cluster on 127.0.0.1, for example
``{"pg1": 54011, "pg2": 54012}``. A Bistro ``script`` node source runs this once per parent.
For a host it connects to that host's cluster and prints the databases listed in
``pg_database``, except ``postgres`` and the two templates. For any other parent, such as
the ``instance`` root node, it prints the host names. Both lists are sorted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg2

USER_DATABASES_QUERY = (
    "SELECT datname FROM pg_database"
    " WHERE datname NOT IN ('postgres', 'template0', 'template1') ORDER BY 1"
)


def read_ports(path: Path) -> dict[str, int]:
    """Return the port of every host from a ports file.

    :raises ValueError: when the file is not a JSON object of host names to ports.
    """
    ports = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(ports, dict):
        raise ValueError(f"{path} contains {type(ports).__name__}: expected an object")
    for host, port in ports.items():
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"{path}: port {port!r} of host {host!r} is invalid: use 1-65535")
    return ports


def list_databases(port: int) -> list[str]:
    """Return the user databases of the cluster on 127.0.0.1:``port``."""
    connection = psycopg2.connect(
        host="127.0.0.1",
        port=port,
        dbname="postgres",
        user="postgres",
        application_name="bistro_node_source",
        connect_timeout=10,
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(USER_DATABASES_QUERY)
            return [name for (name,) in cursor.fetchall()]
    finally:
        connection.close()


def children(ports: dict[str, int], parent: str) -> list[str]:
    """Return the child node names of ``parent``: databases of a host, else the hosts."""
    if parent in ports:
        return list_databases(ports[parent])
    return sorted(ports)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: list_dbs.py PORTS_JSON_FILE PARENT", file=sys.stderr)
        return 2
    try:
        ports = read_ports(Path(args[0]))
        names = children(ports, args[1])
    except (OSError, ValueError, psycopg2.Error) as exc:
        # A non-zero exit makes Bistro keep the last good node list.
        print(f"list_dbs.py: listing the children of {args[1]!r} failed: {exc}", file=sys.stderr)
        return 1
    for name in names:
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
