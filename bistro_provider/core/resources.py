"""Resource accounting: capacity per node, what a task needs, and who holds what.

Admission policy: a task may start only if, on every node of its path to the root (and on
its worker), every resource of that node's level has at least the amount the task needs
left over. The check is all or nothing: a task that does not fit takes nothing, so a
waiting task never holds a resource while it waits for another one, and no set of waiting
tasks can deadlock. Amounts are deducted only when the start succeeds, and a running task
keeps exactly the amounts it was admitted with until it ends, even if the job's config or
a limit changes meanwhile. A limit lowered below current usage therefore kills nothing; the
node simply admits nothing new until usage drops below the new limit.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from bistro_provider.core.forest import Node
from bistro_provider.core.model import Job, Settings

NodeKey = tuple[str, str]
"""A node in accounting: (level name, node name). Replicas share their key."""

Holdings = dict[NodeKey, dict[str, int]]
"""Amounts per resource, per node, that one task needs or holds."""

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True)
class Blocker:
    """The first node and resource on a task's path that lacks room for it."""

    level: str
    node: str
    resource: str
    need: int
    used: int
    limit: int

    def __str__(self) -> str:
        return (
            f"{self.level} {self.node!r}: {self.resource} needs {self.need}, "
            f"{self.used}/{self.limit} in use"
        )


LevelNeeds = tuple[tuple[str, int], ...]
"""One job's amount per resource of one level, in the level's resource order."""


def need_table(settings: Settings, job: Job) -> tuple[LevelNeeds, ...]:
    """Return, per level index, what a task of `job` needs on a node of that level.

    For each resource of a level the job's amount (by resource name) applies, else the
    level's `default`. A level without resources has an empty entry. Admission computes this
    once per job and pass instead of once per candidate.
    """
    table = []
    for level in settings.levels:
        specs = settings.resources.get(level) or {}
        table.append(
            tuple((name, job.resources.get(name, spec.default)) for name, spec in specs.items())
        )
    return tuple(table)


def task_needs(settings: Settings, job: Job, path: Iterable[Node]) -> Holdings:
    """Return what a task of `job` needs on each node of `path` that has resources.

    For each resource of a node's level the job's amount (by resource name) applies, else
    the level's `default`. Levels without resources contribute nothing.
    """
    return needs_from_table(settings.levels, need_table(settings, job), path)


def needs_from_table(
    levels: tuple[str, ...], table: tuple[LevelNeeds, ...], path: Iterable[Node]
) -> Holdings:
    """Return `task_needs` for `path` from a table that `need_table` built."""
    needs: Holdings = {}
    for node in path:
        amounts = table[node.level]
        if amounts:
            needs[(levels[node.level], node.name)] = dict(amounts)
    return needs


def holdings_to_json(holdings: Mapping[NodeKey, Mapping[str, int]]) -> list[dict[str, object]]:
    """Return holdings as a JSON-friendly list, root-most node first as paths are stored."""
    return [
        {"level": level, "node": name, "resources": dict(amounts)}
        for (level, name), amounts in holdings.items()
    ]


def holdings_from_json(items: Iterable[Mapping[str, object]]) -> Holdings:
    holdings: Holdings = {}
    for item in items:
        key = (str(item["level"]), str(item["node"]))
        amounts = item["resources"]
        if not isinstance(amounts, Mapping):
            raise ValueError(f"holdings of {key}: expected an object of amounts, got {amounts!r}")
        holdings[key] = {str(res): int(amount) for res, amount in amounts.items()}
    return holdings


CapacityFn = Callable[[NodeKey], Mapping[str, int]]


class Ledger:
    """Who holds what on which node, and the admission check against current capacity.

    Capacity is looked up through `capacity_of` on every check, so a config reload or a
    capacity override takes effect at the next admission without rebuilding the ledger.

    :param capacity_of: returns the limits of a node by resource name.
    """

    def __init__(self, capacity_of: CapacityFn):
        self.capacity_of = capacity_of
        self._used: dict[NodeKey, dict[str, int]] = {}
        self._holders: dict[Hashable, Holdings] = {}

    def used(self, key: NodeKey) -> dict[str, int]:
        return dict(self._used.get(key, {}))

    def holders(self) -> dict[Hashable, Holdings]:
        return dict(self._holders)

    def holding(self, holder: Hashable) -> Holdings | None:
        return self._holders.get(holder)

    def __contains__(self, holder: Hashable) -> bool:
        return holder in self._holders

    def __len__(self) -> int:
        return len(self._holders)

    def first_blocker(self, needs: Holdings) -> Blocker | None:
        """Return the first node and resource lacking room for `needs`, or None if all fit.

        A need equal to what is available fits. A node whose usage exceeds its limit (after
        the limit was lowered) has negative availability and blocks even a need of 0.
        """
        for key, amounts in needs.items():
            limits = self.capacity_of(key)
            used = self._used.get(key, {})
            for resource, need in amounts.items():
                limit = limits.get(resource, 0)
                in_use = used.get(resource, 0)
                if need > limit - in_use:
                    return Blocker(key[0], key[1], resource, need, in_use, limit)
        return None

    def try_acquire(self, holder: Hashable, needs: Holdings) -> Blocker | None:
        """Take `needs` for `holder` if everything fits; otherwise take nothing.

        :return: None on success, else the blocker that prevented the start.
        :raises ValueError: if `holder` already holds resources; nothing is acquired twice.
        """
        if holder in self._holders:
            raise ValueError(f"{holder!r} already holds resources; release it first")
        blocker = self.first_blocker(needs)
        if blocker is None:
            self.force_acquire(holder, needs)
        return blocker

    def force_acquire(self, holder: Hashable, holdings: Holdings) -> None:
        """Record holdings without a capacity check, as when rebuilding after a restart."""
        if holder in self._holders:
            raise ValueError(f"{holder!r} already holds resources; release it first")
        copied = {key: dict(amounts) for key, amounts in holdings.items()}
        self._holders[holder] = copied
        # Zero amounts stay in the holdings (tasks report them) but never enter `_used`, so
        # usage maps hold only positive amounts and a release always finds what it returns.
        for key, amounts in copied.items():
            for resource, amount in amounts.items():
                if amount:
                    used = self._used.setdefault(key, {})
                    used[resource] = used.get(resource, 0) + amount

    def release(self, holder: Hashable) -> Holdings | None:
        """Give back everything `holder` holds; releasing an unknown holder is a no-op."""
        holdings = self._holders.pop(holder, None)
        if holdings is None:
            return None
        for key, amounts in holdings.items():
            used = self._used.get(key, {})
            for resource, amount in amounts.items():
                if not amount:
                    continue
                used[resource] -= amount
                if used[resource] == 0:
                    del used[resource]
            if not used:
                self._used.pop(key, None)
        return holdings

    def usage(self) -> dict[NodeKey, dict[str, int]]:
        """Return the amounts in use on every node that has any."""
        return {key: dict(amounts) for key, amounts in self._used.items()}


def level_capacity(
    settings: Settings,
    node_capacity: Mapping[NodeKey, Mapping[str, int]] | None = None,
    overrides: Mapping[NodeKey, Mapping[str, int]] | None = None,
) -> CapacityFn:
    """Build a capacity lookup: the level's limits, then per-node values, then overrides.

    The layers are read on every call, so later changes to `node_capacity` or `overrides`
    take effect at once.

    :param node_capacity: limits reported by node sources for individual nodes.
    :param overrides: limits set live by an operator; they win over everything else.
    """
    level_limits = {
        level: {name: spec.limit for name, spec in specs.items()}
        for level, specs in settings.resources.items()
    }

    def capacity_of(key: NodeKey) -> dict[str, int]:
        limits = dict(level_limits.get(key[0], _EMPTY))
        for layer in (node_capacity, overrides):
            if layer and key in layer:
                limits.update(layer[key])
        return limits

    return capacity_of


class PathCheck:
    """The first blocker on a task's path, for many tasks of one admission pass.

    `blocker(job, node)` returns what `Ledger.first_blocker(task_needs(...))` returns, but
    builds no needs mapping for a task that does not fit. It reads each node's capacity once
    and keeps it, so create a new one for every pass. Equal blockers are shared, so a pass
    over a million candidates keeps one `Blocker` per distinct (node, resource, amounts).
    """

    def __init__(self, settings: Settings, ledger: Ledger):
        self.levels = settings.levels
        self.settings = settings
        self.ledger = ledger
        self._limits: dict[NodeKey, Mapping[str, int]] = {}
        self._tables: dict[str, tuple[LevelNeeds, ...]] = {}
        self._blockers: dict[tuple[NodeKey, str, int, int, int], Blocker] = {}

    def table(self, job: Job) -> tuple[LevelNeeds, ...]:
        """Return `need_table` for `job`, computed once per pass."""
        table = self._tables.get(job.name)
        if table is None:
            table = self._tables[job.name] = need_table(self.settings, job)
        return table

    def limits(self, key: NodeKey) -> Mapping[str, int]:
        limits = self._limits.get(key)
        if limits is None:
            limits = self._limits[key] = self.ledger.capacity_of(key)
        return limits

    def blocker(self, job: Job, node: Node) -> Blocker | None:
        """Return the first node and resource on `node`'s path lacking room, or None."""
        table = self.table(job)
        used_by_key = self.ledger._used
        step: Node | None = node
        while step is not None:
            amounts = table[step.level]
            if amounts:
                key = (self.levels[step.level], step.name)
                limits = self._limits.get(key)
                if limits is None:
                    limits = self.limits(key)
                used = used_by_key.get(key, _EMPTY)
                for resource, need in amounts:
                    limit = limits.get(resource, 0)
                    in_use = used.get(resource, 0)
                    if need > limit - in_use:
                        return self._shared_blocker(key, resource, need, in_use, limit)
            step = step.parent
        return None

    def _shared_blocker(
        self, key: NodeKey, resource: str, need: int, in_use: int, limit: int
    ) -> Blocker:
        fields = (key, resource, need, in_use, limit)
        blocker = self._blockers.get(fields)
        if blocker is None:
            blocker = Blocker(key[0], key[1], resource, need, in_use, limit)
            self._blockers[fields] = blocker
        return blocker
