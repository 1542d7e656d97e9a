"""Reads and writes of the provider's tables; every function takes the caller's session.

Callers own the transaction, so an admission pass can write all of its grants and commit
once: a scheduler killed mid-pass leaves either every grant of the pass or none.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bistro_provider.core.resources import Holdings, holdings_from_json, holdings_to_json
from bistro_provider.store.models import CapacityOverride, Grant, TaskStatusRow, metadata


@dataclass(frozen=True)
class GrantRecord:
    """One ledger row in Python form."""

    ti_id: str
    dag_id: str
    task_id: str
    run_id: str
    map_index: int
    try_number: int
    job: str
    node: str
    path: tuple[str, ...]
    holdings: Holdings
    worker: str
    granted_at: float
    owner: str


@dataclass(frozen=True)
class StoredStatus:
    """The latest status of one (job, node)."""

    kind: str
    time: float
    backoff: int = 0
    data: dict[str, Any] | None = None


def ensure_tables(session: Session) -> None:
    """Create missing tables, for deployments where `airflow db migrate` has not run them."""
    metadata.create_all(session.get_bind(), checkfirst=True)


def add_grant(session: Session, record: GrantRecord) -> None:
    session.add(
        Grant(
            ti_id=record.ti_id,
            dag_id=record.dag_id,
            task_id=record.task_id,
            run_id=record.run_id,
            map_index=record.map_index,
            try_number=record.try_number,
            job=record.job,
            node=record.node,
            path=json.dumps(list(record.path)),
            holdings=json.dumps(holdings_to_json(record.holdings)),
            worker=record.worker,
            granted_at=record.granted_at,
            owner=record.owner,
        )
    )


def delete_grants(session: Session, ti_ids: Iterable[str]) -> int:
    ids = list(ti_ids)
    if not ids:
        return 0
    result = session.execute(delete(Grant).where(Grant.ti_id.in_(ids)))
    return int(result.rowcount or 0)


def load_grants(session: Session) -> list[GrantRecord]:
    records = []
    for row in session.scalars(select(Grant)):
        records.append(
            GrantRecord(
                ti_id=row.ti_id,
                dag_id=row.dag_id,
                task_id=row.task_id,
                run_id=row.run_id,
                map_index=row.map_index,
                try_number=row.try_number,
                job=row.job,
                node=row.node,
                path=tuple(json.loads(row.path)),
                holdings=holdings_from_json(json.loads(row.holdings)),
                worker=row.worker,
                granted_at=row.granted_at,
                owner=row.owner,
            )
        )
    return records


def get_status(session: Session, job: str, node: str) -> StoredStatus | None:
    row = session.get(TaskStatusRow, (job, node))
    if row is None:
        return None
    return StoredStatus(row.kind, row.time, row.backoff, json.loads(row.data or "{}") or None)


def load_statuses(
    session: Session, jobs: Iterable[str] | None = None
) -> dict[tuple[str, str], StoredStatus]:
    query = select(TaskStatusRow)
    if jobs is not None:
        query = query.where(TaskStatusRow.job.in_(list(jobs)))
    return {
        (row.job, row.node): StoredStatus(
            row.kind, row.time, row.backoff, json.loads(row.data or "{}") or None
        )
        for row in session.scalars(query)
    }


def put_status(
    session: Session,
    job: str,
    node: str,
    status: StoredStatus,
    *,
    dag_id: str = "",
    run_id: str = "",
) -> None:
    row = session.get(TaskStatusRow, (job, node))
    if row is None:
        row = TaskStatusRow(job=job, node=node)
        session.add(row)
    row.kind = status.kind
    row.time = status.time
    row.backoff = status.backoff
    row.data = json.dumps(status.data or {})
    row.dag_id = dag_id
    row.run_id = run_id


def load_capacity_overrides(session: Session) -> dict[tuple[str, str], dict[str, int]]:
    overrides: dict[tuple[str, str], dict[str, int]] = {}
    for row in session.scalars(select(CapacityOverride)):
        overrides.setdefault((row.level, row.node), {})[row.resource] = row.amount
    return overrides


def ti_uuids(ti_ids: Iterable[str]) -> list[uuid.UUID]:
    """Convert stored task instance ids to the UUIDs that Airflow's `id` column expects."""
    return [uuid.UUID(str(ti_id)) for ti_id in ti_ids]


def ti_states(session: Session, ti_ids: Iterable[str]) -> dict[str, Any]:
    """Return the current Airflow state of each task instance id that still exists."""
    from airflow.models.taskinstance import TaskInstance

    ids = ti_uuids(ti_ids)
    if not ids:
        return {}
    rows = session.execute(select(TaskInstance.id, TaskInstance.state).where(TaskInstance.id.in_(ids)))
    return {str(ti_id): state for ti_id, state in rows}


def publish(session: Session, name: str, body: Any, *, owner: str = "", now: float | None = None) -> None:
    """Replace the published JSON document `name`."""
    from bistro_provider.store.models import PublishedState

    row = session.get(PublishedState, name)
    if row is None:
        row = PublishedState(name=name)
        session.add(row)
    row.body = json.dumps(body)
    row.updated_at = time.time() if now is None else now
    row.owner = owner


def read_published(session: Session, name: str) -> tuple[Any, float] | None:
    """Return a published document and when it was written, or None if never published."""
    from bistro_provider.store.models import PublishedState

    row = session.get(PublishedState, name)
    if row is None:
        return None
    return json.loads(row.body), row.updated_at


ADMISSION_LOCK_ID = 0x42495354  # "BIST"
"""PostgreSQL advisory lock key that serializes admission passes across schedulers."""


def lock_admission(session: Session) -> None:
    """Serialize admission passes of all schedulers sharing this database.

    On PostgreSQL this takes a transaction-scoped advisory lock, released by the commit or
    rollback that ends the pass, so it is never held across a task's life. SQLite allows
    one writer at a time anyway, and the embedded default runs one scheduler.
    """
    from sqlalchemy import text

    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK_ID})
