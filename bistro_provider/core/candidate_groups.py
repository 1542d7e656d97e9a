"""One job's candidates on a task level, kept in groups by position for incremental passes.

A candidate is pending when its status allows a start, its dependencies are done and the
job's filters accept its path. `JobState` stores it in one of four places:

* ``groups[g]``, ascending positions, when its group node and its task node are enabled;
* ``parked_groups[g]``, when the group node or an ancestor is disabled;
* ``parked``, when its own task node is disabled;
* ``replica_members`` (enabled paths in ``replica_nodes``) or ``replica_pending`` only,
  when its name has several nodes (replicas).

`count` is the number of candidates a pass can try, the number `long_tail` sorts by.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterable, Mapping

from bistro_provider.core.admission_index import REPLICA_GROUP, ForestIndex, NeedVector, TaskLevel
from bistro_provider.core.filters import PathEligibility, level_filter_accepts
from bistro_provider.core.forest import Node
from bistro_provider.core.model import Job, Settings
from bistro_provider.core.resources import LevelNeeds, need_table
from bistro_provider.core.scheduler import StatusLike, TaskKey, status_allows_start


class JobState:
    """The pending candidates of one job, and its needs per level."""

    __slots__ = (
        "job",
        "table",
        "vectors",
        "level",
        "groups",
        "parked_groups",
        "parked",
        "replica_members",
        "replica_pending",
        "replica_nodes",
        "group_filter",
        "count",
    )

    def __init__(self, job: Job, table: tuple[LevelNeeds, ...], vectors: tuple[NeedVector, ...]):
        self.job = job
        self.table = table
        self.vectors = vectors
        self.level: TaskLevel | None = None
        self.groups: list[array[int] | None] = []
        self.parked_groups: dict[int, array[int]] = {}
        self.parked: set[int] = set()
        self.replica_members: list[int] = []
        self.replica_pending: set[int] = set()
        self.replica_nodes: dict[int, tuple[Node, ...]] = {}
        self.group_filter = bytearray()
        """1 where the job's filters accept the group node's path."""
        self.count = 0

    # -- filters ---------------------------------------------------------------------------

    def leaf_filter_passes(self, node: Node, levels: tuple[str, ...]) -> bool:
        flt = self.job.filters.get(levels[node.level])
        return flt is None or level_filter_accepts(flt, node, self.job.name)

    def passes_filters(self, position: int, levels: tuple[str, ...]) -> bool:
        """Return True when the job's filters accept the path of the task at `position`."""
        level = self._task_level()
        group = level.group_of_pos[position]
        if group == REPLICA_GROUP:
            paths = PathEligibility(self.job, levels, check_enabled=False)
            return any(paths.eligible(node) for node in level.replicas[position])
        if not self.group_filter[group]:
            return False
        node = level.node_at(position)
        return node is level.groups[group].node or self.leaf_filter_passes(node, levels)

    # -- membership ------------------------------------------------------------------------

    def contains(self, position: int) -> bool:
        level = self._task_level()
        group = level.group_of_pos[position]
        if group == REPLICA_GROUP:
            return position in self.replica_pending
        if position in self.parked:
            return True
        positions = self.groups[group] or self.parked_groups.get(group)
        return positions is not None and _find(positions, position) >= 0

    def active(self, position: int) -> bool:
        """Return True when a pass can try `position`: pending and not parked."""
        level = self._task_level()
        group = level.group_of_pos[position]
        if group == REPLICA_GROUP:
            return position in self.replica_nodes
        positions = self.groups[group]
        return positions is not None and _find(positions, position) >= 0

    def add(self, position: int, levels: tuple[str, ...]) -> int | None:
        """Make `position` pending; return its group when a pass must try it, else None.

        REPLICA_GROUP comes back for a replica candidate with an enabled path.
        """
        if self.contains(position):
            return None
        level = self._task_level()
        group = level.group_of_pos[position]
        if group == REPLICA_GROUP:
            self.replica_pending.add(position)
            return group if self.refresh_replicas([position], levels) else None
        node = level.node_at(position)
        if node is not level.groups[group].node and not node.enabled:
            self.parked.add(position)
            return None
        parked = self.parked_groups.get(group)
        if parked is not None:
            bisect.insort(parked, position)
            return None
        positions = self.groups[group]
        if positions is None:
            positions = self.groups[group] = array("i")
        bisect.insort(positions, position)
        self.count += 1
        return group

    def remove(self, position: int) -> bool:
        """Drop `position` from the pending candidates; return True if it was pending."""
        level = self._task_level()
        group = level.group_of_pos[position]
        if group == REPLICA_GROUP:
            if position not in self.replica_pending:
                return False
            self.replica_pending.discard(position)
            self.replica_nodes.pop(position, None)
            self._drop_replica_member(position)
            return True
        if position in self.parked:
            self.parked.discard(position)
            return True
        parked = self.parked_groups.get(group)
        if parked is not None:
            return _delete(parked, position)
        positions = self.groups[group]
        if positions is None or not _delete(positions, position):
            return False
        self.count -= 1
        return True

    # -- enabled and disabled nodes ---------------------------------------------------------

    def park_group(self, group: int) -> None:
        positions = self.groups[group]
        if positions is None or group in self.parked_groups:
            return
        self.count -= len(positions)
        self.parked_groups[group] = positions
        self.groups[group] = None

    def unpark_group(self, group: int) -> bool:
        """Return True if the group had pending candidates that a pass must now try."""
        positions = self.parked_groups.pop(group, None)
        if positions is None:
            return False
        self.groups[group] = positions
        self.count += len(positions)
        return bool(positions)

    def park_leaf(self, position: int) -> None:
        group = self._task_level().group_of_pos[position]
        positions = self.groups[group] or self.parked_groups.get(group)
        if positions is not None and _delete(positions, position):
            if self.groups[group] is positions:
                self.count -= 1
            self.parked.add(position)

    def unpark_leaf(self, position: int) -> int | None:
        if position not in self.parked:
            return None
        self.parked.discard(position)
        return self.add(position, ())

    def refresh_replicas(self, positions: Iterable[int], levels: tuple[str, ...]) -> bool:
        """Recompute which replicas of pending replica candidates are enabled and eligible.

        :return: True if some candidate has an enabled path now.
        """
        level = self._task_level()
        any_member = False
        for position in positions:
            if position not in self.replica_pending:
                continue
            paths = PathEligibility(self.job, levels)
            nodes = tuple(node for node in level.replicas[position] if paths.eligible(node))
            self._drop_replica_member(position)
            if nodes:
                self.replica_nodes[position] = nodes
                bisect.insort(self.replica_members, position)
                self.count += 1
                any_member = True
            else:
                self.replica_nodes.pop(position, None)
        return any_member

    def _drop_replica_member(self, position: int) -> None:
        index = bisect.bisect_left(self.replica_members, position)
        if index < len(self.replica_members) and self.replica_members[index] == position:
            del self.replica_members[index]
            self.count -= 1

    def _task_level(self) -> TaskLevel:
        if self.level is None:
            raise ValueError(f"job {self.job.name!r} has no task level with nodes")
        return self.level


def _find(positions: array[int], position: int) -> int:
    index = bisect.bisect_left(positions, position)
    if index < len(positions) and positions[index] == position:
        return index
    return -1


def _delete(positions: array[int], position: int) -> bool:
    index = _find(positions, position)
    if index < 0:
        return False
    del positions[index]
    return True


# -- building ---------------------------------------------------------------------------------

PendingTest = Callable[[str], bool]


def build_job_state(
    index: ForestIndex,
    job: Job,
    statuses: Mapping[TaskKey, StatusLike],
    now: float,
    running: set[TaskKey] | frozenset[TaskKey],
    known_jobs: Iterable[str],
) -> JobState:
    """Collect `job`'s pending candidates by the rules `scheduler.job_candidates` applies."""
    settings = index.settings
    table = need_table(settings, job)
    state = JobState(job, table, index.vectors(table))
    level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
    if level >= len(settings.levels) - 1:
        return state
    task_level = state.level = index.task_level(level)
    state.groups = [None] * len(task_level.groups)
    state.group_filter = _group_filter(task_level, job, settings)
    blocked = _blocked_names(job, statuses, now, running)
    allowed = _dependency_names(job, statuses, known_jobs)
    simple = allowed is None and settings.levels[level] not in job.filters
    if simple:
        _copy_layout(state, task_level, blocked)
    else:
        _filter_layout(state, task_level, settings, blocked, allowed)
    _park_disabled(state, task_level)
    _add_replicas(state, task_level, settings, blocked, allowed)
    return state


def _group_filter(level: TaskLevel, job: Job, settings: Settings) -> bytearray:
    paths = PathEligibility(job, settings.levels, check_enabled=False)
    return bytearray(paths.eligible(group.node) for group in level.groups)


def _blocked_names(
    job: Job,
    statuses: Mapping[TaskKey, StatusLike],
    now: float,
    running: set[TaskKey] | frozenset[TaskKey],
) -> set[str]:
    """Return the names whose status (or a running task) rules out a start of `job`."""
    blocked = {name for job_name, name in running if job_name == job.name}
    for (job_name, name), status in statuses.items():
        if job_name == job.name and not status_allows_start(status, now):
            blocked.add(name)
    return blocked


def _dependency_names(
    job: Job, statuses: Mapping[TaskKey, StatusLike], known_jobs: Iterable[str]
) -> set[str] | None:
    """Return the names where every dependency of `job` is done, or None with no dependency."""
    if not job.depends_on:
        return None
    known = set(known_jobs)
    done: dict[str, set[str]] = {dependency: set() for dependency in job.depends_on}
    for (job_name, name), status in statuses.items():
        if job_name in done and status.kind == "done":
            done[job_name].add(name)
    if any(dependency not in known for dependency in job.depends_on):
        return set()
    return set.intersection(*done.values())


def _copy_layout(state: JobState, level: TaskLevel, blocked: set[str]) -> None:
    for group, positions in enumerate(level.layout):
        if state.group_filter[group] and positions:
            state.groups[group] = array("i", positions)
            state.count += len(positions)
    for name in blocked:
        position = level.position(name)
        if position is not None and level.group_of_pos[position] != REPLICA_GROUP:
            state.remove(position)


def _filter_layout(
    state: JobState,
    level: TaskLevel,
    settings: Settings,
    blocked: set[str],
    allowed: set[str] | None,
) -> None:
    for group, positions in enumerate(level.layout):
        if not state.group_filter[group] or not positions:
            continue
        kept = array("i")
        for position in positions:
            name = level.name_at(position)
            if name in blocked or (allowed is not None and name not in allowed):
                continue
            node = level.node_at(position)
            if node is level.groups[group].node or state.leaf_filter_passes(node, settings.levels):
                kept.append(position)
        if kept:
            state.groups[group] = kept
            state.count += len(kept)


def _park_disabled(state: JobState, level: TaskLevel) -> None:
    for group, usable in enumerate(level.group_usable):
        if not usable:
            state.park_group(group)
            state.parked_groups.setdefault(group, array("i"))
    for position in level.disabled_leaves:
        state.park_leaf(position)


def _add_replicas(
    state: JobState,
    level: TaskLevel,
    settings: Settings,
    blocked: set[str],
    allowed: set[str] | None,
) -> None:
    for position in level.replicas:
        name = level.name_at(position)
        if name in blocked or (allowed is not None and name not in allowed):
            continue
        if state.passes_filters(position, settings.levels):
            state.replica_pending.add(position)
    state.refresh_replicas(sorted(state.replica_pending), settings.levels)
