"""Nodes on levels, and the tree they form under the instance node.

A node set is rebuilt from scratch on every fetch: it starts with the instance node, and
each node source appends nodes in order, so a later source sees the nodes of earlier ones.
Two nodes with the same name on the same level are replicas: one task whose path may go
through either parent.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# One shared, read-only empty mapping: most nodes override no limit, and an empty dict per
# node would cost 64 bytes each (64 MB at a million nodes).
NO_CAPACITY: Mapping[str, int] = MappingProxyType({})


def _no_capacity() -> Mapping[str, int]:
    return NO_CAPACITY


@dataclass(eq=False, slots=True)
class Node:
    """A node of the forest.

    :param name: the node name; tasks and statuses are keyed by it.
    :param level: the index of the node's level in `Settings.levels`.
    :param parent: the node on the level above, None only for the instance node.
    :param enabled: a disabled node, or a node with a disabled ancestor, gets no new tasks.
    :param tags: free-form labels that `tag_whitelist` filters match.
    :param capacity: per-node limits that replace the level's `limit` for these resources.
    """

    name: str
    level: int
    parent: Node | None = None
    enabled: bool = True
    tags: frozenset[str] = frozenset()
    capacity: Mapping[str, int] = field(default_factory=_no_capacity)

    def path_to_root(self) -> list[Node]:
        """Return this node, then its parent, and so on up to the instance node."""
        path: list[Node] = []
        node: Node | None = self
        while node is not None:
            path.append(node)
            node = node.parent
        return path

    def path_names(self) -> list[str]:
        """Return the names on the path, root first, as Bistro's `path_to_node` does."""
        return [node.name for node in reversed(self.path_to_root())]

    def usable(self) -> bool:
        """Return True when this node and every ancestor are enabled."""
        return all(node.enabled for node in self.path_to_root())

    def __repr__(self) -> str:
        parent = self.parent.name if self.parent else None
        return f"Node({self.name!r}, level={self.level}, parent={parent!r})"


class Forest:
    """The node set of one fetch: nodes by level, in fetch order, with replicas grouped.

    :param levels: the level names, ``instance`` first and ``worker`` last.
    :param instance_name: the name of the single level-0 node.
    """

    def __init__(self, levels: tuple[str, ...], instance_name: str = "instance"):
        self.levels = levels
        self.instance = Node(instance_name, 0)
        self._by_level: list[list[Node]] = [[] for _ in levels]
        self._by_level[0].append(self.instance)
        # Per level, name -> its node, or a tuple of nodes for replicas. A bare node for the
        # usual single replica saves a list and a (level, name) key per node.
        self._by_name: list[dict[str, Node | tuple[Node, ...]]] = [{} for _ in levels]
        self._by_name[0][instance_name] = self.instance

    def add(self, node: Node) -> Node:
        """Append `node`; a second node with the same name and level becomes a replica."""
        if not 0 < node.level < len(self.levels) - 1:
            raise ValueError(
                f"node {node.name!r} would be on level {node.level}, but data nodes must be on "
                f"levels 1..{len(self.levels) - 2} ({', '.join(self.levels[1:-1])})"
            )
        self._by_level[node.level].append(node)
        names = self._by_name[node.level]
        known = names.get(node.name)
        if known is None:
            names[node.name] = node
        elif isinstance(known, Node):
            names[node.name] = (known, node)
        else:
            names[node.name] = (*known, node)
        return node

    def level_index(self, level: str) -> int:
        try:
            return self.levels.index(level)
        except ValueError:
            raise KeyError(
                f"unknown level {level!r}; defined levels: {', '.join(self.levels)}"
            ) from None

    def nodes(self, level: int | str) -> list[Node]:
        """Return the nodes of a level in fetch order, replicas included."""
        index = self.level_index(level) if isinstance(level, str) else level
        return list(self._by_level[index])

    def distinct_names(self, level: int | str) -> list[str]:
        """Return the node names of a level in fetch order, each name once."""
        index = self.level_index(level) if isinstance(level, str) else level
        return list(self._by_name[index])

    def replicas(self, level: int, name: str) -> list[Node]:
        """Return every node named `name` on `level` (usually one)."""
        return list(self.replica_tuple(level, name))

    def replica_tuple(self, level: int, name: str) -> tuple[Node, ...]:
        """Return the nodes named `name` on `level` in fetch order, without copying a list."""
        if not 0 <= level < len(self._by_name):
            return ()
        known = self._by_name[level].get(name)
        if known is None:
            return ()
        if isinstance(known, Node):
            return (known,)
        return known

    def level_size(self, level: int) -> int:
        """Return how many nodes `level` has, replicas included."""
        return len(self._by_level[level])

    def find(self, name: str) -> list[Node]:
        """Return every node named `name`, on any level."""
        return [node for nodes in self._by_level for node in nodes if node.name == name]

    def __iter__(self) -> Iterator[Node]:
        for nodes in self._by_level:
            yield from nodes

    def __len__(self) -> int:
        return sum(len(nodes) for nodes in self._by_level)

    def to_json(self) -> list[dict[str, object]]:
        """Return every node as a dict: name, level, parent, enabled and tags."""
        result = []
        for node in self:
            item: dict[str, object] = {
                "name": node.name,
                "level": self.levels[node.level],
                "parent": node.parent.name if node.parent else None,
                "enabled": node.enabled,
                "tags": sorted(node.tags),
            }
            if node.capacity:
                item["capacity"] = dict(sorted(node.capacity.items()))
            result.append(item)
        return result
