"""Bistro's resource-forest admission in front of any Airflow executor.

`BistroAdmissionMixin` goes before an executor class in the bases (LocalExecutor for the
embedded default, CeleryExecutor for the production path) and decides which queued task
instances that executor may run now.

How tasks wait: Airflow queues a task instance here, and it stays in `queued_tasks` (QUEUED
in the database) until a pass admits it. A pass runs the Bistro policy over every waiting
task that could start, not only the highest-priority few, so a task that fits never waits
behind tasks that do not. After a pass that tried every task, the next one looks only at
tasks that an ending or an arrival can let start (`AdmissionController.run_pass`). How many tasks may wait (`[bistro] max_waiting_tasks`) and how many
worker processes run them (`[bistro] worker_processes`) are separate settings, and waiting
tasks occupy no slot, so they never use up `[core] parallelism` for other DAGs.

Tasks of other DAGs (plain tasks) and callbacks go through exactly as the executor class
would send them: as many per heartbeat as its open slots, counted as it counts them.
LocalExecutor in Airflow 3.3 counts nothing it has handed to its worker processes, so plain
tasks queue there without a cap and a process that finishes one starts the next at once.
Admitted Bistro tasks are capped apart from them: at most `parallelism + prefetch` are
handed over and not yet ended, so few of them hold resources while waiting for a process.

Crash windows: a grant is committed to the metadata database before its task is handed to
a worker process, and removed only after the executor sees the try end. A scheduler that
dies in between leaves the grant behind; the next scheduler keeps it as long as the task
instance is queued or running, so a restart never over-allocates.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from airflow.utils.session import create_session
from airflow.utils.state import TaskInstanceState
from sqlalchemy.exc import SQLAlchemyError

from bistro_provider.config_store import configured_location, open_config_source
from bistro_provider.core.live import LiveForest, RefreshIntervals
from bistro_provider.executors.admission import (
    AdmissionController,
    Granted,
    RunningTask,
    WaitingTask,
)
from bistro_provider.executors.endings import record_endings, retry_endings
from bistro_provider.executors.orphans import (
    OrphanTracker,
    StopRequest,
    stop_task_instances,
    waiting_to_drop,
)
from bistro_provider.executors.publisher import StatePublisher
from bistro_provider.core.workers import WorkerInfo, WorkerPool
from bistro_provider.options import BistroOptions
from bistro_provider.store import repository

log = logging.getLogger(__name__)

STOP_BATCH = 50
"""Task instances set to skipped per transaction."""
STOP_PER_SYNC = 500
"""Waiting task instances dropped per state sync; the rest wait for the next one."""

RUNNING_STATES = (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED)
QUEUED = TaskInstanceState.QUEUED


class BistroAdmissionMixin:
    """Admission for an executor class that follows it in the bases.

    Tasks of Bistro job DAGs wait for resources; any other task runs as soon as a slot is
    free. Subclasses call `_init_bistro(options)` from `__init__` after the executor's own
    `__init__`, and provide `_current_workers()`.
    """

    parallelism: int
    queued_tasks: dict[Any, Any]
    queued_callbacks: dict[Any, Any]
    queued_connection_tests: dict[Any, Any]

    def _init_bistro(self, options: BistroOptions) -> None:
        self.options = options
        live = None
        location = configured_location(self.options)
        if location:
            live = LiveForest(
                open_config_source(location),
                RefreshIntervals(
                    config_update=self.options.config_update_interval,
                    nodes_update=self.options.nodes_update_interval,
                    nodes_retry=self.options.nodes_retry_interval,
                    script_timeout=self.options.script_timeout,
                    max_deletion_fraction=self.options.max_node_deletion_fraction,
                ),
            )
        self.admission = AdmissionController(live, workers=WorkerPool(_empty_settings()))
        self.admission.full_pass_interval = self.options.full_pass_interval
        self.prefetch = 0
        """Number of admitted tasks handed over beyond `parallelism`. They wait in the worker
        pool's queue."""
        self._dispatched: dict[Any, str] = {}
        """Workloads handed to worker processes: key to task instance id ('' for others)."""
        self._admitted: set[Any] = set()
        """Keys in `_dispatched` of Bistro tasks that a pass admitted."""
        self._ended: list[tuple[Any, Any, str | None]] = []
        self._unrecorded: list[RunningTask] = []
        """Ended tasks whose status write failed; retried at the next sync."""
        self._next_reconcile = 0.0
        self._next_sync = 0.0
        self.publisher = StatePublisher(self.admission)
        self.orphans = OrphanTracker()
        self._vanished: set[str] = set()
        """Foreign grant holders whose task instance row was missing at the last check."""

    # -- capacity reported to the scheduler -----------------------------------------------

    @property
    def slots_occupied(self) -> int:
        """Count dispatched work only, so that waiting tasks do not use `[core] parallelism`.

        Plain tasks count as the executor class counts them (`running`, which LocalExecutor
        leaves empty). Admitted tasks count except the first `prefetch`: the scheduler then
        queues that many tasks beyond its parallelism, and they wait in the worker pool's
        queue for a process to finish its task.
        """
        plain = len(self.running - self._admitted)  # type: ignore[attr-defined]
        counted = max(0, len(self._admitted) - self.prefetch)
        return plain + counted + len(self.queued_callbacks) + len(self.queued_connection_tests)

    @property
    def slots_available(self) -> int:
        """Accept new tasks until `max_waiting_tasks` wait here, whatever runs."""
        waiting = len(self.queued_tasks) + len(self.queued_callbacks)
        return max(0, self.options.max_waiting_tasks - waiting)

    # -- lifecycle ------------------------------------------------------------------------

    def _current_workers(self) -> list[WorkerInfo]:
        """Return the workers that may run tasks now."""
        raise NotImplementedError

    def start(self) -> None:
        super().start()  # type: ignore[misc]
        with create_session() as session:
            repository.ensure_tables(session)
            _ensure_pool(self.options.pool, session)
            stale = self.admission.rebuild(session)
            repository.delete_grants(session, stale)
            self._refresh_overrides(session)
        if self.admission.live is None:
            log.warning(
                "No Bistro config: [bistro] config_file is not set and [bistro] config_source "
                "is file. Bistro job tasks wait until a config is set; other tasks run normally"
            )
        else:
            self.admission.live.poll(force=True)

    # -- admission ------------------------------------------------------------------------

    def trigger_tasks(self, open_slots: int) -> None:
        """Dispatch callbacks and plain tasks into `open_slots`, then admit Bistro tasks
        that fit while fewer than `parallelism + prefetch` admitted tasks are dispatched."""
        if self.admission.live is not None:
            self.admission.live.poll()
        self.admission.set_workers(self._current_workers())
        self._forget_dispatched_waiting()
        callbacks = list(self.queued_callbacks.values())[: max(open_slots, 0)]
        open_slots -= len(callbacks)
        if not self.queued_tasks:
            self._dispatch(callbacks, [])
            return
        plain: list[Any] = []
        granted: list[Granted] = []
        try:
            with create_session() as session:
                plain = self.admission.resolve(self._unresolved(), session)
                plain = sorted(plain, key=lambda w: -w.ti.priority_weight)[: max(open_slots, 0)]
                granted = self._admit(self._admission_room(), session)
        except SQLAlchemyError:
            # Grants committed before the error are dispatched below; every other task keeps
            # waiting here and the next heartbeat tries again.
            self._log_admission_failure()
        self._dispatch([*callbacks, *plain], granted)

    def _log_admission_failure(self) -> None:
        log.exception(
            "Bistro admission could not use the metadata database; %d tasks keep waiting "
            "and the pass is retried on the next heartbeat",
            len(self.admission.waiting),
        )

    def _admission_room(self) -> int:
        return self.parallelism + self.prefetch - len(self._admitted)

    def _admit_after_endings(self) -> None:
        """Admit waiting tasks into the room that tasks ended in this heartbeat freed.

        Airflow's heartbeat dispatches before it reads endings, so without this a freed
        slot would stay empty for a whole scheduler loop.
        """
        if not self.admission.waiting or self._admission_room() <= 0:
            return
        granted: list[Granted] = []
        try:
            with create_session() as session:
                granted = self._admit(self._admission_room(), session)
        except SQLAlchemyError:
            self._log_admission_failure()
        self._dispatch([], granted)

    def _forget_dispatched_waiting(self) -> None:
        """Drop waiting entries of task instances that are already dispatched.

        A key handed to a worker must never be admitted or skipped again before its end is
        seen; running it twice makes Airflow refuse the second start and fail the task.
        """
        for key in [key for key in self.admission.waiting if key in self._dispatched]:
            log.warning("Task %s is waiting and dispatched at once; keeping it dispatched", key)
            self.admission.forget(key)

    def _unresolved(self) -> list[Any]:
        """Return queued workloads not yet waiting, leaving out keys still dispatched: a try
        queued again before the end of the previous one was seen waits for that end."""
        waiting = self.admission.waiting
        return [
            w
            for key, w in self.queued_tasks.items()
            if key not in waiting and key not in self._dispatched
        ]

    def _admit(self, free: int, session: Any) -> list[Granted]:
        if free <= 0 or not self.admission.waiting:
            return []
        if not self.admission.pass_due(time.time()):
            return []
        jobs = {task.job for task in self.admission.waiting.values()}
        statuses = repository.load_statuses(session, jobs | _dependency_jobs(self.admission, jobs))
        # Read-check-write under one lock: the grants of every scheduler, then this pass.
        repository.lock_admission(session)
        records = self._drop_unseen_commits(repository.load_grants(session), session)
        self.admission.sync_ledger(records)
        scoped = self.options.incremental_admission
        granted = self.admission.run_pass(free, statuses, scoped=scoped)
        granted = self._drop_not_queued(granted, session)
        if not granted:
            # Ends the transaction, which releases the admission lock.
            session.commit()
            return []
        try:
            self.admission.commit(granted, session, statuses)
            session.commit()
        except Exception:
            # The tasks stay queued here and are tried again on the next heartbeat. Memory
            # is rolled back first, because the database rollback fails on a dropped
            # connection.
            self.admission.rollback(granted)
            log.exception("Could not record %d Bistro grants; will retry", len(granted))
            session.rollback()
            return []
        return granted

    def _drop_unseen_commits(
        self, records: list[repository.GrantRecord], session: Any
    ) -> list[repository.GrantRecord]:
        """Delete this process's grants of tasks that still wait here.

        Such a grant comes from a commit that raised although the database applied it (the
        connection dropped before the reply). Its task was rolled back to waiting, and the
        grant would otherwise block it for good.
        """
        waiting = {task.ti_id for task in self.admission.waiting.values()}
        unseen = {
            record.ti_id
            for record in records
            if record.owner == self.admission.owner
            and record.ti_id in waiting
            and record.ti_id not in self.admission.running
        }
        if not unseen:
            return records
        repository.delete_grants(session, unseen)
        log.warning(
            "Deleted %d grants left by a commit that raised after the database applied it: %s",
            len(unseen),
            sorted(unseen),
        )
        return [record for record in records if record.ti_id not in unseen]

    def _drop_not_queued(self, granted: list[Granted], session: Any) -> list[Granted]:
        """Give back what the pass granted to task instances that are no longer queued.

        A task instance leaves QUEUED while it waits here when someone marks its DAG run
        failed or success (Airflow then sets it to SKIPPED), so it must neither take
        resources nor start.
        """
        if not granted:
            return granted
        states = repository.ti_states(session, [item.task.ti_id for item in granted])
        stale = [item for item in granted if states.get(item.task.ti_id) != QUEUED]
        if not stale:
            return granted
        self.admission.rollback(stale)
        self._forget_waiting([item.task for item in stale], states)
        return [item for item in granted if item not in stale]

    def _drop_stale_waiting(self, session: Any) -> None:
        """Forget waiting tasks whose task instances are no longer queued, so they stop
        using `max_waiting_tasks` places."""
        waiting = list(self.admission.waiting.values())
        if not waiting:
            return
        states = repository.ti_states(session, [task.ti_id for task in waiting])
        self._forget_waiting([t for t in waiting if states.get(t.ti_id) != QUEUED], states)

    def _forget_waiting(self, tasks: list[WaitingTask], states: dict[str, Any]) -> None:
        for task in tasks:
            key = task.workload.ti.key
            self.admission.forget(key)
            self.queued_tasks.pop(key, None)
            log.info(
                "Dropped waiting task %s (%s on %s): its task instance is %s, no longer queued",
                key,
                task.job,
                task.node,
                states.get(task.ti_id) or "deleted",
            )

    def _dispatch(self, others: list[Any], granted: list[Granted]) -> None:
        workloads = list(others)
        for item in granted:
            workload = item.task.workload
            self.admission.forget(workload.ti.key)
            self._route(workload, item.worker)
            workloads.append(workload)
            self._admitted.add(workload.key)
            log.info(
                "Admitted %s of job %s on %s (holds %s)",
                workload.ti.key,
                item.admission.job,
                item.admission.node,
                item.admission.holdings,
            )
        if not workloads:
            return
        for workload in workloads:
            ti = getattr(workload, "ti", None)
            if ti is not None:
                # The scheduler minted this token when it queued the task; it expires after
                # [scheduler] task_queued_timeout, so a task that waited long needs a new one.
                workload.token = workload.generate_token(str(ti.id), self.jwt_generator)
            self._dispatched[workload.key] = str(ti.id) if ti is not None else ""
        self._process_workloads(workloads)

    def _route(self, workload: Any, worker: WorkerInfo | None) -> None:
        """Send `workload` to the chosen worker; the local executor has only one."""

    def try_adopt_task_instances(self, tis: Any) -> Any:
        """Keep the task instances that this executor runs or keeps waiting, and pass the
        rest to the executor class.

        Airflow marks a scheduler whose heartbeat is older than `[scheduler]
        scheduler_health_check_threshold` as failed, its own included after a long stall,
        and then offers that scheduler's queued and running task instances for adoption.
        A task instance reset here would run twice.
        """
        known = set(self._dispatched.values())
        known.update(str(workload.ti.id) for workload in self.queued_tasks.values())
        own = [ti for ti in tis if str(ti.id) in known]
        if own:
            log.warning(
                "Kept %d task instances offered for adoption that this executor runs or "
                "keeps waiting: %s",
                len(own),
                ", ".join(str(ti.id) for ti in own),
            )
        others = [ti for ti in tis if str(ti.id) not in known]
        return super().try_adopt_task_instances(others)  # type: ignore[misc]

    # -- endings --------------------------------------------------------------------------

    def change_state(self, key: Any, state: Any, info: Any = None, remove_running: bool = True):
        if state not in (TaskInstanceState.RUNNING, TaskInstanceState.QUEUED):
            self._ended.append((key, state, self._dispatched.pop(key, None)))
            self._admitted.discard(key)
        super().change_state(key, state, info, remove_running=remove_running)

    def sync(self) -> None:
        super().sync()
        if self._ended:
            ended, self._ended = self._ended, []
            self._unrecorded += record_endings(self.admission, ended)
            self._admit_after_endings()
        elif self._unrecorded:
            self._unrecorded = retry_endings(self._unrecorded)
        now = time.time()
        try:
            self._sync_state(now)
        except SQLAlchemyError:
            log.exception(
                "Bistro state sync could not use the metadata database; retrying in %g s",
                self.options.state_sync_interval,
            )

    def _sync_state(self, now: float) -> None:
        if now >= self._next_sync:
            self._next_sync = now + self.options.state_sync_interval
            self.admission.forget_finished_runs()
            lost = self._forget_lost_tasks()
            with create_session() as session:
                repository.delete_grants(session, lost)
                self._refresh_overrides(session)
                self._handle_orphans(session, now)
                self.publisher.publish(session)
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.options.grant_check_interval
            with create_session() as session:
                self._release_foreign_grants(session)
                self._drop_stale_waiting(session)

    def _forget_lost_tasks(self) -> list[str]:
        """Stop counting tasks of lost workers as dispatched; return their grant ids."""
        lost = {task.ti_id for task in self.admission.lost_tasks}
        self.admission.lost_tasks = []
        for key, ti_id in list(self._dispatched.items()):
            if ti_id in lost:
                del self._dispatched[key]
                self._admitted.discard(key)
        return sorted(lost)

    def _handle_orphans(self, session: Any, now: float) -> None:
        stops = self.orphans.scan(self.admission, now)
        if stops:
            stop_task_instances(session, stops)
        if not self.admission.waiting:
            return
        jobs = {task.job for task in self.admission.waiting.values()}
        statuses = repository.load_statuses(session, jobs)
        drops = [
            (task, note)
            for task, note in waiting_to_drop(self.admission, statuses)
            if task.workload.ti.key not in self._dispatched
        ]
        # Small transactions, and a bounded number per sync: on SQLite one long write
        # transaction blocks the api-server and the scheduler's own heartbeat.
        drops = drops[:STOP_PER_SYNC]
        for start in range(0, len(drops), STOP_BATCH):
            batch = drops[start : start + STOP_BATCH]
            stop_task_instances(
                session, [StopRequest(task.ti_id, note, task.node) for task, note in batch]
            )
            session.commit()
            for task, _note in batch:
                key = task.workload.ti.key
                self.admission.forget(key)
                self.queued_tasks.pop(key, None)

    def _refresh_overrides(self, session: Any) -> None:
        overrides = repository.load_capacity_overrides(session)
        if overrides != self.admission.overrides:
            self.admission.overrides = overrides
            self.admission.mark_dirty()

    def _release_foreign_grants(self, session: Any) -> None:
        """Release grants of tasks that another scheduler process admitted and that are no
        longer queued or running.

        The other scheduler may be gone (the grant survived a restart) or alive and not yet
        aware that its task ended. Either way the task's Bistro status is recorded here,
        from its grant row, before the grant is deleted: without it a continuous job would
        run a done node again.
        """
        ours = set(self._dispatched.values())
        foreign = [h for h in self.admission.ledger.holders() if h not in ours]
        if not foreign:
            return
        states = repository.ti_states(session, foreign)
        gone = [h for h in foreign if states.get(h) not in RUNNING_STATES]
        gone = self._after_one_more_check(gone, states)
        if not gone:
            return
        records = {r.ti_id: r for r in repository.load_grants(session) if r.ti_id in gone}
        ended = []
        for holder in gone:
            record = records.get(holder)
            if record is None:
                # Another scheduler deleted the row after recording the end itself.
                self.admission.release(holder)
            else:
                ended.append(self.admission.release_foreign(record))
        # A grant stays until its task's status is written, as for the tasks ended here.
        pending = {task.ti_id for task in self._unrecorded}
        self._unrecorded += [t for t in retry_endings(ended) if t.ti_id not in pending]
        log.info(
            "Released %d grants of tasks admitted by another scheduler process that are no "
            "longer running: %s",
            len(gone),
            ", ".join(f"{holder} ({states.get(holder) or 'deleted'})" for holder in gone),
        )

    def _after_one_more_check(self, gone: list[str], states: dict[str, Any]) -> list[str]:
        """Hold grants of vanished task instances until the next grant check.

        A task instance row disappears when a new scheduler resets the tasks of a dead one
        (the retry gets a new id). Its old process may still run until its next heartbeat
        is refused, so the grant stays for one more `grant_check_interval`. A grant whose
        task instance ended is released at once.
        """
        vanished = {holder for holder in gone if holder not in states}
        due = vanished & self._vanished
        self._vanished = vanished - due
        return [holder for holder in gone if holder not in vanished or holder in due]

    def end(self) -> None:
        super().end()
        if self._ended:
            record_endings(self.admission, self._ended)
            self._ended = []


def _empty_settings() -> Any:
    """Settings with no resources, used until the first config loads."""
    from bistro_provider.core.model import Settings

    return Settings(levels=("instance", "worker"), resources={"instance": {}, "worker": {}})


def _dependency_jobs(admission: AdmissionController, jobs: set[str]) -> set[str]:
    config = admission.live.config if admission.live else None
    if config is None:
        return set()
    return {dep for name in jobs if name in config.jobs for dep in config.jobs[name].depends_on}


def _ensure_pool(name: str, session: Any) -> None:
    """Create the job DAGs' pool with unlimited slots if it does not exist.

    Job tasks wait here in QUEUED state, which occupies pool slots; an unlimited pool keeps
    them from starving other DAGs' tasks in `default_pool`.
    """
    from airflow.models.pool import Pool

    if Pool.get_pool(name, session=session) is None:
        Pool.create_or_update_pool(
            name,
            slots=-1,
            description="Bistro job tasks; admission is done by BistroExecutor",
            include_deferred=False,
            session=session,
        )
        session.commit()
        log.info("Created pool %s with unlimited slots for Bistro job tasks", name)

