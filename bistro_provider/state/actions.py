"""Operator actions: kill a task, forgive a job, set or clear a live capacity override.

Each action validates its input against the effective config, changes the tables through
the caller's session, and adds one audit row per change with the acting user's name.
Callers commit, so an action and its audit rows are stored together or not at all.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from sqlalchemy import select

from bistro_provider.core.status import BACKOFF_KINDS
from bistro_provider.state.snapshot import StateError, StateSnapshot
from bistro_provider.store.models import AuditEntry, CapacityOverride, TaskStatusRow
from bistro_provider.store.repository import GrantRecord

log = logging.getLogger(__name__)

CLI_USER_PREFIX = "cli:"
FINISHED_TI_STATES = frozenset({"success", "failed", "skipped", "upstream_failed", "removed"})
FORGIVABLE_TI_STATES = ("failed", "upstream_failed")
_NODE_HINT_COUNT = 5


def record_audit(
    state: StateSnapshot, user: str, action: str, target: str, old: Any, new: Any
) -> None:
    """Add an audit row; values are stored as JSON text."""
    state.session.add(
        AuditEntry(
            time=time.time(),
            user=user,
            action=action,
            target=target,
            old_value=json.dumps(old),
            new_value=json.dumps(new),
        )
    )


# -- kill ----------------------------------------------------------------------------------


def kill_task(
    state: StateSnapshot,
    user: str,
    *,
    ti_id: str | None = None,
    job: str | None = None,
    node: str | None = None,
) -> dict[str, Any]:
    """Mark a running Bistro task instance FAILED, as Airflow does when a user marks it failed.

    Airflow's supervisor then stops the task process, and the executor releases the task's
    resources after the try ends. Give either `ti_id` or both `job` and `node`.

    :raises StateError: for an unknown or finished task, or a task of another DAG.
    """
    grant = _find_grant(state, ti_id, job, node)
    ti = _load_ti(state, grant.ti_id if grant else str(ti_id))
    _check_killable(state, ti, grant)
    previous = str(getattr(ti.state, "value", ti.state))
    dag = _latest_dag(state, ti.dag_id)
    dag.set_task_instance_state(
        task_id=ti.task_id,
        run_id=ti.run_id,
        map_indexes=[ti.map_index],
        state=_failed_state(),
        commit=True,
        session=state.session,
    )
    _notify_failed(ti)
    job_name = grant.job if grant else job or ""
    node_name = grant.node if grant else node or ""
    target = f"{ti.dag_id}/{ti.run_id}/{ti.task_id}[{ti.map_index}] ({job_name} on {node_name})"
    record_audit(state, user, "kill_task", target, {"state": previous}, {"state": "failed"})
    log.info("User %s marked task instance %s failed (%s)", user, ti.id, target)
    return {
        "ti_id": str(ti.id),
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "task_id": ti.task_id,
        "map_index": ti.map_index,
        "job": job_name,
        "node": node_name,
        "previous_state": previous,
        "state": "failed",
    }


def _find_grant(
    state: StateSnapshot, ti_id: str | None, job: str | None, node: str | None
) -> GrantRecord | None:
    if ti_id is not None:
        if job is not None or node is not None:
            raise StateError("give either a task instance id, or a job and a node, not both")
        return next((grant for grant in state.grants if grant.ti_id == ti_id), None)
    if not job or not node:
        raise StateError("give either a task instance id, or both a job and a node")
    grant = state.grants_by_task().get((job, node))
    if grant is None:
        if state.config is not None:
            state.job(job)
        raise StateError(
            f"no running task of job {job!r} on node {node!r}; "
            "'airflow bistro running' lists the running tasks",
            "not_found",
        )
    return grant


def _load_ti(state: StateSnapshot, ti_id: str) -> Any:
    from airflow.models.taskinstance import TaskInstance

    try:
        key = uuid.UUID(ti_id)
    except ValueError:
        raise StateError(f"invalid task instance id {ti_id!r}: expected a UUID") from None
    ti = state.session.get(TaskInstance, key)
    if ti is None:
        raise StateError(f"task instance {ti_id} not found", "not_found")
    return ti


def _check_killable(state: StateSnapshot, ti: Any, grant: GrantRecord | None) -> None:
    if grant is None and not ti.dag_id.startswith(state.options.dag_id_prefix):
        raise StateError(
            f"task instance {ti.id} belongs to DAG {ti.dag_id!r}, which is not a Bistro job "
            f"DAG (prefix {state.options.dag_id_prefix!r}); change its state in Airflow instead"
        )
    current = str(getattr(ti.state, "value", ti.state))
    if current in FINISHED_TI_STATES:
        raise StateError(
            f"task instance {ti.id} has already finished (state {current})", "conflict"
        )


def _latest_dag(state: StateSnapshot, dag_id: str) -> Any:
    from airflow.models.dagbag import DBDagBag

    dag = DBDagBag(load_op_links=False).get_latest_version_of_dag(dag_id, session=state.session)
    if dag is None:
        raise StateError(
            f"DAG {dag_id!r} is not serialized in the metadata database; check that the "
            "dag-processor parses the Bistro DAG file",
            "not_found",
        )
    return dag


def _failed_state() -> Any:
    from airflow.utils.state import TaskInstanceState

    return TaskInstanceState.FAILED


def _notify_failed(ti: Any) -> None:
    """Fire the listener hook that Airflow's API fires when a user marks a task failed."""
    from airflow.listeners.listener import get_listener_manager

    try:
        get_listener_manager().hook.on_task_instance_failed(
            previous_state=None,
            task_instance=ti,
            error="the task instance was killed through Bistro",
        )
    except Exception:
        # A broken listener plugin must not undo the kill; Airflow's API logs it the same way.
        log.exception("A listener failed on task instance %s", ti.id)


# -- forgive -------------------------------------------------------------------------------


def forgive_job(state: StateSnapshot, user: str, job_name: str) -> dict[str, Any]:
    """Forgive a job: its failed tasks may run again and backoffs restart from the first delay.

    Status rows ``failed`` become ``error_backoff`` with no wait, and backoff rows lose their
    wait; the rows are stored, so a scheduler restart keeps the forgiveness. Failed and
    upstream_failed mapped task instances of the job DAG are cleared, so they run again.

    :raises StateError: ``not_found`` for a job that is not in the config.
    """
    job = state.job(job_name)
    failed, in_backoff = _forgive_statuses(state, job.name)
    cleared = _clear_failed_instances(state, state.dag_id(job.name))
    record_audit(
        state,
        user,
        "forgive_job",
        job.name,
        {"failed": failed, "in_backoff": in_backoff},
        {"forgiven": failed + in_backoff, "cleared_task_instances": len(cleared)},
    )
    log.info(
        "User %s forgave job %s: %d failed, %d in backoff, %d task instances cleared",
        user,
        job.name,
        failed,
        in_backoff,
        len(cleared),
    )
    return {
        "job": job.name,
        "dag_id": state.dag_id(job.name),
        "forgiven_failed": failed,
        "forgiven_backoff": in_backoff,
        "cleared_task_instances": cleared,
    }


def _forgive_statuses(state: StateSnapshot, job: str) -> tuple[int, int]:
    failed = in_backoff = 0
    rows = state.session.scalars(select(TaskStatusRow).where(TaskStatusRow.job == job))
    for row in rows:
        if row.kind == "failed":
            row.kind = "error_backoff"
            row.backoff = 0
            failed += 1
        elif row.kind in BACKOFF_KINDS and row.backoff:
            row.backoff = 0
            in_backoff += 1
    return failed, in_backoff


def _clear_failed_instances(state: StateSnapshot, dag_id: str) -> list[dict[str, Any]]:
    """Clear the job DAG's failed mapped task instances; return their run ids and indexes.

    Ids are not returned because Airflow gives a cleared task instance a new id.
    """
    from airflow.models.taskinstance import TaskInstance, clear_task_instances

    from bistro_provider.dag_factory import TASK_ID

    query = select(TaskInstance).where(
        TaskInstance.dag_id == dag_id,
        TaskInstance.task_id == TASK_ID,
        TaskInstance.map_index >= 0,
        TaskInstance.state.in_(FORGIVABLE_TI_STATES),
    )
    tis = list(state.session.scalars(query))
    cleared = sorted(
        ({"run_id": ti.run_id, "map_index": ti.map_index} for ti in tis),
        key=lambda item: (item["run_id"], item["map_index"]),
    )
    if tis:
        clear_task_instances(tis, state.session)
    return cleared


# -- capacity ------------------------------------------------------------------------------


def set_capacity(
    state: StateSnapshot, user: str, level: str, node: str, resource: str, amount: int
) -> dict[str, Any]:
    """Set a live limit for one resource of one node; it wins over config and node sources.

    :raises StateError: for an unknown level, resource or node, or a negative amount.
    """
    _check_level_and_resource(state, level, resource)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise StateError(f"amount must be an integer >= 0, got {amount!r}")
    _check_node(state, level, node)
    before = state.capacity((level, node)).get(resource)
    row = state.session.get(CapacityOverride, (level, node, resource))
    previous = row.amount if row is not None else None
    if row is None:
        state.session.add(
            CapacityOverride(level=level, node=node, resource=resource, amount=amount)
        )
    else:
        row.amount = amount
    target = f"{level}/{node}/{resource}"
    record_audit(
        state,
        user,
        "set_capacity",
        target,
        {"override": previous, "capacity": before},
        {"override": amount},
    )
    log.info("User %s set capacity %s to %d (was %s)", user, target, amount, before)
    return {
        "level": level,
        "node": node,
        "resource": resource,
        "amount": amount,
        "previous_override": previous,
        "previous_capacity": before,
    }


def clear_capacity(
    state: StateSnapshot, user: str, level: str, node: str, resource: str | None = None
) -> dict[str, Any]:
    """Remove a node's live limit for `resource`, or all of its live limits when None.

    :raises StateError: ``not_found`` when there is no such override.
    """
    query = select(CapacityOverride).where(
        CapacityOverride.level == level, CapacityOverride.node == node
    )
    if resource is not None:
        query = query.where(CapacityOverride.resource == resource)
    rows = list(state.session.scalars(query))
    if not rows:
        _check_level_and_resource(state, level, resource)
        target = f"{level}/{node}" + (f"/{resource}" if resource else "")
        raise StateError(
            f"no capacity override for {target}; 'airflow bistro forest --json' lists overrides",
            "not_found",
        )
    cleared = {}
    for row in rows:
        cleared[row.resource] = row.amount
        target = f"{level}/{node}/{row.resource}"
        record_audit(
            state, user, "clear_capacity", target, {"override": row.amount}, {"override": None}
        )
        state.session.delete(row)
    log.info("User %s cleared capacity overrides of %s/%s: %s", user, level, node, cleared)
    return {"level": level, "node": node, "cleared": dict(sorted(cleared.items()))}


def _check_level_and_resource(state: StateSnapshot, level: str, resource: str | None) -> None:
    settings = state.require_config().settings
    if level not in settings.levels:
        raise StateError(f"unknown level {level!r}; defined levels: {', '.join(settings.levels)}")
    if resource is None:
        return
    specs = settings.resources.get(level, {})
    if resource not in specs:
        defined = ", ".join(sorted(specs)) or "none"
        raise StateError(
            f"level {level} has no resource {resource!r}; its resources: {defined} "
            "(declare it under bistro_settings.resources first)"
        )


def _check_node(state: StateSnapshot, level: str, node: str) -> None:
    """Reject data nodes that are not in the published forest; workers are not listed there."""
    settings = state.require_config().settings
    index = settings.level_index(level)
    if index == 0 and node != settings.instance_node_name:
        raise StateError(
            f"the instance level has one node, {settings.instance_node_name!r}; got {node!r}",
            "not_found",
        )
    if state.fetched_forest is None or not 0 < index < len(settings.levels) - 1:
        return
    if state.fetched_forest.replicas(index, node):
        return
    names = state.fetched_forest.distinct_names(index)[:_NODE_HINT_COUNT]
    raise StateError(
        f"node {node!r} is not on level {level} in the published node list; nodes there "
        f"include: {', '.join(names) or 'none'}",
        "not_found",
    )
