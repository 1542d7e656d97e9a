"""Why a task is where it is: `explain` returns one state, a sentence and the facts behind it.

The checks run from the most to the least definite. An admitted task is running, whatever
else is true. A job that cannot run explains every one of its tasks. After that come the
node, the executor's own reason for a queued task, the stored status and the job's
dependencies.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args

from bistro_provider.core.filters import level_filter_accepts
from bistro_provider.core.forest import Node
from bistro_provider.core.model import Job
from bistro_provider.core.resources import holdings_to_json
from bistro_provider.state.schemas import ExplainState
from bistro_provider.state.snapshot import StateSnapshot
from bistro_provider.state.tasks import TaskInfo, backoff_until, in_backoff, task_infos
from bistro_provider.store.repository import GrantRecord, StoredStatus

EXPLAIN_STATES: tuple[str, ...] = get_args(ExplainState)


def format_time(seconds: float | None) -> str:
    """Return an epoch time as ISO 8601 in UTC, or ``-`` when unknown."""
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="seconds")


def explain(state: StateSnapshot, job_name: str, node: str) -> dict[str, Any]:
    """Return ``{job, node, state, reason, details}`` for the task of `job_name` on `node`.

    `state` is one of `EXPLAIN_STATES`; `reason` is a sentence for people; `details`
    contains the facts behind it (status, holdings, path, ...).
    """
    state_name, reason, details = _explain(state, job_name, node)
    return {
        "job": job_name,
        "node": node,
        "state": state_name,
        "reason": reason,
        "details": details,
    }


def _explain(state: StateSnapshot, job_name: str, node: str) -> tuple[str, str, dict[str, Any]]:
    config = state.config
    if config is None:
        return "no_config", f"no Bistro config is available: {state.config_problem}", {}
    job = config.jobs.get(job_name)
    if job is None:
        defined = ", ".join(sorted(config.jobs)) or "none"
        return "unknown_job", f"job {job_name!r} is not in the config; defined jobs: {defined}", {}
    info = next((item for item in task_infos(state, job) if item.node == node), None)
    details: dict[str, Any] = {
        "dag_id": state.dag_id(job.name),
        "level": config.settings.levels[state.task_level(job)],
        "status": _status_json(state.statuses.get((job.name, node))),
    }
    if info is not None and info.grant is not None:
        return _running(state, info.grant, details)
    job_problem = _job_problem(job, state)
    if job_problem is not None:
        return job_problem[0], job_problem[1], details
    if info is None or not info.replicas:
        return _not_in_forest(state, job, node, details)
    details["path"] = info.replicas[0].path_names()
    return _node_and_status(state, job, info, details)


def _running(
    state: StateSnapshot, grant: GrantRecord, details: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    details.update(
        {
            "ti_id": grant.ti_id,
            "run_id": grant.run_id,
            "map_index": grant.map_index,
            "try_number": grant.try_number,
            "airflow_state": state.ti_states.get(grant.ti_id),
            "path": list(grant.path),
            "holdings": holdings_to_json(grant.holdings),
            "worker": grant.worker,
            "granted_at": grant.granted_at,
        }
    )
    holdings_text = "; ".join(
        f"{level} {name}: " + ", ".join(f"{res}={amount}" for res, amount in amounts.items())
        for (level, name), amounts in grant.holdings.items()
    )
    reason = (
        f"admitted at {format_time(grant.granted_at)} on worker {grant.worker or '-'}, "
        f"holding {holdings_text or 'nothing'}"
    )
    return "running", reason, details


def _job_problem(job: Job, state: StateSnapshot) -> tuple[str, str] | None:
    if job.errors:
        errors = "; ".join(state.job_errors(job))
        return "invalid_job", f"job {job.name!r} has config errors and cannot run: {errors}"
    if not job.enabled:
        return "disabled_job", f"job {job.name!r} is disabled (enabled: false in its config)"
    return None


def _not_in_forest(
    state: StateSnapshot, job: Job, node: str, details: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    level = details["level"]
    if state.fetched_forest is None:
        return "not_in_forest", "the executor has not published a node list yet", details
    elsewhere = sorted(
        {state.fetched_forest.levels[item.level] for item in state.fetched_forest.find(node)}
    )
    if elsewhere:
        reason = (
            f"node {node!r} is on level {', '.join(elsewhere)}, but job {job.name!r} runs "
            f"tasks on level {level}"
        )
    else:
        document = state.published.get("forest")
        fetched = document.body.get("fetched_at") if document else None
        reason = f"node {node!r} is not in the node list fetched at {format_time(fetched)}"
    return "not_in_forest", reason, details


def _node_and_status(
    state: StateSnapshot, job: Job, info: TaskInfo, details: dict[str, Any]
) -> tuple[str, str, dict[str, Any]]:
    if info.eligibility == "disabled":
        disabled = _first_disabled(info.replicas[0])
        return "node_disabled", f"node {disabled!r} on the task's path is disabled", details
    if info.eligibility == "avoided":
        return "filtered", _filter_reason(state, job, info.replicas[0]), details
    if info.waiting is not None:
        details.update({key: info.waiting.get(key) for key in ("ti_id", "run_id", "since")})
        reason = str(info.waiting.get("reason") or "queued, waiting for admission")
        return "waiting", reason, details
    status_result = _status_state(state, job, info.status)
    if status_result is not None:
        return status_result[0], status_result[1], details
    settings = state.require_config().settings
    if not settings.enabled:
        return (
            "scheduling_disabled",
            "scheduling is disabled: bistro_settings.enabled is false",
            details,
        )
    missing = _unfinished_dependencies(state, job, info.node)
    if missing:
        return "dependency_not_done", f"dependency not done on this node: {missing}", details
    reason = (
        f"may run; no task instance of DAG {details['dag_id']} is queued for it, so it starts "
        "with the next DAG run"
    )
    return "ready", reason, details


def _status_state(
    state: StateSnapshot, job: Job, status: StoredStatus | None
) -> tuple[str, str] | None:
    if status is None:
        return None
    when = format_time(status.time)
    if status.kind == "done":
        return "done", f"finished at {when} with status done"
    if status.kind == "failed":
        fix = f"run 'airflow bistro forgive {job.name}' to retry it"
        return "failed", f"failed at {when} and is not retried; {fix}"
    if status.kind == "running":
        return "running", f"reported running at {when}, but holds no resources in the ledger"
    if in_backoff(status, state.now):
        until = format_time(backoff_until(status))
        return "backoff", f"in backoff until {until} after status {status.kind} at {when}"
    return None


def _first_disabled(node: Node) -> str:
    for step in node.path_to_root():
        if not step.enabled:
            return step.name
    return node.name


def _filter_reason(state: StateSnapshot, job: Job, node: Node) -> str:
    levels = state.require_config().settings.levels
    for step in node.path_to_root():
        level = levels[step.level]
        level_filter = job.filters.get(level)
        if level_filter is not None and not level_filter_accepts(level_filter, step, job.name):
            return f"the job's filter for level {level} rejects node {step.name!r}"
    return f"the job's filters reject node {node.name!r}"


def _unfinished_dependencies(state: StateSnapshot, job: Job, node: str) -> str:
    parts = []
    config = state.require_config()
    for dependency in job.depends_on:
        if dependency not in config.jobs:
            parts.append(f"{dependency} (not defined in the config, so never done)")
            continue
        status = state.statuses.get((dependency, node))
        if status is None or status.kind != "done":
            parts.append(f"{dependency} ({status.kind if status else 'not started'})")
    return ", ".join(parts)


def _status_json(status: StoredStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {
        "kind": status.kind,
        "time": status.time,
        "backoff": status.backoff,
        "data": status.data,
    }
