"""Admission that re-examines only the candidates a finished task can unblock.

`scheduler.admit_pass` checks every candidate of every job on every pass. When a pass ends,
no waiting candidate fits, because each one was tried and headroom only shrinks during a
pass. After that, a candidate can start only if some node on its path got headroom back
(a finished task's nodes) or if it is new. `IncrementalAdmitter` keeps each job's
candidates grouped by the parent of their task node, and after such events it runs the
same policy code over the groups under the changed nodes only. Candidates outside those
groups would fail anyway. So for `ranked_priority`, `long_tail` and, with a fixed job
order, `roundrobin`, it starts the same tasks in the same order as a full pass over the
same candidates. `randomized_priority` draws among a different set of jobs, so there only
the outcome that no waiting candidate fits afterwards is the same. A freed worker (or any
other key outside the forest) may serve any candidate, so it makes the next incremental
pass scan every group, and so does a global (instance-level) resource.

Differences from `plan_jobs` + `admit_pass`:

* The node order is drawn once per admitter (that is, per forest), not once per pass.
* Waiting reasons are computed on request (`waiting_reason`), not stored per candidate.
* The admitter must be the only writer of its ledger, and a capacity change needs
  `refresh_capacity`, because the admitter keeps its own copy of every node's headroom.
"""

from __future__ import annotations

import logging
import random
from array import array
from collections.abc import Callable, Hashable, Iterable, Mapping
from heapq import heapify, heappop, heapreplace
from typing import Any, Literal, cast

from bistro_provider.core.admission_index import REPLICA_GROUP, ForestIndex, TaskLevel
from bistro_provider.core.candidate_groups import JobState, build_job_state
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Config, Job
from bistro_provider.core.policies import JobCandidates, StartResult, run_policy
from bistro_provider.core.resources import (
    Blocker,
    Holdings,
    Ledger,
    NodeKey,
    PathCheck,
    needs_from_table,
)
from bistro_provider.core.scheduler import (
    Admission,
    Candidate,
    StartHook,
    StatusLike,
    TaskKey,
    dependencies_done,
    status_allows_start,
)

log = logging.getLogger(__name__)

_NO_CANDIDATE = -1
"""The position `_Scan.pop` returns when every remaining group turned out to be full."""

Scope = dict[int, set[int] | None]
"""Groups to scan per task level. None scans every group of the level."""


def _accept_all(job: Job, candidate: Candidate, node: Node, needs: Holdings) -> StartResult:
    return StartResult.RAN


class _Scan:
    """One job's candidates for one pass, popped from the highest position down.

    It replaces the candidate list of `JobCandidates`, because `run_policy` only uses
    `pop`, `len` and the truth value. A pop first drops each group whose node path lacks room
    for the job: every remaining candidate of that group would fail the check.
    """

    __slots__ = ("admitter", "state", "heap", "cursor")

    def __init__(self, admitter: IncrementalAdmitter, state: JobState, groups: Iterable[int]):
        self.admitter = admitter
        self.state = state
        heap = []
        arrays = state.groups
        for group in groups:
            positions = arrays[group]
            if positions:
                heap.append((-positions[-1], group))
        if state.replica_members:
            heap.append((-state.replica_members[-1], REPLICA_GROUP))
        heapify(heap)
        self.heap = heap
        self.cursor: dict[int, int] = {}

    def __len__(self) -> int:
        # long_tail sorts by the job's whole candidate count, as a full pass would.
        return self.state.count

    def __bool__(self) -> bool:
        return bool(self.heap)

    def pop(self) -> int:
        heap = self.heap
        state = self.state
        level = cast(TaskLevel, state.level)
        fits = self.admitter.index.fits
        while heap:
            group = heap[0][1]
            if group == REPLICA_GROUP:
                positions: Any = state.replica_members
            else:
                if not fits(state.vectors, level.groups[group].path):
                    heappop(heap)
                    continue
                positions = state.groups[group]
            at = self.cursor.get(group, len(positions) - 1)
            position = int(positions[at])
            if at:
                self.cursor[group] = at - 1
                heapreplace(heap, (-positions[at - 1], group))
            else:
                heappop(heap)
            return position
        return _NO_CANDIDATE


class IncrementalAdmitter:
    """Admission over one forest that keeps candidates between passes.

    Call `admit_all` for a full pass, then after each change report it (`task_ended`,
    `refresh_task`, `set_enabled`) and call `admit_affected`.

    :param running: tasks that already hold resources in `ledger` under
        ``holder_of(job, node)``; they end through `task_ended`.
    :param job_order: ``shuffled`` shuffles the jobs before every pass, as Bistro does;
        ``config`` keeps the file order.
    """

    def __init__(
        self,
        config: Config,
        forest: Forest,
        ledger: Ledger,
        rng: random.Random,
        *,
        statuses: Mapping[TaskKey, StatusLike] | None = None,
        now: float = 0.0,
        running: Iterable[TaskKey] = (),
        job_order: Literal["config", "shuffled"] = "shuffled",
        start_hook: StartHook = _accept_all,
        holder_of: Callable[[str, str], Hashable] = lambda job, node: (job, node),
        extra_needs: Callable[[Job, Candidate, Node], Holdings] | None = None,
    ):
        self.config = config
        self.settings = config.settings
        self.forest = forest
        self.ledger = ledger
        self.rng = rng
        self.job_order = job_order
        self.start_hook = start_hook
        self.holder_of = holder_of
        self.extra_needs = extra_needs
        self.running: dict[TaskKey, Hashable] = {key: holder_of(*key) for key in running}
        self.index = ForestIndex(config.settings, forest, ledger.capacity_of, ledger.usage(), rng)
        self.states = self._build_states(statuses or {}, now)
        self._by_name = {state.job.name: state for state in self.states}
        self._dependents = _dependents(config)
        self._dirty: Scope = {}
        self.last_pass_stopped = False

    def _build_states(self, statuses: Mapping[TaskKey, StatusLike], now: float) -> list[JobState]:
        running = frozenset(self.running)
        jobs = [job for job in self.config.jobs.values() if job.can_run]
        return [
            build_job_state(self.index, job, statuses, now, running, self.config.jobs)
            for job in jobs
        ]

    # -- passes ----------------------------------------------------------------------------

    def admit_all(self) -> list[Admission]:
        """Run a full pass: every job tries every candidate, full groups dropped whole."""
        self._dirty = {}
        started = self._run({level: None for level in self.index.task_levels})
        log.debug(
            "Full admission pass over %d jobs started %d tasks", len(self.states), len(started)
        )
        return started

    def admit_affected(self) -> list[Admission]:
        """Run a pass over the groups that changed since the last pass (none: return [])."""
        if not self._dirty:
            return []
        scope, self._dirty = self._dirty, {}
        return self._run(scope)

    def _run(self, scope: Scope) -> list[Admission]:
        states = list(self.states)
        if self.job_order == "shuffled":
            self.rng.shuffle(states)
        entries = []
        for state in states:
            groups = self._groups_in_scope(state, scope)
            scan = _Scan(self, state, groups)
            entries.append(JobCandidates(state.job, cast(list[int], scan)))
        started: list[tuple[JobState, int, Admission]] = []

        def try_start(job: Job, position: int) -> StartResult:
            return self._try_start(self._by_name[job.name], position, started)

        completed = run_policy(self.settings.scheduler, entries, try_start, self.rng)
        self.last_pass_stopped = not completed
        if not completed:
            # Untried candidates may fit, so the next incremental pass must see them all.
            self._dirty = {level: None for level in self.index.task_levels}
        for state, position, _admission in started:
            state.remove(position)
        return [admission for _state, _position, admission in started]

    def _groups_in_scope(self, state: JobState, scope: Scope) -> Iterable[int]:
        if state.level is None or state.level.level not in scope:
            return ()
        groups = scope[state.level.level]
        return range(len(state.groups)) if groups is None else groups

    def _try_start(
        self, state: JobState, position: int, started: list[tuple[JobState, int, Admission]]
    ) -> StartResult:
        if position == _NO_CANDIDATE:
            return StartResult.DID_NOT_RUN
        level = cast(TaskLevel, state.level)
        group = level.group_of_pos[position]
        if group == REPLICA_GROUP:
            nodes = state.replica_nodes[position]
            return self._start_first_fitting(state, position, nodes, started)
        node = level.node_at(position)
        path = level.groups[group].path
        if node is not level.groups[group].node and self.index.slots[level.level].width:
            # The pop already checked the group node's path, so only the task node is left.
            leaf = ((level.level, level.slot_of_pos[position]),)
            if not self.index.fits(state.vectors, leaf):
                return StartResult.DID_NOT_RUN
            path = leaf + path
        return self._start_first_fitting(state, position, (node,), started, checked_path=path)

    def _start_first_fitting(
        self,
        state: JobState,
        position: int,
        nodes: tuple[Node, ...],
        started: list[tuple[JobState, int, Admission]],
        *,
        checked_path: tuple[tuple[int, int], ...] | None = None,
    ) -> StartResult:
        """Start the task on the first of `nodes` whose path fits, as `admit_pass` does.

        :param checked_path: the slots of the only node's path, which the caller found
            to fit; None checks each node's path here.
        """
        job = state.job
        name = nodes[0].name
        candidate = Candidate(name, nodes)
        outcome = StartResult.DID_NOT_RUN
        for node in nodes:
            path = checked_path or self.index.path_slots(node)
            if checked_path is None and not self.index.fits(state.vectors, path):
                continue
            steps = node.path_to_root()
            needs = needs_from_table(self.settings.levels, state.table, steps)
            if self.extra_needs is not None:
                needs.update(self.extra_needs(job, candidate, node))
                if self.ledger.first_blocker(needs) is not None:
                    continue
            outcome = self.start_hook(job, candidate, node, needs)
            if outcome is StartResult.RAN:
                self._grant(state, name, needs, path)
                names = tuple(step.name for step in reversed(steps))
                started.append((state, position, Admission(job.name, name, names, needs)))
                return outcome
            if outcome is StartResult.STOP:
                return outcome
            # The hook declined a task that fits: try it again in the next pass.
            self._mark_position(cast(TaskLevel, state.level), position)
        return outcome

    def _grant(
        self, state: JobState, node: str, needs: Holdings, path: tuple[tuple[int, int], ...]
    ) -> None:
        holder = self.holder_of(state.job.name, node)
        self.ledger.force_acquire(holder, needs)
        if self.extra_needs is None:
            self.index.take(state.vectors, path)
        else:
            # Extra needs may name nodes outside the path (workers), so go by their keys.
            self.index.apply(needs, -1)
        self.running[(state.job.name, node)] = holder

    # -- events ----------------------------------------------------------------------------

    def task_ended(
        self, job: str, node: str, statuses: Mapping[TaskKey, StatusLike], now: float
    ) -> Holdings | None:
        """Release a task's holdings and update candidates from its new status.

        `statuses` must already contain the task's final status. Jobs that depend on `job`
        get their candidate on `node` re-checked too, since a ``done`` may unblock them.

        :return: what the task held, or None if it was not running here.
        """
        holder = self.running.pop((job, node), None)
        holdings = self.ledger.release(holder) if holder is not None else None
        if holdings:
            self._mark_changed(self.index.apply(holdings, +1))
        self.refresh_task(job, node, statuses, now)
        for dependent in self._dependents.get(job, ()):
            self.refresh_task(dependent, node, statuses, now)
        return holdings

    def refresh_task(
        self, job: str, node: str, statuses: Mapping[TaskKey, StatusLike], now: float
    ) -> None:
        """Re-check whether task (`job`, `node`) is a candidate, as after a backoff ends."""
        state = self._by_name.get(job)
        if state is None or state.level is None:
            return
        position = state.level.position(node)
        if position is None:
            return
        key = (job, node)
        pending = (
            key not in self.running
            and status_allows_start(statuses.get(key), now)
            and dependencies_done(state.job, node, statuses, self.config.jobs)
            and state.passes_filters(position, self.settings.levels)
        )
        if not pending:
            state.remove(position)
            return
        group = state.add(position, self.settings.levels)
        if group is not None:
            self._mark_groups(state.level.level, [group])

    def set_enabled(self, node: Node, enabled: bool) -> None:
        """Enable or disable `node`, parking or restoring the candidates below it.

        Tasks already running below a disabled node keep their resources until they end.
        """
        node.enabled = enabled
        key = (self.settings.levels[node.level], node.name)
        for level in self.index.task_levels.values():
            if node.level > level.level:
                continue
            if node.level == level.level and level.groups_touching(node.level, key) == []:
                self._toggle_leaf(level, node.name, enabled)
            else:
                self._toggle_groups(level, level.groups_touching(node.level, key))
            self._refresh_replicas(level)

    def _toggle_leaf(self, level: TaskLevel, name: str, enabled: bool) -> None:
        position = level.position(name)
        if position is None or level.group_of_pos[position] == REPLICA_GROUP:
            return
        for state in self._states_on(level):
            if not enabled:
                state.park_leaf(position)
            elif state.unpark_leaf(position) is not None:
                self._mark_groups(level.level, [level.group_of_pos[position]])

    def _toggle_groups(self, level: TaskLevel, groups: list[int] | None) -> None:
        restored = []
        for group in range(len(level.groups)) if groups is None else groups:
            usable = level.groups[group].node.usable()
            if usable == bool(level.group_usable[group]):
                continue
            level.group_usable[group] = usable
            for state in self._states_on(level):
                if usable and state.unpark_group(group):
                    restored.append(group)
                elif not usable:
                    state.park_group(group)
                    state.parked_groups.setdefault(group, array("i"))
        self._mark_groups(level.level, restored)

    def _refresh_replicas(self, level: TaskLevel) -> None:
        for state in self._states_on(level):
            if state.replica_pending and state.refresh_replicas(
                sorted(state.replica_pending), self.settings.levels
            ):
                self._mark_groups(level.level, [])

    def _states_on(self, level: TaskLevel) -> list[JobState]:
        return [state for state in self.states if state.level is level]

    # -- dirty groups ------------------------------------------------------------------------

    def _mark_changed(self, changed: list[tuple[int, NodeKey]]) -> None:
        """Mark the groups under each node that got headroom back."""
        for level_number, key in changed:
            if level_number < 0:
                # A worker or another node outside the forest: any candidate may use it.
                self._dirty = {level: None for level in self.index.task_levels}
                return
            for level in self.index.task_levels.values():
                self._mark_node(level, level_number, key)

    def _mark_node(self, level: TaskLevel, level_number: int, key: NodeKey) -> None:
        if level_number > level.level:
            return
        groups = level.groups_touching(level_number, key)
        if level_number == level.level and groups == []:
            position = level.position(key[1])
            groups = [] if position is None else [level.group_of_pos[position]]
        self._mark_groups(level.level, groups)

    def _mark_position(self, level: TaskLevel, position: int) -> None:
        self._mark_groups(level.level, [level.group_of_pos[position]])

    def _mark_groups(self, level: int, groups: list[int] | None) -> None:
        """Add `groups` (None: all) to the next incremental pass of task level `level`.

        An empty list, or one with REPLICA_GROUP, still schedules the level, so its replica
        candidates are tried.
        """
        if groups is None:
            self._dirty[level] = None
            return
        known = self._dirty.get(level, set())
        if known is None:
            return
        # Replica candidates are scanned whenever their level is, so they need no entry.
        known.update(group for group in groups if group != REPLICA_GROUP)
        self._dirty[level] = known

    # -- inspection --------------------------------------------------------------------------

    def candidate_count(self, job: str) -> int:
        """Return how many candidates of `job` a pass can try now."""
        state = self._by_name.get(job)
        return 0 if state is None else state.count

    def is_candidate(self, job: str, node: str) -> bool:
        """Return True when a pass can try task (`job`, `node`), as `plan_jobs` would list it."""
        state = self._by_name.get(job)
        if state is None or state.level is None:
            return False
        position = state.level.position(node)
        return position is not None and state.active(position)

    def blocker(self, job: str, node: str) -> Blocker | None:
        """Return the first node and resource lacking room for the task, or None if it fits."""
        state = self._by_name.get(job)
        if state is None or state.level is None:
            return None
        nodes = self.forest.replica_tuple(state.level.level, node)
        check = PathCheck(self.settings, self.ledger)
        blockers = [check.blocker(state.job, replica) for replica in nodes]
        return None if not blockers or None in blockers else blockers[0]

    def waiting_reason(self, job: str, node: str) -> str:
        """Return why task (`job`, `node`) has not started, in `admit_pass`'s words."""
        if (job, node) in self.running:
            return "running"
        if not self.is_candidate(job, node):
            return "not a candidate (status, dependencies, filters or disabled node)"
        blocker = self.blocker(job, node)
        return f"waiting for {blocker}" if blocker else "not tried since it became a candidate"

    def refresh_capacity(self) -> None:
        """Re-read every node's capacity and usage, then let the next pass try everything."""
        self.index.refill(self.ledger.capacity_of, self.ledger.usage())
        self._dirty = {level: None for level in self.index.task_levels}


def _dependents(config: Config) -> dict[str, list[str]]:
    """Return, per job, the jobs that list it in `depends_on`."""
    dependents: dict[str, list[str]] = {}
    for job in config.jobs.values():
        for dependency in job.depends_on:
            dependents.setdefault(dependency, []).append(job.name)
    return dependents
