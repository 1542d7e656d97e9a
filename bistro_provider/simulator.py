"""A discrete-event simulation of a Bistro fleet that drives the real admission core.

Nothing sleeps and nothing runs: every task of every runnable job gets a duration drawn
from a distribution, and the simulation jumps from one task end to the next. After each
batch of events at one instant, one of three engines decides which tasks start:

* ``incremental``: `IncrementalAdmitter.admit_affected`, which re-examines only the groups
  under the nodes a finished task freed, like the tree-based scheduler of the Bistro paper
  (USENIX ATC 2015);
* ``full``: `IncrementalAdmitter.admit_all`, every job over every candidate;
* ``reference``: `plan_jobs` + `admit_pass`, the brute-force pass (slow at scale).

Every task ends ``done``. Churn disables a random node of the first configured level
(a host in the usual shapes) and enables it again one simulated hour later. A disabled
node's tasks wait, and tasks already running under it finish normally.

Normalized throughput at a sample instant is running / allowed, where

* running counts the tasks running under enabled level-1 nodes, and
* allowed bounds the tasks that could run at once given the resources and the open tasks
  (running, or startable once resources allow). Bottom-up over the forest,
  ``allowed(n) = min(cap(n), open(n) + sum of allowed(c) over n's children c)``, where
  ``open(n)`` counts the jobs with an open task on `n`, and ``cap(n)`` is the minimum over
  the resources of `n`'s level of ``limit // smallest positive need among the jobs``
  (no bound when some job needs 0 or the level has no resources). A disabled level-1 node
  allows 0. For hosts with limit 2 over databases with limit 1, allowed(host) is
  min(2, databases with open tasks), summed over hosts.

Samples are taken every `sample_interval` simulated seconds until the last task ends.
"""

from __future__ import annotations

import heapq
import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bistro_provider.core.filters import PathEligibility
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.incremental import IncrementalAdmitter
from bistro_provider.core.model import Config, Job
from bistro_provider.core.resources import Ledger, level_capacity, need_table
from bistro_provider.core.scheduler import Admission, TaskKey, admit_pass, plan_jobs
from bistro_provider.core.status import TaskStatus
from bistro_provider.nodes import fetch_forest

log = logging.getLogger(__name__)

Distribution = Literal["uniform", "fixed", "exponential"]
Mode = Literal["incremental", "full", "reference"]
DISTRIBUTIONS: tuple[Distribution, ...] = ("uniform", "fixed", "exponential")
MODES: tuple[Mode, ...] = ("incremental", "full", "reference")
CHURN_DOWN_SECONDS = 3600.0
"""How long a node removed by churn stays away, in simulated seconds."""

_RUNNING = TaskStatus("running", 0.0)
_DONE = TaskStatus("done", 0.0)
_END, _RESTORE, _REMOVE = 0, 1, 2


@dataclass(frozen=True)
class SimulationOptions:
    """Parameters of one simulation run.

    :param duration_mean: the mean task duration d, in simulated seconds.
    :param distribution: ``uniform`` over [0, 2d], ``fixed`` d, or ``exponential`` with
        mean d.
    :param churn: the fraction of level-1 nodes removed per simulated hour (Poisson).
    :param sample_interval: simulated seconds between throughput samples; d / 2 if None.
    :param charge_pass_time: advance the simulated clock by the CPU time the scheduler
        spends on each batch of events and its pass, so a slow pass delays the tasks it
        starts and the events that arrive meanwhile. CPU time leaves out other processes'
        load, but the results still depend on the machine.
    """

    duration_mean: float = 300.0
    distribution: Distribution = "uniform"
    churn: float = 0.0
    seed: int = 0
    mode: Mode = "incremental"
    sample_interval: float | None = None
    charge_pass_time: bool = False

    def __post_init__(self) -> None:
        if not self.duration_mean > 0:
            raise ValueError(f"duration_mean must be > 0 seconds, got {self.duration_mean!r}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(
                f"unknown distribution {self.distribution!r}; use one of {DISTRIBUTIONS}"
            )
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {MODES}")
        if self.churn < 0:
            raise ValueError(f"churn must be >= 0 (a fraction per hour), got {self.churn!r}")


@dataclass
class SimulationReport:
    """The outcome of one run; times are simulated seconds unless named `_wall` or `_cpu`."""

    mode: str
    nodes: int
    jobs: int
    tasks_completed: int
    tasks_open_at_end: int
    makespan: float
    normalized_throughput_mean: float | None
    normalized_throughput_midpoint: float | None
    normalized_throughput_min: float | None
    samples: int
    passes: int
    pass_seconds_median_wall: float
    pass_seconds_p95_wall: float
    pass_seconds_max_wall: float
    pass_seconds_median_cpu: float
    pass_seconds_p95_cpu: float
    pass_seconds_max_cpu: float
    churn_removals: int
    build_seconds_wall: float
    run_seconds_wall: float
    ratios: list[tuple[float, float]] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["ratios"]
        return data


def draw_duration(rng: random.Random, options: SimulationOptions) -> float:
    """Return one task duration in simulated seconds."""
    mean = options.duration_mean
    if options.distribution == "fixed":
        return mean
    if options.distribution == "exponential":
        return rng.expovariate(1.0 / mean)
    return rng.uniform(0.0, 2.0 * mean)


class ConcurrencyBound:
    """Open tasks per node, and the bound on concurrent tasks described in the module doc."""

    def __init__(self, config: Config, forest: Forest):
        self.config = config
        self.forest = forest
        self.capacity_of = level_capacity(config.settings, _node_capacity(forest))
        self.open: dict[tuple[int, str], int] = {}
        self.open_total = 0
        self._min_needs = _min_positive_needs(config)
        self._caps: dict[int, int | None] = {}

    def change(self, level: int, name: str, delta: int) -> None:
        key = (level, name)
        count = self.open.get(key, 0) + delta
        if count:
            self.open[key] = count
        else:
            self.open.pop(key, None)
        self.open_total += delta

    def allowed(self, removed: set[str]) -> int:
        """Return the bound over all enabled level-1 nodes, capped at the instance node."""
        levels = len(self.config.settings.levels) - 1
        totals: list[dict[int, list[Any]]] = [{} for _ in range(levels)]
        for (level, name), count in self.open.items():
            if count > 0:
                for node in self.forest.replica_tuple(level, name):
                    _add(totals[level], node, count)
        for level in range(levels - 1, 0, -1):
            for node, total in totals[level].values():
                if level == 1 and node.name in removed:
                    continue
                _add(totals[level - 1], node.parent, self._bounded(node, total))
        root = totals[0].get(id(self.forest.instance))
        return 0 if root is None else self._bounded(root[0], root[1])

    def _bounded(self, node: Node, total: int) -> int:
        cap = self._caps.get(id(node), -1)
        if cap == -1:
            cap = self._caps[id(node)] = self._cap(node)
        return total if cap is None else min(cap, total)

    def _cap(self, node: Node) -> int | None:
        level = self.config.settings.levels[node.level]
        limits = self.capacity_of((level, node.name))
        caps = [
            limits.get(resource, 0) // need
            for resource, need in self._min_needs.get(level, {}).items()
        ]
        return min(caps) if caps else None


def _add(totals: dict[int, list[Any]], node: Node | None, amount: int) -> None:
    if node is None:
        return
    entry = totals.setdefault(id(node), [node, 0])
    entry[1] += amount


def _node_capacity(forest: Forest) -> dict[tuple[str, str], Any]:
    return {
        (forest.levels[node.level], node.name): node.capacity for node in forest if node.capacity
    }


def _min_positive_needs(config: Config) -> dict[str, dict[str, int]]:
    """Return per level the smallest need of each resource, leaving out any resource that
    some runnable job needs 0 of (it does not bound that job's tasks)."""
    settings = config.settings
    jobs = [job for job in config.jobs.values() if job.can_run]
    result: dict[str, dict[str, int]] = {}
    for index, level in enumerate(settings.levels):
        needs: dict[str, int] = {}
        for resource in settings.resources.get(level, {}):
            amounts = [dict(need_table(settings, job)[index])[resource] for job in jobs]
            if amounts and min(amounts) > 0:
                needs[resource] = min(amounts)
        result[level] = needs
    return result


class _Engine:
    """The admission core in one of the three modes, with the ledger it grants from."""

    def __init__(self, config: Config, forest: Forest, mode: Mode, rng: random.Random):
        self.config = config
        self.forest = forest
        self.mode = mode
        self.rng = rng
        self.ledger = Ledger(level_capacity(config.settings, _node_capacity(forest)))
        self.admitter = None
        if mode != "reference":
            self.admitter = IncrementalAdmitter(config, forest, self.ledger, rng)

    def admit(
        self,
        statuses: dict[TaskKey, TaskStatus],
        running: dict[TaskKey, str],
        now: float,
        first: bool,
    ) -> list[Admission]:
        if self.admitter is None:
            keys = set(running)
            jobs = plan_jobs(self.config, self.forest, statuses, now, self.rng, running=keys)
            return admit_pass(self.config.settings, jobs, self.ledger, self.rng).started
        if first or self.mode == "full":
            return self.admitter.admit_all()
        return self.admitter.admit_affected()

    def ended(self, key: TaskKey, statuses: dict[TaskKey, TaskStatus], now: float) -> None:
        if self.admitter is None:
            self.ledger.release(key)
        else:
            self.admitter.task_ended(key[0], key[1], statuses, now)

    def set_enabled(self, node: Node, enabled: bool) -> None:
        if self.admitter is None:
            node.enabled = enabled
        else:
            self.admitter.set_enabled(node, enabled)


class _Simulation:
    """The state of one run: events, running tasks, statuses and samples."""

    def __init__(self, config: Config, options: SimulationOptions):
        started = time.perf_counter()
        self.config = config
        self.options = options
        self.durations = random.Random(options.seed)
        self.churn_rng = random.Random(options.seed + 1)
        self.forest = fetch_forest(config.settings)
        self.bound = ConcurrencyBound(config, self.forest)
        self.engine = _Engine(config, self.forest, options.mode, random.Random(options.seed + 2))
        self.build_seconds = time.perf_counter() - started

        self.jobs = [job for job in config.jobs.values() if job.can_run]
        self.task_level = {job.name: _task_level(config, job) for job in self.jobs}
        self.filters = {
            job.name: PathEligibility(job, config.settings.levels, check_enabled=False)
            for job in self.jobs
        }
        self.dependents = _dependent_jobs(self.jobs)

        self.statuses: dict[TaskKey, TaskStatus] = {}
        self.running: dict[TaskKey, str] = {}
        """Running tasks and the name of the level-1 node above each."""
        self.running_under: dict[str, int] = {}
        self.removed: set[str] = set()
        self.events: list[tuple[float, int, int, Any]] = []
        self.sequence = 0
        self.pending_restores = 0

        self.pass_seconds: list[float] = []
        self.pass_cpu_seconds: list[float] = []
        self.ratios: list[tuple[float, float]] = []
        self.completed = 0
        self.next_sample = 0.0
        self.removals = 0
        self.last_end = 0.0
        self._open_first_tasks()

    def _open_first_tasks(self) -> None:
        """Count the tasks that can run once resources allow: eligible, no dependency."""
        levels = self.config.settings.levels
        for job in self.jobs:
            level = self.task_level[job.name]
            if job.depends_on or level >= len(levels) - 1:
                continue
            paths = PathEligibility(job, levels)
            for name in self.forest.distinct_names(level):
                if any(paths.eligible(node) for node in self.forest.replica_tuple(level, name)):
                    self.bound.change(level, name, +1)

    def push(self, at: float, kind: int, payload: Any) -> None:
        self.sequence += 1
        heapq.heappush(self.events, (at, self.sequence, kind, payload))

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> SimulationReport:
        started = time.perf_counter()
        # The first sample comes one interval in, after the first pass has started tasks.
        self.next_sample = self.options.sample_interval or self.options.duration_mean / 2
        free_at = self._step(0.0, first=True)
        if self.options.churn > 0:
            self._schedule_removal(0.0)
        while self.events and (self.running or self.bound.open_total):
            now = max(self.events[0][0], free_at)
            self._sample_until(now)
            free_at = self._step(now, first=False)
            if not self.running and not self.pending_restores:
                if self.bound.open_total:
                    log.warning("Simulation stalled at %.1f s: open tasks cannot start", now)
                break
        return self._report(time.perf_counter() - started)

    def _step(self, now: float, first: bool) -> float:
        """Handle the events due at `now`, run one pass, and start its tasks.

        :return: when the scheduler is free again: `now`, plus the wall time of the step
            when `charge_pass_time` is set.
        """
        step_cpu = time.process_time()
        while self.events and self.events[0][0] <= now:
            _at, _seq, kind, payload = heapq.heappop(self.events)
            self._handle(kind, payload, now)
        pass_wall, pass_cpu = time.perf_counter(), time.process_time()
        started = self.engine.admit(self.statuses, self.running, now, first)
        finished_cpu = time.process_time()
        self.pass_seconds.append(time.perf_counter() - pass_wall)
        self.pass_cpu_seconds.append(finished_cpu - pass_cpu)
        charged = finished_cpu - step_cpu if self.options.charge_pass_time else 0.0
        start_at = now + charged
        # Until start_at the new tasks are not running yet.
        self._sample_until(start_at)
        for admission in started:
            self._start(admission, start_at)
        return start_at

    def _handle(self, kind: int, payload: Any, now: float) -> None:
        if kind == _END:
            self._end(payload, now)
        elif kind == _REMOVE:
            self._remove(now)
        else:
            self.pending_restores -= 1
            self.removed.discard(payload.name)
            self.engine.set_enabled(payload, True)

    def _start(self, admission: Admission, now: float) -> None:
        key = (admission.job, admission.node)
        top = admission.path[1] if len(admission.path) > 1 else admission.path[0]
        self.statuses[key] = _RUNNING
        self.running[key] = top
        self.running_under[top] = self.running_under.get(top, 0) + 1
        self.push(now + draw_duration(self.durations, self.options), _END, key)

    def _end(self, key: TaskKey, now: float) -> None:
        top = self.running.pop(key)
        self.running_under[top] -= 1
        self.statuses[key] = _DONE
        self.engine.ended(key, self.statuses, now)
        self.bound.change(self.task_level[key[0]], key[1], -1)
        self.completed += 1
        self.last_end = now
        for job in self.dependents.get(key[0], ()):
            self._open_dependent(job, key[1])

    def _open_dependent(self, job: Job, name: str) -> None:
        level = self.task_level[job.name]
        if any(self.statuses.get((dep, name)) is not _DONE for dep in job.depends_on):
            return
        nodes = self.forest.replica_tuple(level, name)
        if any(self.filters[job.name].eligible(node) for node in nodes):
            self.bound.change(level, name, +1)

    def _remove(self, now: float) -> None:
        self._schedule_removal(now)
        present = [node for node in self.forest.nodes(1) if node.enabled]
        if not present:
            return
        node = self.churn_rng.choice(present)
        self.engine.set_enabled(node, False)
        self.removed.add(node.name)
        self.removals += 1
        self.pending_restores += 1
        self.push(now + CHURN_DOWN_SECONDS, _RESTORE, node)

    def _schedule_removal(self, now: float) -> None:
        hosts = self.forest.level_size(1)
        rate = self.options.churn * hosts / 3600.0
        if rate > 0:
            self.push(now + self.churn_rng.expovariate(rate), _REMOVE, None)

    def _sample_until(self, end: float) -> None:
        """Take every sample due before `end`; the state is constant until then."""
        interval = self.options.sample_interval or self.options.duration_mean / 2
        while self.next_sample < end:
            allowed = self.bound.allowed(self.removed)
            if allowed > 0:
                hidden = sum(self.running_under.get(name, 0) for name in self.removed)
                ratio = (len(self.running) - hidden) / allowed
                self.ratios.append((self.next_sample, ratio))
            self.next_sample += interval

    # -- the report --------------------------------------------------------------------------

    def _report(self, run_seconds: float) -> SimulationReport:
        ratios = [ratio for _at, ratio in self.ratios]
        midpoint = None
        if self.ratios:
            middle = self.last_end / 2
            midpoint = min(self.ratios, key=lambda sample: abs(sample[0] - middle))[1]
        passes = sorted(self.pass_seconds)
        passes_cpu = sorted(self.pass_cpu_seconds)
        return SimulationReport(
            mode=self.options.mode,
            nodes=len(self.forest),
            jobs=len(self.jobs),
            tasks_completed=self.completed,
            tasks_open_at_end=self.bound.open_total,
            makespan=self.last_end,
            normalized_throughput_mean=statistics.fmean(ratios) if ratios else None,
            normalized_throughput_midpoint=midpoint,
            normalized_throughput_min=min(ratios) if ratios else None,
            samples=len(ratios),
            passes=len(passes),
            pass_seconds_median_wall=statistics.median(passes),
            pass_seconds_p95_wall=_p95(passes),
            pass_seconds_max_wall=passes[-1],
            pass_seconds_median_cpu=statistics.median(passes_cpu),
            pass_seconds_p95_cpu=_p95(passes_cpu),
            pass_seconds_max_cpu=passes_cpu[-1],
            churn_removals=self.removals,
            build_seconds_wall=self.build_seconds,
            run_seconds_wall=run_seconds,
            ratios=self.ratios,
        )


def _p95(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def _dependent_jobs(jobs: list[Job]) -> dict[str, list[Job]]:
    """Return, per job name, the jobs that list it in `depends_on`."""
    dependents: dict[str, list[Job]] = {}
    for job in jobs:
        for dependency in job.depends_on:
            dependents.setdefault(dependency, []).append(job)
    return dependents


def _task_level(config: Config, job: Job) -> int:
    settings = config.settings
    return settings.level_index(job.level_for_tasks or settings.level_for_tasks)


def simulate(config: Config, options: SimulationOptions | None = None) -> SimulationReport:
    """Run one simulation of `config`'s forest and jobs; see the module docstring."""
    options = options or SimulationOptions()
    simulation = _Simulation(config, options)
    log.debug(
        "Simulating %d nodes and %d jobs in %s mode",
        len(simulation.forest),
        len(simulation.jobs),
        options.mode,
    )
    return simulation.run()
