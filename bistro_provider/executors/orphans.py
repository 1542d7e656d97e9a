"""Orphans: running tasks whose node or job left the config, and waiting tasks to drop.

A running task is an orphan when its job is gone, disabled or invalid, or when no enabled
replica of its node (with enabled ancestors) is left in the current forest. An orphan keeps
its resources; after `kill_orphan_tasks_after_sec` (the job's, else the global setting;
unset means never) it is stopped through Airflow by setting its task instance to SKIPPED,
which makes Airflow's task supervisor end the process at its next heartbeat. If the node or
job comes back first, the pending stop is cancelled.

Waiting tasks are dropped (SKIPPED, with a note) when their node is no longer in the forest,
and, for continuous jobs, when their (job, node) is already done: neither counts as a failure
or blocks the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from bistro_provider.core.forest import Forest
from bistro_provider.core.model import Config
from bistro_provider.executors.admission import AdmissionController, RunningTask, WaitingTask

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StopRequest:
    """A task instance to stop through Airflow, and the note explaining why."""

    ti_id: str
    note: str
    node: str = ""


def orphan_reason(task: RunningTask, config: Config, forest: Forest) -> str | None:
    """Return why `task` is an orphan, or None if its job and node are still valid."""
    job = config.jobs.get(task.job)
    if job is None:
        return f"job {task.job!r} was deleted from the config"
    if not job.enabled:
        return f"job {task.job!r} was disabled"
    if job.errors:
        return f"job {task.job!r} has config errors: {job.errors[0]}"
    settings = config.settings
    level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
    replicas = forest.replicas(level, task.node)
    if not replicas:
        return f"node {task.node!r} is no longer in the node list"
    if not any(node.usable() for node in replicas):
        return f"node {task.node!r} or one of its ancestors is disabled"
    return None


class OrphanTracker:
    """Remembers when each orphan was first seen and when it is due to be stopped."""

    def __init__(self) -> None:
        self._kill_at: dict[str, float | None] = {}

    def scan(self, admission: AdmissionController, now: float) -> list[StopRequest]:
        """Return the orphans whose delay has passed; cancel timers of recovered tasks."""
        live = admission.live
        if live is None or live.config is None or live.forest is None:
            return []
        config, forest = live.config, live.forest
        due = []
        for ti_id, task in list(admission.running.items()):
            reason = orphan_reason(task, config, forest)
            if reason is None:
                if self._kill_at.pop(ti_id, None) is not None:
                    log.info("Task %s on %s is no longer an orphan; stop cancelled", ti_id, task.node)
                continue
            if ti_id not in self._kill_at:
                delay = _kill_delay(config, task.job)
                self._kill_at[ti_id] = None if delay is None else now + delay
                log.warning(
                    "Task %s (%s on %s) is an orphan: %s; %s",
                    ti_id,
                    task.job,
                    task.node,
                    reason,
                    "it keeps running (kill_orphan_tasks_after_sec is not set)"
                    if delay is None
                    else f"stopping it in {delay:g} s unless that changes",
                )
            kill_at = self._kill_at[ti_id]
            if kill_at is not None and kill_at <= now:
                due.append(StopRequest(ti_id, f"Bistro: stopped as an orphan: {reason}", task.node))
                self._kill_at[ti_id] = None
        for ti_id in list(self._kill_at):
            if ti_id not in admission.running:
                del self._kill_at[ti_id]
        return due


def _kill_delay(config: Config, job_name: str) -> float | None:
    job = config.jobs.get(job_name)
    if job is not None and job.kill_orphan_tasks_after_sec is not None:
        return job.kill_orphan_tasks_after_sec
    return config.settings.kill_orphan_tasks_after_sec


def waiting_to_drop(
    admission: AdmissionController, statuses: dict[tuple[str, str], Any]
) -> list[tuple[WaitingTask, str]]:
    """Return waiting tasks whose node left the forest, or that a continuous job already did."""
    live = admission.live
    if live is None or live.config is None or live.forest is None:
        return []
    config, forest = live.config, live.forest
    settings = config.settings
    drops = []
    for task in admission.waiting.values():
        job = config.jobs.get(task.job)
        if job is None:
            continue
        level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
        if not forest.replicas(level, task.node):
            drops.append((task, f"Bistro: node {task.node!r} is no longer in the node list"))
            continue
        status = statuses.get((task.job, task.node))
        if getattr(job, "continuous", False) and status is not None and status.kind == "done":
            drops.append((task, f"Bistro: {task.job} is already done on {task.node}"))
    return drops


def stop_task_instances(session: Any, requests: list[StopRequest]) -> list[str]:
    """Set each task instance to SKIPPED with a note; return the ids that were changed."""
    import uuid

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.state import TaskInstanceState

    changed = []
    for request in requests:
        ti = session.get(TaskInstance, uuid.UUID(request.ti_id))
        if ti is None or ti.state in (TaskInstanceState.SUCCESS, TaskInstanceState.SKIPPED):
            continue
        ti.set_state(TaskInstanceState.SKIPPED, session=session)
        ti.note = request.note[:1000]
        if request.node and ti._rendered_map_index is None:
            # A task skipped before it ran never rendered its label; show the node anyway.
            ti._rendered_map_index = request.node[:250]
        changed.append(request.ti_id)
        log.warning("Set task instance %s to skipped: %s", request.ti_id, request.note)
    return changed
