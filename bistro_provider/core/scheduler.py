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

from bistro_provider.core.filters import task_eligibility
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Config, Job, Settings
from bistro_provider.core.policies import JobCandidates, StartResult, run_policy
from bistro_provider.core.resources import Blocker, Holdings, Ledger, task_needs

TaskKey = tuple[str, str]
"""A Bistro task: (job name, node name)."""


class StatusLike(Protocol):
    kind: str
    time: float
    backoff: int


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
    known = set(known_jobs)
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
) -> list[Candidate]:
    """Return `job`'s candidates among `node_names` by Bistro's rules, keeping their order."""
    settings = config.settings
    level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
    candidates = []
    for name in node_names:
        if (job.name, name) in running:
            continue
        if not status_allows_start(statuses.get((job.name, name)), now):
            continue
        if not dependencies_done(job, name, statuses, config.jobs):
            continue
        replicas = tuple(
            node
            for node in forest.replicas(level, name)
            if task_eligibility(job, node, settings.levels) == "yes"
        )
        if replicas:
            candidates.append(Candidate(name, replicas))
    return candidates


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
    entries = []
    for job in jobs:
        level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
        if level not in ordered_by_level:
            names = forest.distinct_names(level) if level < len(settings.levels) - 1 else []
            ordered_by_level[level] = order_nodes(names, settings.node_order, rng)
        names = ordered_by_level[level]
        candidates = job_candidates(config, forest, job, statuses, now, names, running)
        entries.append(JobCandidates(job, candidates))
    return entries


def _accept_all(job: Job, candidate: Candidate, node: Node, needs: Holdings) -> StartResult:
    return StartResult.RAN


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

    :param start_hook: asked to start a task whose path fits; only on RAN are the
        resources taken, under the key `holder_of(job, node)`.
    :param extra_needs: needs beyond the data-node path, such as the worker's.
    """
    result = PassResult()

    def try_start(job: Job, candidate: Candidate) -> StartResult:
        key = (job.name, candidate.node)
        outcome = StartResult.DID_NOT_RUN
        for node in candidate.replicas:
            needs = task_needs(settings, job, node.path_to_root())
            if extra_needs is not None:
                needs.update(extra_needs(job, candidate, node))
            blocker = ledger.first_blocker(needs)
            if blocker is not None:
                result.blockers.setdefault(key, blocker)
                continue
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
        result.waiting[key] = f"waiting for {blocker}" if blocker else "no worker available"
        return outcome

    completed = run_policy(settings.scheduler, jobs, try_start, rng)
    result.stopped_early = not completed
    for entry in jobs:
        for candidate in entry.candidates:
            result.waiting.setdefault((entry.job.name, candidate.node), "not tried this pass")
    return result


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
