"""One admission pass: build each job's candidate tasks, then let the policy start them.

Two callers build candidates differently. The planner (`airflow bistro plan`, the
simulator) applies Bistro's rules to every node: status, filters, disabled nodes and
`depends_on`. The executor only considers tasks that Airflow has queued, and hands them to
`admit_pass` the same way. Either way, `admit_pass` is the only place that takes resources.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from bistro_provider.core.filters import PathEligibility
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Config, Job, Settings
from bistro_provider.core.policies import JobCandidates, StartResult, run_policy
from bistro_provider.core.resources import Blocker, Holdings, Ledger, PathCheck, needs_from_table

TaskKey = tuple[str, str]
"""A Bistro task: (job name, node name)."""


class StatusLike(Protocol):
    """A task status as admission reads it; read-only, so frozen `TaskStatus` matches."""

    @property
    def kind(self) -> str: ...

    @property
    def time(self) -> float: ...

    @property
    def backoff(self) -> int: ...


@dataclass(frozen=True)
class Candidate:
    """A task that may start: its node name and the paths (replicas) it may take.

    :param replicas: task nodes to try in order; the first whose path fits wins.
    """

    node: str
    replicas: tuple[Node, ...]


@dataclass(frozen=True)
class Admission:
    """A task the pass started, the path it took, and what it holds on each node."""

    job: str
    node: str
    path: tuple[str, ...]
    holdings: Holdings


@dataclass
class PassResult:
    """The outcome of one pass: starts in order, and why every other candidate waits."""

    started: list[Admission] = field(default_factory=list)
    waiting: dict[TaskKey, str] = field(default_factory=dict)
    blockers: dict[TaskKey, Blocker] = field(default_factory=dict)
    stopped_early: bool = False


StartHook = Callable[[Job, Candidate, Node, Holdings], StartResult]
"""Called for a task whose path fits; RAN lets the pass take the resources."""


def order_nodes(names: list[str], node_order: str, rng: random.Random) -> list[str]:
    """Order a level's node names by `node_order`: fetch order, by name, or shuffled."""
    if node_order == "lexicographic":
        return sorted(names)
    if node_order == "random":
        shuffled = list(names)
        rng.shuffle(shuffled)
        return shuffled
    return list(names)


def status_allows_start(status: StatusLike | None, now: float) -> bool:
    """Return True if a task with this status may start: never tried, incomplete, or a
    retryable error whose backoff has expired. Running, done and failed tasks may not."""
    if status is None:
        return True
    if status.kind in ("running", "done", "failed"):
        return False
    if status.kind in ("error_backoff", "incomplete_backoff"):
        return status.time + status.backoff <= now
    return True


def dependencies_done(
    job: Job, node: str, statuses: Mapping[TaskKey, StatusLike], known_jobs: Iterable[str]
) -> bool:
    """Return True if every job in `depends_on` is done on `node`.

    A dependency on a job that is not defined can never be met, as in Bistro.
    """
    if not job.depends_on:
        return True
    known = known_jobs if isinstance(known_jobs, (set, frozenset, dict)) else set(known_jobs)
    for dependency in job.depends_on:
        if dependency not in known:
            return False
        status = statuses.get((dependency, node))
        if status is None or status.kind != "done":
            return False
    return True


def job_candidates(
    config: Config,
    forest: Forest,
    job: Job,
    statuses: Mapping[TaskKey, StatusLike],
    now: float,
    node_names: list[str],
    running: set[TaskKey] | frozenset[TaskKey] = frozenset(),
    *,
    shared: dict[str, Candidate] | None = None,
) -> list[Candidate]:
    """Return `job`'s candidates among `node_names` by Bistro's rules, keeping their order.

    :param shared: candidates by node name that other jobs of the same pass built. A
        candidate whose replicas are all eligible is taken from it (or added to it), so
        jobs share one object per node instead of one per job and node.
    """
    settings = config.settings
    level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
    eligibility = PathEligibility(job, settings.levels)
    shared = {} if shared is None else shared
    candidates = []
    for name in node_names:
        if running and (job.name, name) in running:
            continue
        if statuses and not _status_and_dependencies_allow(config, job, name, statuses, now):
            continue
        if not statuses and job.depends_on:
            continue
        replicas = forest.replica_tuple(level, name)
        eligible = tuple(node for node in replicas if eligibility.eligible(node))
        if len(eligible) == len(replicas) and replicas:
            candidate = shared.get(name)
            if candidate is None:
                candidate = shared[name] = Candidate(name, replicas)
            candidates.append(candidate)
        elif eligible:
            candidates.append(Candidate(name, eligible))
    return candidates


def _status_and_dependencies_allow(
    config: Config, job: Job, name: str, statuses: Mapping[TaskKey, StatusLike], now: float
) -> bool:
    if not status_allows_start(statuses.get((job.name, name)), now):
        return False
    return dependencies_done(job, name, statuses, config.jobs)


def plan_jobs(
    config: Config,
    forest: Forest,
    statuses: Mapping[TaskKey, StatusLike],
    now: float,
    rng: random.Random,
    job_order: Literal["config", "shuffled"] = "shuffled",
    running: set[TaskKey] | frozenset[TaskKey] = frozenset(),
) -> list[JobCandidates[Candidate]]:
    """Build every runnable job's candidate list for one pass, as Bistro's scheduler does.

    Jobs are shuffled once per pass unless `job_order` is ``config`` (file order), which
    makes a pass reproducible.
    """
    settings = config.settings
    jobs = [job for job in config.jobs.values() if job.can_run]
    if job_order == "shuffled":
        rng.shuffle(jobs)
    ordered_by_level: dict[int, list[str]] = {}
    shared_by_level: dict[int, dict[str, Candidate]] = {}
    entries = []
    for job in jobs:
        level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
        if level not in ordered_by_level:
            names = forest.distinct_names(level) if level < len(settings.levels) - 1 else []
            ordered_by_level[level] = order_nodes(names, settings.node_order, rng)
        names = ordered_by_level[level]
        shared = shared_by_level.setdefault(level, {})
        candidates = job_candidates(
            config, forest, job, statuses, now, names, running, shared=shared
        )
        entries.append(JobCandidates(job, candidates))
    return entries


def _accept_all(job: Job, candidate: Candidate, node: Node, needs: Holdings) -> StartResult:
    return StartResult.RAN


class _Reasons:
    """The waiting reason of each blocker, formatted once per shared `Blocker` object."""

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Blocker, str]] = {}

    def waiting_for(self, blocker: Blocker) -> str:
        known = self._by_id.get(id(blocker))
        # Only the blockers that PathCheck shares stay alive for the whole pass. The
        # identity check keeps a freed blocker's reused id from returning the wrong text.
        if known is not None and known[0] is blocker:
            return known[1]
        reason = f"waiting for {blocker}"
        self._by_id[id(blocker)] = (blocker, reason)
        return reason


def admit_pass(
    settings: Settings,
    jobs: list[JobCandidates[Candidate]],
    ledger: Ledger,
    rng: random.Random,
    *,
    start_hook: StartHook = _accept_all,
    holder_of: Callable[[str, str], Hashable] = lambda job, node: (job, node),
    extra_needs: Callable[[Job, Candidate, Node], Holdings] | None = None,
) -> PassResult:
    """Run the configured policy over `jobs`, taking resources for every task it starts.

    This is the brute-force pass: every candidate of every job is checked, and every one
    that does not start gets a reason. Capacity is read once per node per pass.

    :param start_hook: asked to start a task whose path fits; only on RAN are the
        resources taken, under the key `holder_of(job, node)`.
    :param extra_needs: needs beyond the data-node path, such as the worker's.
    """
    result = PassResult()
    check = PathCheck(settings, ledger)
    reasons = _Reasons()

    def try_start(job: Job, candidate: Candidate) -> StartResult:
        key = (job.name, candidate.node)
        outcome = StartResult.DID_NOT_RUN
        for node in candidate.replicas:
            needs, blocker = _check_replica(check, job, candidate, node, extra_needs)
            if blocker is not None:
                result.blockers.setdefault(key, blocker)
                continue
            if needs is None:
                needs = needs_from_table(settings.levels, check.table(job), node.path_to_root())
            outcome = start_hook(job, candidate, node, needs)
            if outcome is StartResult.RAN:
                ledger.force_acquire(holder_of(job.name, candidate.node), needs)
                path = tuple(node.path_names())
                result.started.append(Admission(job.name, candidate.node, path, needs))
                result.blockers.pop(key, None)
                return outcome
            if outcome is StartResult.STOP:
                # The policy already popped this candidate, so the sweep for untried
                # candidates below would not give it a reason.
                result.waiting[key] = "no worker available"
                return outcome
        blocker = result.blockers.get(key)
        result.waiting[key] = reasons.waiting_for(blocker) if blocker else "no worker available"
        return outcome

    completed = run_policy(settings.scheduler, jobs, try_start, rng)
    result.stopped_early = not completed
    _mark_untried(result, jobs)
    return result


def _mark_untried(result: PassResult, jobs: list[JobCandidates[Candidate]]) -> None:
    """Give the candidates a stopped pass left in the lists their reason."""
    for entry in jobs:
        for candidate in entry.candidates:
            result.waiting.setdefault((entry.job.name, candidate.node), "not tried this pass")


def _check_replica(
    check: PathCheck,
    job: Job,
    candidate: Candidate,
    node: Node,
    extra_needs: Callable[[Job, Candidate, Node], Holdings] | None,
) -> tuple[Holdings | None, Blocker | None]:
    """Return (needs or None, first blocker or None) for starting `candidate` on `node`.

    Without `extra_needs` the path is checked without building the needs, which only a
    start uses. With it, the needs are merged first, because an extra need may replace a
    path node's amounts.
    """
    if extra_needs is None:
        return None, check.blocker(job, node)
    levels = check.levels
    needs = needs_from_table(levels, check.table(job), node.path_to_root())
    needs.update(extra_needs(job, candidate, node))
    return needs, check.ledger.first_blocker(needs)


def availability(
    forest: Forest, ledger: Ledger, settings: Settings
) -> dict[str, dict[str, dict[str, Any]]]:
    """Return, per level and node, each resource's limit, usage and what is left."""
    report: dict[str, dict[str, dict[str, Any]]] = {}
    for node in forest:
        level = settings.levels[node.level]
        if not settings.resources.get(level):
            continue
        key = (level, node.name)
        limits = ledger.capacity_of(key)
        used = ledger.used(key)
        report.setdefault(level, {})[node.name] = {
            resource: {
                "limit": limit,
                "used": used.get(resource, 0),
                "available": limit - used.get(resource, 0),
            }
            for resource, limit in sorted(limits.items())
        }
    return report
