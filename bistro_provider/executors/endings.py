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

from bistro_provider.executors.admission import TERMINAL_STATUS_FALLBACK, AdmissionController
from bistro_provider.operators.job import STATUS_KEY
from bistro_provider.store import repository
from bistro_provider.store.models import Grant

log = logging.getLogger(__name__)


def record_endings(admission: AdmissionController, ended: list[tuple[Any, Any, str | None]]) -> None:
    """Release the resources of ended tries and record each Bistro task's status."""
    ti_ids = []
    for key, state, ti_id in ended:
        if ti_id and admission.release(ti_id):
            ti_ids.append(ti_id)
            log.info("Released resources of %s (executor state %s)", key, state)
    if not ti_ids:
        return
    from airflow.utils.session import create_session

    try:
        with create_session() as session:
            _record(session, ti_ids)
    except Exception:
        # The in-memory ledger is already correct; stale rows are removed by the next
        # restart's rebuild, which drops grants of tasks that are no longer running.
        log.exception("Could not record the end of %d Bistro tasks", len(ti_ids))


def _record(session: Any, ti_ids: list[str]) -> None:
    from airflow.models.xcom import XComModel

    grants = {row.ti_id: row for row in session.scalars(select(Grant).where(Grant.ti_id.in_(ti_ids)))}
    states = repository.ti_states(session, ti_ids)
    for ti_id, grant in grants.items():
        raw = session.scalar(
            select(XComModel.value).where(
                XComModel.dag_id == grant.dag_id,
                XComModel.task_id == grant.task_id,
                XComModel.run_id == grant.run_id,
                XComModel.map_index == grant.map_index,
                XComModel.key == STATUS_KEY,
            )
        )
        status = _status_from(raw, states.get(ti_id))
        repository.put_status(
            session, grant.job, grant.node, status, dag_id=grant.dag_id, run_id=grant.run_id
        )
    repository.delete_grants(session, ti_ids)


def _status_from(raw: Any, ti_state: Any) -> repository.StoredStatus:
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
    if isinstance(value, dict) and isinstance(value.get("kind"), str):
        return repository.StoredStatus(
            kind=value["kind"],
            time=float(value.get("time") or time.time()),
            backoff=int(value.get("backoff") or 0),
            data=value.get("data") or None,
        )
    state = str(getattr(ti_state, "value", ti_state) or "")
    kind = TERMINAL_STATUS_FALLBACK.get(state, "error_backoff")
    return repository.StoredStatus(
        kind=kind,
        time=time.time(),
        data={"exception": f"task ended without a Bistro status (Airflow state {state or 'none'})"},
    )

