"""Resource admission for queued Airflow task instances, independent of how they then run.

The executor hands every queued workload to `AdmissionController.classify`. Workloads of a
Bistro job DAG (their `executor_config` has a ``bistro`` entry) become waiting tasks; all
others need no resources. `run_pass` applies the configured Bistro policy to the waiting
tasks, and `commit` writes the grants and each task's admission record in one transaction
before the executor dispatches anything, so a crash between the two never leaves a
running task without a grant.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.live import LiveForest
from bistro_provider.core.model import WORKER_LEVEL, Config, Job
from bistro_provider.core.policies import JobCandidates, StartResult
from bistro_provider.core.resources import Holdings, Ledger, NodeKey, level_capacity
from bistro_provider.core.status import TaskStatus
from bistro_provider.core.scheduler import Admission, Candidate, admit_pass, order_nodes
from bistro_provider.core.workers import WorkerInfo, WorkerPool
from bistro_provider.operators.job import PATHS_KEY, admission_key
from bistro_provider.store import repository

log = logging.getLogger(__name__)

TERMINAL_STATUS_FALLBACK = {
    "success": "done",
    "failed": "failed",
    "up_for_retry": "error_backoff",
    "up_for_reschedule": "incomplete",
}


@dataclass
class WaitingTask:
    """A queued task instance of a Bistro job, resolved to its node."""

    workload: Any
    job: str
    node: str
    snapshot_task: str
    recorded_path: tuple[str, ...] = ()
    since: float = field(default_factory=time.time)
    reason: str = "not tried yet"

    @property
    def ti_id(self) -> str:
        return str(self.workload.ti.id)


@dataclass(frozen=True)
class RunningTask:
    """An admitted task whose try has not ended yet."""

    ti_id: str
    dag_id: str
    run_id: str
    job: str
    node: str
    since: float
    task_id: str = ""
    map_index: int = -1
    worker: str = ""

    @classmethod
    def from_grant(cls, record: repository.GrantRecord) -> RunningTask:
        """Build the running task that owns the grant `record`."""
        return cls(
            record.ti_id,
            record.dag_id,
            record.run_id,
            record.job,
            record.node,
            record.granted_at,
            record.task_id,
            record.map_index,
            record.worker,
        )


@dataclass(frozen=True)
class Granted:
    """A waiting task the pass admitted, with what it holds and the worker chosen for it."""

    task: WaitingTask
    admission: Admission
    worker: WorkerInfo | None = None


def bistro_marker(workload: Any) -> dict[str, Any] | None:
    """Return the ``bistro`` entry of a workload's executor_config, if it has one."""
    executor_config = getattr(workload.ti, "executor_config", None) or {}
    marker = executor_config.get("bistro") if isinstance(executor_config, dict) else None
    return marker if isinstance(marker, dict) and marker.get("job") else None


class AdmissionController:
    """The ledger and the Bistro pass over waiting task instances.

    :param live: the config and forest to admit against; None admits nothing of Bistro jobs.
    :param worker_name: this machine as a node of the ``worker`` level.
    """

    def __init__(
        self,
        live: LiveForest | None,
        *,
        worker_name: str | None = None,
        workers: WorkerPool | None = None,
    ):
        self.live = live
        self.worker_name = worker_name or socket.gethostname()
        self.workers = workers
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self.rng = random.Random()
        self.overrides: dict[NodeKey, dict[str, int]] = {}
        self.ledger = Ledger(self._capacity_of)
        self.waiting: dict[Any, WaitingTask] = {}
        self.running: dict[str, RunningTask] = {}
        self.lost_tasks: list[RunningTask] = []
        """Tasks released because their worker was lost; their grant rows are still to go."""
        self.full_pass_interval = 5.0
        self._dirty = True
        self._seen: tuple[Any, Any] = (None, None)
        # What changed since the last pass, for scoped passes (`run_pass(scoped=True)`).
        self._full = True
        self._last_full = 0.0
        self._new: set[Any] = set()
        self._freed: set[str] = set()
        self._worker_freed = False
        self._worker_blocked: set[Any] = set()
        self._index: dict[str, set[Any]] = {}
        """Node name to the keys of waiting tasks whose possible paths include it."""
        self._indexed: dict[Any, frozenset[str]] = {}
        self.last_pass_tasks = 0
        """How many waiting tasks the last pass looked at."""
        self._names: dict[tuple[str, str, str], list[str]] = {}
        self._paths: dict[tuple[str, str, str], dict[str, list[str]]] = {}

    # -- capacity -------------------------------------------------------------------------

    def _capacity_of(self, key: NodeKey) -> dict[str, int]:
        config = self.live.config if self.live else None
        if config is None:
            return {}
        if key[0] == WORKER_LEVEL and self.workers is not None:
            limits = self.workers.capacity_of(key[1])
            limits.update(self.overrides.get(key, {}))
            return limits
        forest = self.live.forest if self.live else None
        node_capacity = _node_capacities(forest, config, key)
        return dict(level_capacity(config.settings, node_capacity, self.overrides)(key))

    # -- classification -------------------------------------------------------------------

    def resolve(self, workloads: Iterable[Any], session: Session) -> list[Any]:
        """Resolve new Bistro workloads to their nodes; return those to run without admission.

        Those are workloads of other DAGs, and Bistro workloads whose map index has no node
        in the run's node list. A workload whose run's node list cannot be read yet stays
        unresolved and is retried on the next call.
        """
        plain = []
        for workload in workloads:
            key = workload.ti.key
            if key in self.waiting:
                continue
            marker = bistro_marker(workload)
            if marker is None:
                plain.append(workload)
                continue
            self._define_dag_job(marker)
            try:
                task = self._resolve_one(workload, marker, session)
            except _NoNodeForMapIndex:
                plain.append(workload)
                continue
            if task is not None:
                self.waiting[key] = task
                self._index_task(key, task)
                self._new.add(key)
                self._dirty = True
        return plain

    def _define_dag_job(self, marker: dict[str, Any]) -> None:
        """Tell the live config about a job that its DAG file defines (``job_config``)."""
        definition = marker.get("job_config")
        if isinstance(definition, dict) and self.live is not None:
            self.live.define_job(str(marker["job"]), definition, str(marker.get("defined_in", "")))

    def mark_dirty(self) -> None:
        """Ask for a full pass at the next opportunity: capacity or workers changed."""
        self._dirty = True
        self._full = True

    def pass_due(self, now: float) -> bool:
        """Return True if something changed since the last pass, or it is time for one."""
        live = self.live
        seen = (live.config, live.forest) if live else (None, None)
        if seen[0] is not self._seen[0] or seen[1] is not self._seen[1]:
            self._seen = seen
            self._reindex()
            self.mark_dirty()
        if now - self._last_full >= self.full_pass_interval:
            self._full = True
        return self._dirty or self._full

    # -- what a scoped pass looks at ------------------------------------------------------

    def _index_task(self, key: Any, task: WaitingTask) -> None:
        names = frozenset(self._possible_path_names(task))
        self._indexed[key] = names
        for name in names:
            self._index.setdefault(name, set()).add(key)

    def _unindex_task(self, key: Any) -> None:
        for name in self._indexed.pop(key, ()):
            keys = self._index.get(name)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._index[name]
        self._new.discard(key)
        self._worker_blocked.discard(key)

    def _reindex(self) -> None:
        """Index every waiting task again, after the config or the forest changed."""
        self._index = {}
        self._indexed = {}
        for key, task in self.waiting.items():
            self._index_task(key, task)

    def _possible_path_names(self, task: WaitingTask) -> set[str]:
        """Return the names of every node on any path the task may run on: its recorded
        path, and the paths of its node's replicas in the live forest."""
        names = {task.node, *task.recorded_path}
        config = self.live.config if self.live else None
        forest = self.live.forest if self.live else None
        job = config.jobs.get(task.job) if config else None
        if config is None or forest is None or job is None:
            return names
        settings = config.settings
        level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
        for node in forest.replica_tuple(level, task.node):
            names.update(node.path_names())
        return names

    def _note_freed(self, holdings: Holdings | None) -> None:
        """Remember the nodes whose room a released holder gave back."""
        if not holdings:
            return
        self._dirty = True
        for level, name in holdings:
            if level == WORKER_LEVEL:
                self._worker_freed = True
            else:
                self._freed.add(name)

    def _scope(self) -> list[WaitingTask] | None:
        """Return the waiting tasks that can start after the changes since the last pass,
        or None when every waiting task needs a look.

        When a pass tries every candidate, each one left waiting does not fit, and room only
        shrinks during a pass. Afterwards a task can start only if a node on one of its
        possible paths got room back, a worker got room back while the task's path fitted
        and no worker did, or it is new. A new task brings the tasks on its own node in,
        so that an earlier run's task on that node still goes first.
        """
        if self._full:
            return None
        keys = set(self._new)
        for key in self._new:
            task = self.waiting.get(key)
            if task is not None:
                keys.update(self._index.get(task.node, ()))
        for name in self._freed:
            keys.update(self._index.get(name, ()))
        if self._worker_freed:
            keys.update(self._worker_blocked)
        return [self.waiting[key] for key in keys if key in self.waiting]

    def _clear_changes(self) -> None:
        self._full = False
        self._new.clear()
        self._freed.clear()
        self._worker_freed = False

    def _resolve_one(
        self, workload: Any, marker: dict[str, Any], session: Session
    ) -> WaitingTask | None:
        ti = workload.ti
        snapshot = str(marker.get("snapshot_task", "snapshot_nodes"))
        run_key = (ti.dag_id, ti.run_id, snapshot)
        names = self._names.get(run_key)
        if names is None:
            names, paths = _read_snapshot(session, ti.dag_id, ti.run_id, snapshot)
            if names is None:
                log.warning("No node list recorded for %s/%s yet; retrying", ti.dag_id, ti.run_id)
                return None
            self._names[run_key] = names
            self._paths[run_key] = paths
        if not 0 <= ti.map_index < len(names):
            log.error(
                "Task %s map index %d is outside the run's %d nodes; admitting it without "
                "resources",
                ti.key,
                ti.map_index,
                len(names),
            )
            raise _NoNodeForMapIndex
        node = names[ti.map_index]
        path = tuple(self._paths.get(run_key, {}).get(node, ()))
        return WaitingTask(workload, str(marker["job"]), node, snapshot, path)

    def forget(self, key: Any) -> WaitingTask | None:
        self._unindex_task(key)
        return self.waiting.pop(key, None)

    def set_workers(self, workers: list[WorkerInfo]) -> None:
        """Replace the live workers; a changed set or config triggers a pass."""
        if self.workers is None:
            return
        config = self.live.config if self.live else None
        if config is not None and self.workers.settings is not config.settings:
            self.workers.update_settings(config.settings)
            self.mark_dirty()
        if list(self.workers.workers.values()) != sorted(workers, key=lambda w: w.name):
            lost = set(self.workers.workers) - {worker.name for worker in workers}
            self.workers.set_workers(sorted(workers, key=lambda w: w.name))
            self.mark_dirty()
            for task in [t for t in self.running.values() if t.worker in lost]:
                log.warning(
                    "Worker %s is gone; releasing what task %s (%s on %s) held",
                    task.worker,
                    task.ti_id,
                    task.job,
                    task.node,
                )
                self.release(task.ti_id)
                self.lost_tasks.append(task)

    def forget_finished_runs(self) -> None:
        """Drop cached node lists of runs that have no waiting task left."""
        active = {(t.workload.ti.dag_id, t.workload.ti.run_id, t.snapshot_task) for t in self.waiting.values()}
        for key in [key for key in self._names if key not in active]:
            self._names.pop(key, None)
            self._paths.pop(key, None)

    # -- the pass -------------------------------------------------------------------------

    def run_pass(
        self, free_slots: int, statuses: dict[tuple[str, str], Any], *, scoped: bool = False
    ) -> list[Granted]:
        """Admit waiting tasks by the configured policy while worker slots are free.

        :param scoped: look only at the waiting tasks that the changes since the last pass
            can let start (see `_scope`). A full pass still runs after the config, nodes,
            workers or capacity changed, after a pass that stopped early, and at least
            every `full_pass_interval` seconds. Without it, every waiting task is tried.
        """
        config = self.live.config if self.live else None
        if config is None or not self.waiting:
            return []
        if not config.settings.enabled:
            for task in self.waiting.values():
                task.reason = "scheduling is disabled (bistro_settings.enabled is false)"
            return []
        now = time.time()
        scope = self._scope() if scoped else None
        self._dirty = False
        if scope is None:
            self._last_full = now
        self._clear_changes()
        if scope is not None and not scope:
            return []
        forest = self.live.forest if self.live else None
        entries, by_task = self._build_candidates(config, forest, statuses, scope)
        granted: list[Granted] = []
        slots = [free_slots]
        chosen: dict[tuple[str, str], WorkerInfo] = {}
        pool = self.workers

        def start_hook(job: Job, candidate: Candidate, node: Node, needs: Holdings) -> StartResult:
            if slots[0] <= 0:
                return StartResult.STOP
            if pool is not None:
                if not pool.workers:
                    return StartResult.STOP
                choice = pool.choose(job, node, self.ledger)
                if choice is None:
                    return StartResult.DID_NOT_RUN
                worker, holding = choice
                needs.update(holding)
                chosen[(job.name, candidate.node)] = worker
            slots[0] -= 1
            return StartResult.RAN

        result = admit_pass(
            config.settings,
            entries,
            self.ledger,
            self.rng,
            start_hook=start_hook,
            holder_of=lambda job, node: by_task[(job, node)].ti_id,
        )
        for admission in result.started:
            key = (admission.job, admission.node)
            granted.append(Granted(by_task[key], admission, chosen.get(key)))
        for key, reason in result.waiting.items():
            task = by_task.get(key)
            if task is None:
                continue
            task.reason = reason
            if key not in result.blockers and reason == "no worker available":
                self._worker_blocked.add(task.workload.ti.key)
            else:
                self._worker_blocked.discard(task.workload.ti.key)
        if result.stopped_early:
            # Untried candidates may fit, so the next pass must look at every task.
            self._full = True
        return granted

    def _build_candidates(
        self,
        config: Config,
        forest: Forest | None,
        statuses: dict[tuple[str, str], Any],
        tasks: list[WaitingTask] | None = None,
    ) -> tuple[list[JobCandidates[Candidate]], dict[tuple[str, str], WaitingTask]]:
        settings = config.settings
        by_job: dict[str, dict[str, WaitingTask]] = {}
        running = {(task.job, task.node) for task in self.running.values()}
        considered = self.waiting.values() if tasks is None else tasks
        self.last_pass_tasks = len(considered)
        for task in sorted(considered, key=lambda item: item.since):
            if task.ti_id in self.ledger:
                # A rescheduled try keeps its id; wait until the previous try's end is seen.
                task.reason = "the previous attempt of this task instance has not ended yet"
                continue
            if (task.job, task.node) in running:
                # Bistro never runs one (job, node) twice at once, even across DAG runs.
                task.reason = f"{task.job} is already running on {task.node} in another run"
                continue
            if task.node in by_job.get(task.job, {}):
                task.reason = f"an earlier run's task for {task.job} on {task.node} goes first"
                continue
            job = config.jobs.get(task.job)
            if job is None or not job.can_run:
                task.reason = _job_problem(task.job, job)
                continue
            status = statuses.get((task.job, task.node))
            if job.continuous and status is not None and status.kind == "done":
                # Dropped (skipped) at the next state sync; never run a done node again.
                # NOTE: in the 300 s churn soak test 10 of 753 nodes still ran twice,
                # because the end of their first run was never recorded; cause not found.
                task.reason = f"{task.job} is already done on {task.node}"
                continue
            if not _dependencies_done(job, task.node, statuses, config):
                task.reason = f"dependency not done: {', '.join(job.depends_on)}"
                continue
            by_job.setdefault(task.job, {})[task.node] = task
        entries = []
        by_task: dict[tuple[str, str], WaitingTask] = {}
        jobs = list(by_job)
        self.rng.shuffle(jobs)
        for name in jobs:
            job = config.jobs[name]
            level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
            candidates = []
            names = _fetch_order(list(by_job[name]), forest, level)
            for node_name in order_nodes(names, settings.node_order, self.rng):
                task = by_job[name][node_name]
                replicas = _replicas(forest, level, task, settings.levels)
                if not replicas:
                    task.reason = "node disabled"
                    continue
                candidates.append(Candidate(node_name, replicas))
                by_task[(name, node_name)] = task
            entries.append(JobCandidates(job, candidates))
        return entries, by_task

    # -- persistence ----------------------------------------------------------------------

    def commit(self, granted: list[Granted], session: Session, statuses: dict[Any, Any]) -> None:
        """Write the grants and the tasks' admission records; the caller commits."""
        from airflow.models.xcom import XComModel

        config = self.live.config if self.live else None
        now = time.time()
        for item in granted:
            ti = item.task.workload.ti
            admission = item.admission
            repository.add_grant(
                session,
                repository.GrantRecord(
                    ti_id=str(ti.id),
                    dag_id=ti.dag_id,
                    task_id=ti.task_id,
                    run_id=ti.run_id,
                    map_index=ti.map_index,
                    try_number=ti.try_number,
                    job=admission.job,
                    node=admission.node,
                    path=admission.path,
                    holdings=admission.holdings,
                    worker=item.worker.name if item.worker else self.worker_name,
                    granted_at=now,
                    owner=self.owner,
                ),
            )
            self.running[str(ti.id)] = RunningTask(
                str(ti.id),
                ti.dag_id,
                ti.run_id,
                admission.job,
                admission.node,
                now,
                ti.task_id,
                ti.map_index,
                item.worker.name if item.worker else self.worker_name,
            )
            record = self._admission_record(item, config, statuses)
            XComModel.set(
                key=admission_key(ti.map_index),
                value=record,
                dag_id=ti.dag_id,
                task_id=item.task.snapshot_task,
                run_id=ti.run_id,
                map_index=-1,
                serialize=False,
                session=session,
            )

    def _admission_record(
        self, item: Granted, config: Config | None, statuses: dict[Any, Any]
    ) -> dict[str, Any]:
        job = config.jobs[item.admission.job] if config else None
        previous = statuses.get((item.admission.job, item.admission.node))
        return {
            "job": item.admission.job,
            "node": item.admission.node,
            "path": list(item.admission.path),
            "levels": list(config.settings.levels) if config else [],
            "resources_by_node": {
                name: dict(amounts) for (_level, name), amounts in item.admission.holdings.items()
            },
            "config": job.config if job else {},
            "command": list(job.command) if job else [],
            "backoff": {
                "delays": list(job.backoff.delays) if job else [],
                "repeat": job.backoff.repeat if job else False,
            },
            "prev_status": _status_json(previous),
            "worker_node": item.worker.name if item.worker else self.worker_name,
            "worker_host": item.worker.host if item.worker else socket.gethostname(),
            "granted_at": time.time(),
        }

    def rollback(self, granted: list[Granted]) -> None:
        """Give back resources of grants whose commit failed; the tasks keep waiting."""
        for item in granted:
            self._note_freed(self.ledger.release(item.task.ti_id))
            self.running.pop(item.task.ti_id, None)

    def rebuild(self, session: Session) -> list[str]:
        """Load grants of tasks still queued or running; return ids of stale grants."""

        records = repository.load_grants(session)
        if not records:
            return []
        states = repository.ti_states(session, [record.ti_id for record in records])
        live = [r.ti_id for r in records if states.get(r.ti_id) in ("queued", "running")]
        self._define_dag_jobs_of(session, live)
        stale = []
        for record in records:
            state = states.get(record.ti_id)
            if state in ("queued", "running"):
                self.ledger.force_acquire(record.ti_id, record.holdings)
                self.running[record.ti_id] = RunningTask.from_grant(record)
            else:
                stale.append(record.ti_id)
        log.info(
            "Rebuilt the Bistro ledger: %d grants of live tasks, %d stale grants removed",
            len(records) - len(stale),
            len(stale),
        )
        return stale

    def _define_dag_jobs_of(self, session: Session, ti_ids: list[str]) -> None:
        """Learn the DAG-defined jobs of tasks that survived a restart from their markers.

        Without this, a running task of such a job would look like an orphan of a deleted
        job until a new task of the job is queued.
        """
        from airflow.models.taskinstance import TaskInstance

        ids = repository.ti_uuids(ti_ids)
        if not ids or self.live is None:
            return
        query = select(TaskInstance.executor_config).where(TaskInstance.id.in_(ids))
        for executor_config in session.scalars(query):
            marker = executor_config.get("bistro") if isinstance(executor_config, dict) else None
            if isinstance(marker, dict) and marker.get("job"):
                self._define_dag_job(marker)

    def release(self, ti_id: str) -> RunningTask | None:
        """Give back what a task holds when its try ended; return the task if it held any."""
        task = self.running.pop(ti_id, None)
        holdings = self.ledger.release(ti_id)
        self._note_freed(holdings)
        return task if holdings is not None else None

    def release_foreign(self, record: repository.GrantRecord) -> RunningTask:
        """Give back what another scheduler's task held; return it as an ended task.

        A grant learned from the database (`sync_ledger`) has no entry in `running`, so
        the task is rebuilt from its grant row for recording its Bistro status.
        """
        task = self.running.pop(record.ti_id, None)
        self._note_freed(self.ledger.release(record.ti_id))
        return task or RunningTask.from_grant(record)

    def sync_ledger(self, records: list[repository.GrantRecord]) -> None:
        """Make the in-memory ledger equal the grants in the database.

        With several schedulers sharing one database, each admits against the grants of
        all of them; the caller holds the admission lock while it reads and writes.
        """
        wanted = {record.ti_id: record for record in records}
        for holder in list(self.ledger.holders()):
            if holder not in wanted:
                self._note_freed(self.ledger.release(holder))
        for ti_id, record in wanted.items():
            if ti_id not in self.ledger:
                self.ledger.force_acquire(ti_id, record.holdings)

    def waiting_reasons(self) -> dict[tuple[str, str], str]:
        return {(task.job, task.node): task.reason for task in self.waiting.values()}


class _NoNodeForMapIndex(Exception):
    """Raised when a workload's map index has no node in its run's node list."""


def _fetch_order(names: list[str], forest: Forest | None, level: int) -> list[str]:
    """Sort node names by their position in the forest's fetch order, unknown names last."""
    if forest is None:
        return names
    position = {name: index for index, name in enumerate(forest.distinct_names(level))}
    return sorted(names, key=lambda name: position.get(name, len(position)))


def _job_problem(name: str, job: Job | None) -> str:
    if job is None:
        return f"job {name!r} is not in the current config"
    if job.errors:
        return f"job {name!r} has config errors: {job.errors[0]}"
    return f"job {name!r} is disabled"


def _dependencies_done(
    job: Job, node: str, statuses: dict[tuple[str, str], Any], config: Config
) -> bool:
    for dependency in job.depends_on:
        if dependency not in config.jobs:
            return False
        status = statuses.get((dependency, node))
        if status is None or status.kind != "done":
            return False
    return True


def _replicas(
    forest: Forest | None, level: int, task: WaitingTask, levels: tuple[str, ...]
) -> tuple[Node, ...]:
    """Return the usable paths of the task's node: its replicas in the current forest, or
    the path recorded in the run's snapshot when the node is not in the forest."""
    if forest is not None:
        replicas = forest.replicas(level, task.node)
        if replicas:
            return tuple(node for node in replicas if node.usable())
    names = task.recorded_path or (task.node,)
    parent: Node | None = None
    start = level - len(names) + 1
    for offset, name in enumerate(names):
        parent = Node(name, max(start + offset, 0), parent)
    return (parent,) if parent is not None else ()


def _node_capacities(
    forest: Forest | None, config: Config, key: NodeKey
) -> dict[NodeKey, dict[str, int]] | None:
    if forest is None:
        return None
    level_name, name = key
    try:
        level = forest.level_index(level_name)
    except KeyError:
        return None
    for node in forest.replicas(level, name):
        if node.capacity:
            return {key: dict(node.capacity)}
    return None


def _status_json(status: Any) -> dict[str, Any] | None:
    """Return a stored status as Bistro's `prev_status` JSON."""
    if status is None:
        return None
    return TaskStatus(status.kind, status.time, status.backoff, status.data or None).to_json()


def _read_snapshot(
    session: Session, dag_id: str, run_id: str, task_id: str
) -> tuple[list[str] | None, dict[str, list[str]]]:
    """Read the node names and paths that the run's snapshot task recorded."""
    from airflow.models.xcom import XComModel

    rows = session.execute(
        select(XComModel.key, XComModel.value).where(
            XComModel.dag_id == dag_id,
            XComModel.run_id == run_id,
            XComModel.task_id == task_id,
            XComModel.map_index == -1,
            XComModel.key.in_(["return_value", PATHS_KEY]),
        )
    ).all()
    values = {key: _decode_xcom(value) for key, value in rows}
    names = values.get("return_value")
    paths = values.get(PATHS_KEY) or {}
    if not isinstance(names, list):
        return None, {}
    return [str(name) for name in names], paths if isinstance(paths, dict) else {}


def _decode_xcom(value: Any) -> Any:
    from airflow.models.xcom import XComModel

    decoded = XComModel.deserialize_value(_Row(value))
    if isinstance(decoded, str):
        try:
            return json.loads(decoded)
        except ValueError:
            return decoded
    return decoded


@dataclass
class _Row:
    """The shape `XComModel.deserialize_value` reads: an object with a `value` attribute."""

    value: Any

