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

from bistro_provider.core.forest import Node
from bistro_provider.core.model import Job, Settings

NodeKey = tuple[str, str]
"""A node in accounting: (level name, node name). Replicas share their key."""

Holdings = dict[NodeKey, dict[str, int]]
"""Amounts per resource, per node, that one task needs or holds."""


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


def task_needs(settings: Settings, job: Job, path: Iterable[Node]) -> Holdings:
    """Return what a task of `job` needs on each node of `path` that has resources.

    For each resource of a node's level the job's amount (by resource name) applies, else
    the level's `default`. Levels without resources contribute nothing.
    """
    needs: Holdings = {}
    for node in path:
        level = settings.levels[node.level]
        specs = settings.resources.get(level)
        if not specs:
            continue
        needs[(level, node.name)] = {
            name: job.resources.get(name, spec.default) for name, spec in specs.items()
        }
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

    :param node_capacity: limits reported by node sources for individual nodes.
    :param overrides: limits set live by an operator; they win over everything else.
    """

    def capacity_of(key: NodeKey) -> dict[str, int]:
        level, _name = key
        limits = {name: spec.limit for name, spec in settings.resources.get(level, {}).items()}
        for layer in (node_capacity, overrides):
            if layer and key in layer:
                limits.update(layer[key])
        return limits

    return capacity_of
