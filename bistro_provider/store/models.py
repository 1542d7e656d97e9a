"""Tables the provider keeps in Airflow's metadata database, all prefixed ``bistro_``.

They use their own SQLAlchemy metadata and their own alembic version table, so Airflow's
migrations never touch them; `airflow db migrate` creates and upgrades them through the
provider's DB manager.
"""

from __future__ import annotations

from sqlalchemy import Float, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = MetaData()


class Base(DeclarativeBase):
    metadata = metadata


class Grant(Base):
    """Resources held by one admitted task instance try: the ledger.

    A row exists from admission until the executor sees the try end, so after a scheduler
    restart the rows of tasks still queued or running are the holdings to rebuild.
    """

    __tablename__ = "bistro_grant"

    ti_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dag_id: Mapped[str] = mapped_column(String(250), index=True)
    task_id: Mapped[str] = mapped_column(String(250))
    run_id: Mapped[str] = mapped_column(String(250))
    map_index: Mapped[int] = mapped_column(Integer)
    try_number: Mapped[int] = mapped_column(Integer)
    job: Mapped[str] = mapped_column(String(250), index=True)
    node: Mapped[str] = mapped_column(String(1024))
    path: Mapped[str] = mapped_column(Text)
    """JSON list of node names, root first."""
    holdings: Mapped[str] = mapped_column(Text)
    """JSON list of {level, node, resources}."""
    worker: Mapped[str] = mapped_column(String(250), default="")
    granted_at: Mapped[float] = mapped_column(Float)
    owner: Mapped[str] = mapped_column(String(250), default="")
    """The scheduler process that admitted the task, as ``hostname:pid``."""


class TaskStatusRow(Base):
    """The latest Bistro status of each (job, node), kept across DAG runs."""

    __tablename__ = "bistro_task_status"

    job: Mapped[str] = mapped_column(String(250), primary_key=True)
    node: Mapped[str] = mapped_column(String(1024), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    time: Mapped[float] = mapped_column(Float)
    backoff: Mapped[int] = mapped_column(Integer, default=0)
    data: Mapped[str] = mapped_column(Text, default="{}")
    dag_id: Mapped[str] = mapped_column(String(250), default="")
    run_id: Mapped[str] = mapped_column(String(250), default="")


class CapacityOverride(Base):
    """A live per-node limit set by an operator; it wins over config and node sources."""

    __tablename__ = "bistro_capacity_override"

    level: Mapped[str] = mapped_column(String(250), primary_key=True)
    node: Mapped[str] = mapped_column(String(1024), primary_key=True)
    resource: Mapped[str] = mapped_column(String(250), primary_key=True)
    amount: Mapped[int] = mapped_column(Integer)


class AuditEntry(Base):
    """An audit record of an action (capacity edit, kill, forgive): user, time, old and new value."""

    __tablename__ = "bistro_audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    user: Mapped[str] = mapped_column(String(250))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(Text)
    old_value: Mapped[str] = mapped_column(Text, default="")
    new_value: Mapped[str] = mapped_column(Text, default="")


class PublishedState(Base):
    """A JSON document the executor publishes for the API, CLI and UI to read.

    Names: ``forest`` (the last good node list), ``config`` (the effective config),
    ``errors`` (config and node-source errors) and ``waiting`` (queued tasks with the reason
    each waits). The API-server and CLI run in other processes than the scheduler, so this
    table is how they see the executor's view.
    """

    __tablename__ = "bistro_published_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[float] = mapped_column(Float)
    owner: Mapped[str] = mapped_column(String(250), default="")
