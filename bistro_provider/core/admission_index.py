"""A forest indexed for admission: integer slots, headroom arrays and candidate groups.

`IncrementalAdmitter` checks a task against flat lists of headroom (limit minus usage)
instead of the ledger's nested mappings, and groups the task-level nodes by their parent
(the group node). When a group node or one of its ancestors lacks room for a job, no task
of that job in the group fits, so a pass drops the whole group after one check. Headroom
only goes down during a pass, so a group found full stays full until the pass ends.

Accounting keys are (level name, node name), as in the ledger, so replicas share a slot.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Mapping
from dataclasses import dataclass

from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Settings
from bistro_provider.core.resources import CapacityFn, Holdings, LevelNeeds, NodeKey

REPLICA_GROUP = -1
"""`TaskLevel.group_of_pos` value of a name that has several nodes (replicas)."""

NeedVector = tuple[int, ...]
"""A job's amounts for the resources of one level, in `LevelSlots.resources` order."""


class LevelSlots:
    """The distinct node names of one level, and each name's headroom per resource.

    `headroom[slot * width + r]` is the limit of `resources[r]` minus what running tasks
    hold. It is negative after a limit was lowered below the usage.
    """

    __slots__ = ("name", "resources", "width", "names", "slot_of", "headroom")

    def __init__(self, name: str, resources: tuple[str, ...], names: list[str]):
        self.name = name
        self.resources = resources
        self.width = len(resources)
        self.names = names
        self.slot_of = {node_name: slot for slot, node_name in enumerate(names)}
        self.headroom: list[int] = []

    def fill(self, capacity_of: CapacityFn, usage: Mapping[NodeKey, Mapping[str, int]]) -> None:
        """Set every slot's headroom from `capacity_of` and the ledger's usage."""
        headroom: list[int] = []
        empty: Mapping[str, int] = {}
        for node_name in self.names if self.width else ():
            key = (self.name, node_name)
            limits = capacity_of(key)
            used = usage.get(key, empty)
            headroom.extend(limits.get(res, 0) - used.get(res, 0) for res in self.resources)
        self.headroom = headroom


@dataclass(slots=True)
class Group:
    """Task-level nodes under one group node, with the group node's path as slots.

    :param node: the parent of the group's task nodes, or the task node itself when its
        parent is the instance node (then each task node is a group of one).
    :param path: (level, slot) of every node from `node` up to the instance node whose
        level has resources.
    """

    node: Node
    path: tuple[tuple[int, int], ...]


class ForestIndex:
    """Slots and headroom for every level, and task levels built when a job needs them.

    The index mirrors the ledger, so every grant and release must go through `apply`.

    :param order_rng: draws the node order of a task level when `node_order` is random.
    """

    def __init__(
        self,
        settings: Settings,
        forest: Forest,
        capacity_of: CapacityFn,
        usage: Mapping[NodeKey, Mapping[str, int]],
        order_rng: random.Random,
    ):
        self.settings = settings
        self.forest = forest
        self.levels = settings.levels
        self.level_of = {name: index for index, name in enumerate(self.levels)}
        self.slots = [self._level_slots(index) for index in range(len(self.levels))]
        self.order_rng = order_rng
        self.task_levels: dict[int, TaskLevel] = {}
        self.refill(capacity_of, usage)

    def _level_slots(self, index: int) -> LevelSlots:
        name = self.levels[index]
        resources = tuple(self.settings.resources.get(name, {}))
        is_data_level = index < len(self.levels) - 1
        names = self.forest.distinct_names(index) if is_data_level else []
        return LevelSlots(name, resources, names)

    def refill(self, capacity_of: CapacityFn, usage: Mapping[NodeKey, Mapping[str, int]]) -> None:
        """Recompute all headroom, as after a capacity change the index did not see."""
        for level in self.slots:
            level.fill(capacity_of, usage)

    def task_level(self, level: int) -> TaskLevel:
        """Return the task level `level`, ordering its nodes by `node_order` on first use."""
        known = self.task_levels.get(level)
        if known is None:
            names = self.slots[level].names
            order = order_slots(names, self.settings.node_order, self.order_rng)
            known = self.task_levels[level] = TaskLevel(self, level, order)
        return known

    def vectors(self, table: tuple[LevelNeeds, ...]) -> tuple[NeedVector, ...]:
        """Return a `need_table` as bare amounts, ordered like each level's resources."""
        return tuple(
            tuple(dict(table[index]).get(res, 0) for res in level.resources)
            for index, level in enumerate(self.slots)
        )

    def path_slots(self, node: Node) -> tuple[tuple[int, int], ...]:
        """Return (level, slot) of `node` and each ancestor whose level has resources."""
        path = []
        step: Node | None = node
        while step is not None:
            level = self.slots[step.level]
            if level.width:
                path.append((step.level, level.slot_of[step.name]))
            step = step.parent
        return tuple(path)

    def fits(self, vectors: tuple[NeedVector, ...], path: tuple[tuple[int, int], ...]) -> bool:
        """Return True when every node of `path` has room for the job's amounts.

        A need equal to the headroom fits, and negative headroom blocks a need of 0, as
        `Ledger.first_blocker` decides.
        """
        slots = self.slots
        for level, slot in path:
            headroom = slots[level].headroom
            base = slot * slots[level].width
            for offset, need in enumerate(vectors[level]):
                if need > headroom[base + offset]:
                    return False
        return True

    def take(self, vectors: tuple[NeedVector, ...], path: tuple[tuple[int, int], ...]) -> None:
        """Subtract a job's amounts on `path`, which `path_slots` or a group built."""
        slots = self.slots
        for level, slot in path:
            headroom = slots[level].headroom
            base = slot * slots[level].width
            for offset, need in enumerate(vectors[level]):
                headroom[base + offset] -= need

    def apply(self, holdings: Holdings, sign: int) -> list[tuple[int, NodeKey]]:
        """Subtract (`sign` -1, a grant) or add back (+1, a release) `holdings`.

        :return: (level, key) of each node where a positive amount changed. Keys of nodes
            that are not in this forest, such as workers, come back with level -1.
        """
        changed: list[tuple[int, NodeKey]] = []
        for key, amounts in holdings.items():
            level = self.level_of.get(key[0], -1)
            slot = self.slots[level].slot_of.get(key[1]) if level >= 0 else None
            if slot is None:
                if any(amounts.values()):
                    changed.append((-1, key))
                continue
            slots = self.slots[level]
            base = slot * slots.width
            for offset, resource in enumerate(slots.resources):
                slots.headroom[base + offset] += sign * amounts.get(resource, 0)
            if any(amounts.values()):
                changed.append((level, key))
        return changed


def order_slots(names: list[str], node_order: str, rng: random.Random) -> list[int]:
    """Return slot numbers in the order `scheduler.order_nodes` gives their names.

    With the same `rng` state a random order is the same permutation, because a shuffle
    depends only on the length of the list.
    """
    slots = list(range(len(names)))
    if node_order == "lexicographic":
        slots.sort(key=names.__getitem__)
    elif node_order == "random":
        rng.shuffle(slots)
    return slots


class TaskLevel:
    """A level that jobs run tasks on: the node order of passes, and the groups.

    Position p is the p-th name in pass order, and the policies try the highest position
    first. A slot is the name's index in fetch order, as `LevelSlots` numbers it.
    """

    def __init__(self, index: ForestIndex, level: int, order: list[int]):
        self.index = index
        self.level = level
        self.slot_of_pos = array("i", order)
        self.pos_of_slot = array("i", bytes(4 * len(order)))
        for position, slot in enumerate(order):
            self.pos_of_slot[slot] = position
        self.group_of_pos = array("i", bytes(4 * len(order)))
        self.groups: list[Group] = []
        self.layout: list[array[int]] = []
        """Positions of each group in ascending order: every name, before job filters."""
        self.replicas: dict[int, tuple[Node, ...]] = {}
        self.groups_by_node: dict[NodeKey, list[int]] = {}
        self.disabled_leaves: list[int] = []
        """Positions whose own node is disabled, apart from groups of one."""
        self._groups_under: dict[NodeKey, list[int]] | None = None
        self._build_groups()
        self.group_usable = bytearray(group.node.usable() for group in self.groups)
        """1 where the group node and all its ancestors are enabled."""

    def _build_groups(self) -> None:
        names = self.index.slots[self.level].names
        replica_tuple = self.index.forest.replica_tuple
        group_ids: dict[int, int] = {}
        for position, slot in enumerate(self.slot_of_pos):
            nodes = replica_tuple(self.level, names[slot])
            if len(nodes) != 1:
                self.group_of_pos[position] = REPLICA_GROUP
                self.replicas[position] = nodes
                continue
            node = nodes[0]
            parent = node.parent
            group_node = parent if parent is not None and parent.level else node
            group = group_ids.get(id(group_node))
            if group is None:
                group = group_ids[id(group_node)] = self._add_group(group_node)
            self.group_of_pos[position] = group
            self.layout[group].append(position)
            if not node.enabled and node is not group_node:
                self.disabled_leaves.append(position)

    def _add_group(self, node: Node) -> int:
        group = len(self.groups)
        self.groups.append(Group(node, self.index.path_slots(node)))
        self.layout.append(array("i"))
        self.groups_by_node.setdefault(self.key(node), []).append(group)
        return group

    def key(self, node: Node) -> NodeKey:
        return (self.index.levels[node.level], node.name)

    def position(self, name: str) -> int | None:
        """Return the position of task node `name`, or None if the level has no such node."""
        slot = self.index.slots[self.level].slot_of.get(name)
        return None if slot is None else self.pos_of_slot[slot]

    def name_at(self, position: int) -> str:
        return self.index.slots[self.level].names[self.slot_of_pos[position]]

    def node_at(self, position: int) -> Node:
        """Return the first node named like `position` (the only one, unless replicas)."""
        return self.index.forest.replica_tuple(self.level, self.name_at(position))[0]

    def groups_touching(self, level: int, key: NodeKey) -> list[int] | None:
        """Return the groups whose tasks' paths pass through node `key` on `level`.

        None means every group. A task node that is not a group node touches only its own
        position, which the caller handles.
        """
        if level == 0:
            return None
        direct = self.groups_by_node.get(key)
        if direct is not None:
            return direct
        return self._under().get(key, [])

    def _under(self) -> dict[NodeKey, list[int]]:
        """Map each node above the group nodes to the groups below it, built on first use."""
        if self._groups_under is None:
            under: dict[NodeKey, list[int]] = {}
            for number, group in enumerate(self.groups):
                step = group.node.parent
                while step is not None and step.level:
                    under.setdefault(self.key(step), []).append(number)
                    step = step.parent
            self._groups_under = under
        return self._groups_under
