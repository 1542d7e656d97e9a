"""Node source script for the demo fleet: print the children of one node, one per line.

Usage: ``python demo/discover.py FLEET_ROOT PARENT_NAME``

A Bistro ``script`` node source runs this once per parent node. For a host directory under
FLEET_ROOT it prints that host's database node names (the ``.sqlite`` file stems). For any
other parent, such as the ``instance`` root node, it prints every host directory name.
Both lists are sorted.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def children(fleet_root: Path, parent: str) -> list[str]:
    """Return the sorted child node names of ``parent`` in the fleet."""
    host_dir = fleet_root / parent
    # A parent name with a path separator is never a host, so it cannot escape the fleet root.
    if "/" not in parent and parent not in ("", ".", "..") and host_dir.is_dir():
        return sorted(path.stem for path in host_dir.glob("*.sqlite") if path.is_file())
    return sorted(
        path.name
        for path in fleet_root.iterdir()
        if path.is_dir() and not path.name.startswith(".")
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: discover.py FLEET_ROOT PARENT_NAME", file=sys.stderr)
        return 2
    fleet_root = Path(args[0])
    if not fleet_root.is_dir():
        print(
            f"discover.py: fleet root {fleet_root} not found: build it first with"
            f" `python demo/fleet.py {fleet_root}`",
            file=sys.stderr,
        )
        return 1
    for name in children(fleet_root, args[1]):
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
