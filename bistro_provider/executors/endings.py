"""What happens when an admitted task's try ends: release, then record its Bistro status.

Resources are released in memory at once, so the next pass can use them; the grant row is
deleted and the (job, node) status written in one transaction afterwards. The status comes
from the ``bistro_status`` XCom the task pushed; a task that ended without one (killed,
crashed before reporting) gets a status derived from its Airflow state.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from sqlalchemy import select

from bistro_provider.executors.admission import (
    TERMINAL_STATUS_FALLBACK,
    AdmissionController,
    RunningTask,
)
from bistro_provider.core.status import TaskStatus
from bistro_provider.operators.job import STATUS_KEY
from bistro_provider.store import repository

log = logging.getLogger(__name__)


def record_endings(
    admission: AdmissionController, ended: list[tuple[Any, Any, str | None]]
) -> list[RunningTask]:
    """Release the resources of ended tries and record each Bistro task's status.

    :return: the tasks whose status could not be written; pass them to `retry_endings`.
    """
    tasks = []
    for key, state, ti_id in ended:
        task = admission.release(ti_id) if ti_id else None
        if task is not None:
            tasks.append(task)
            log.info("Released resources of %s (executor state %s)", key, state)
    return retry_endings(tasks)


def retry_endings(tasks: list[RunningTask]) -> list[RunningTask]:
    """Write the statuses of ended tasks and delete their grants; return those that failed.

    Until the write succeeds the grant row stays, so every pass keeps counting the
    resources as held; that errs on the safe side. A lost status would let a continuous
    job run a done node again.
    """
    if not tasks:
        return []
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            _record(session, tasks)
    except Exception:
        log.exception("Could not record the end of %d Bistro tasks; will retry", len(tasks))
        return tasks
    return []


def _record(session: Any, tasks: list[RunningTask]) -> None:
    from airflow.models.xcom import XComModel

    ti_ids = [task.ti_id for task in tasks]
    states = repository.ti_states(session, ti_ids)
    for task in tasks:
        raw = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == task.dag_id,
                XComModel.task_id == task.task_id,
                XComModel.run_id == task.run_id,
                XComModel.map_index == task.map_index,
                XComModel.key == STATUS_KEY,
            )
        )
        status = _status_from(raw, states.get(task.ti_id))
        repository.put_status(
            session, task.job, task.node, status, dag_id=task.dag_id, run_id=task.run_id
        )
    repository.delete_grants(session, ti_ids)


def _status_from(raw: Any, ti_state: Any) -> repository.StoredStatus:
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
    if isinstance(value, dict):
        try:
            status = TaskStatus.from_json(value)
        except ValueError:
            log.warning("Ignoring an invalid bistro_status XCom: %r", value)
        else:
            return repository.StoredStatus(status.kind, status.time, status.backoff, status.data)
    state = str(getattr(ti_state, "value", ti_state) or "")
    kind = TERMINAL_STATUS_FALLBACK.get(state, "error_backoff")
    return repository.StoredStatus(
        kind=kind,
        time=time.time(),
        data={"exception": f"task ended without a Bistro status (Airflow state {state or 'none'})"},
    )

