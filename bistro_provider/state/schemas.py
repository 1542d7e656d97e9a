"""Pydantic models of every view and action result, shared by the REST API and the CLI.

The API declares them as response models, which documents the OpenAPI schema. The CLI
passes the same dicts through `dump`, so ``--json`` prints exactly what the API returns.
Models forbid unknown keys, so a view that drifts from its model fails loudly in tests.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt

FillState = Literal["free", "busy", "full", "over"]
ExplainState = Literal[
    "no_config",
    "unknown_job",
    "running",
    "invalid_job",
    "disabled_job",
    "not_in_forest",
    "node_disabled",
    "filtered",
    "waiting",
    "done",
    "failed",
    "backoff",
    "scheduling_disabled",
    "dependency_not_done",
    "ready",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ForestNode(_Model):
    """A node with its limits and what admitted tasks hold on it."""

    name: str
    level: str
    parent: str | None
    path: list[str] = Field(description="Node names from the instance node down to this one")
    enabled: bool
    tags: list[str]
    in_forest: bool = Field(
        description="False for a worker, and for a node that left the node list while tasks "
        "still hold it"
    )
    capacity: dict[str, int] = Field(description="Limits: level, then node source, then override")
    usage: dict[str, int]
    available: dict[str, int]
    overrides: dict[str, int] = Field(description="Live limits set by operators")
    fill: FillState
    running: int = Field(description="Admitted tasks that hold resources on this node")


class ForestResponse(_Model):
    levels: list[str]
    fetched_at: float | None = Field(description="When the executor fetched the nodes (epoch s)")
    updated_at: float | None = Field(description="When the executor published them (epoch s)")
    total: int = Field(description="Nodes matching the filters, before paging")
    offset: int
    limit: int | None
    nodes: list[ForestNode]


class Progress(_Model):
    """Tasks of a job per category; each task counts once."""

    done: int
    running: int
    waiting: int = Field(description="Queued, waiting in the executor for resources")
    backoff: int
    incomplete: int = Field(description="Ran before and may run again")
    failed: int
    filtered: int = Field(description="Rejected by the job's filters")
    disabled: int = Field(description="On a disabled node")
    unstarted: int
    total: int


class JobInfo(_Model):
    name: str
    dag_id: str
    enabled: bool
    valid: bool
    errors: list[str]
    owner: str
    priority: float
    level_for_tasks: str
    depends_on: list[str]
    config: dict[str, Any] = Field(description="The job's effective config in Bistro's JSON form")
    progress: Progress | None = Field(description="None for a job with config errors")
    histograms: dict[str, dict[str, int]] = Field(
        description="Per level, node counts by Bistro's encoded status bits"
    )


class JobsResponse(_Model):
    config_problem: str | None
    jobs: list[JobInfo]


class Holding(_Model):
    level: str
    node: str
    resources: dict[str, int]


class RunningTask(_Model):
    ti_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    job: str
    node: str
    path: list[str]
    holdings: list[Holding]
    worker: str
    granted_at: float
    owner: str = Field(description="The scheduler process that admitted it, host:pid")
    state: str | None = Field(description="The task instance's Airflow state")


class RunningResponse(_Model):
    tasks: list[RunningTask]


class WaitingTask(_Model):
    ti_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    job: str
    node: str
    reason: str
    since: float | None


class WaitingResponse(_Model):
    updated_at: float | None = Field(description="When the executor last published the list")
    owner: str | None
    tasks: list[WaitingTask]


class HistogramResponse(_Model):
    """Bistro's ``histogram`` response: job, then level, then encoded status bits."""

    histograms: dict[str, dict[str, dict[str, int]]]
    samples: dict[str, dict[str, dict[str, list[str]]]] | None = None


class ErrorsResponse(_Model):
    config_file: str | None
    updated_at: float | None
    forest_time: float | None
    config: str | None = Field(description="Why the config file cannot be used")
    nodes: str | None = Field(description="Why the last node fetch failed")
    jobs: dict[str, list[str]]


class AuditEntryModel(_Model):
    id: int
    time: float
    user: str
    action: str
    target: str
    old_value: Any
    new_value: Any


class AuditResponse(_Model):
    entries: list[AuditEntryModel]


class ExplainResponse(_Model):
    job: str
    node: str
    state: ExplainState
    reason: str
    details: dict[str, Any]


class KillRequest(_Model):
    """Either ``ti_id``, or ``job`` and ``node``."""

    ti_id: str | None = None
    job: str | None = None
    node: str | None = None


class KillResponse(_Model):
    ti_id: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    job: str
    node: str
    previous_state: str
    state: str


class ClearedTask(_Model):
    """A task instance that forgive cleared; Airflow gives it a new id, so none is shown."""

    run_id: str
    map_index: int


class ForgiveResponse(_Model):
    job: str
    dag_id: str
    forgiven_failed: int
    forgiven_backoff: int
    cleared_task_instances: list[ClearedTask]


class CapacityRequest(_Model):
    level: str
    node: str
    resource: str
    amount: StrictInt = Field(description="The new limit, an integer >= 0")


class CapacityResponse(_Model):
    level: str
    node: str
    resource: str
    amount: int
    previous_override: int | None
    previous_capacity: int | None


class ClearCapacityResponse(_Model):
    level: str
    node: str
    cleared: dict[str, int] = Field(description="The overrides removed, by resource")


class SaveJobRequest(_Model):
    job: dict[str, Any] = Field(description="The job's config object, as in bistro_job->NAME")
    expected_version: StrictInt = Field(
        description="The version_id the job had when it was read; 0 for a new job"
    )


class JobEditResponse(_Model):
    job: str
    action: Literal["created", "updated", "deleted"]
    version_id: int | None = Field(description="The job's new version; null after a delete")
    previous_version: int
    config_source: str = Field(description="The location written: a file path or variable:NAME")


ModelT = TypeVar("ModelT", bound=BaseModel)


def dump(model: type[ModelT], data: dict[str, Any]) -> dict[str, Any]:
    """Validate `data` against `model` and return it as the API would serialize it."""
    return model.model_validate(data).model_dump(mode="json")
