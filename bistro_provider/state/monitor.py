"""Bistro's HTTP monitor protocol, so tools written for Bistro keep working.

A request body is a JSON object of named queries, ``{"q1": {"handler": "jobs"}, ...}``; a
top-level ``prefs`` key is ignored. Each query gets its own result, ``{"q1": {"data": ...}}``
or ``{"q1": {"error": "..."}}``, and a failed query does not undo the others.
A body that is not a JSON object gets a single JSON string naming the problem.
Answers use Bistro's shapes; where a Bistro handler needs something this provider does
not keep (task logs, job editing), the query gets an error saying where to look instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from bistro_provider.state import actions
from bistro_provider.state.snapshot import StateError, StateSnapshot
from bistro_provider.state.tasks import histogram

log = logging.getLogger(__name__)

NODE_FIELDS = ("resources", "disabled")
ACTION_HANDLERS = frozenset({"kill_task", "forgive_jobs"})


class MonitorError(ValueError):
    """A query that cannot be processed; its message becomes the query's ``error``."""


def handle_monitor(
    state: StateSnapshot, body: Any, *, user: str, may_edit: Callable[[], bool]
) -> Any:
    """Process a monitor request and return the response; the caller commits the changes.

    :param may_edit: returns whether the user may kill tasks and forgive jobs.
    """
    if not isinstance(body, dict):
        return 'the monitor request must be a JSON object of queries: {"q1": {"handler": ...}}'
    if state.config is None:
        return f"no Bistro config is available: {state.config_problem}"
    answers: dict[str, Any] = {}
    for name, query in body.items():
        if name == "prefs":
            continue
        try:
            answers[name] = {"data": _handle_single(state, query, user, may_edit)}
        except (MonitorError, StateError) as exc:
            answers[name] = {"error": str(exc)}
    return answers


def _handle_single(
    state: StateSnapshot, query: Any, user: str, may_edit: Callable[[], bool]
) -> Any:
    if not isinstance(query, dict) or not isinstance(query.get("handler"), str):
        raise MonitorError('a query must be an object with a "handler" string')
    handler = query["handler"]
    if handler in ACTION_HANDLERS and not may_edit():
        raise MonitorError(f"Forbidden: {handler} needs permission to edit task instances of DAGs")
    function = HANDLERS.get(handler)
    if function is None:
        raise MonitorError(NOT_SUPPORTED.get(handler, f"Unknown handler: {handler}"))
    return function(state, query, user)


def _requested_jobs(state: StateSnapshot, query: dict[str, Any]) -> list[str]:
    """Return the requested jobs that exist, or every job when none are requested."""
    config = state.require_config()
    requested = query.get("jobs")
    if not requested:
        return list(config.jobs)
    if not isinstance(requested, list):
        raise MonitorError('"jobs" must be a list of job names')
    return [str(name) for name in requested if str(name) in config.jobs]


def _job_filter(query: dict[str, Any]) -> set[str]:
    requested = query.get("jobs") or []
    if not isinstance(requested, list):
        raise MonitorError('"jobs" must be a list of job names')
    return {str(name) for name in requested}


def _jobs(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    config = state.require_config()
    return {name: state.job_json(config.jobs[name]) for name in _requested_jobs(state, query)}


def _running_tasks(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    requested = _job_filter(query)
    answer: dict[str, dict[str, Any]] = {}
    for grant in state.grants:
        if not requested or grant.job in requested:
            answer.setdefault(grant.job, {})[grant.node] = {
                "start_time": int(grant.granted_at),
                "worker_shard": grant.worker,
            }
    return answer


def _job_node_runtime(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    requested = _job_filter(query)
    answer: dict[str, dict[str, int]] = {}
    for grant in state.grants:
        if not requested or grant.job in requested:
            answer.setdefault(grant.job, {})[grant.node] = int(state.now - grant.granted_at)
    return answer


def _histogram(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    num_samples = query.get("num_samples", 0)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise MonitorError(f'"num_samples" must be an integer >= 0, got {num_samples!r}')
    return histogram(state, _requested_jobs(state, query), num_samples)


def _nodes(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    fields = query.get("fields") or list(NODE_FIELDS)
    nodes = query.get("nodes") or []
    if not isinstance(fields, list) or not isinstance(nodes, list):
        raise MonitorError('"fields" and "nodes" must be lists')
    for field in fields:
        if field not in NODE_FIELDS:
            raise MonitorError(f"Unknown field name: {field}")
    requested = {str(name) for name in nodes}
    settings = state.require_config().settings
    results: dict[str, dict[str, Any]] = {}
    for node in state.fetched_forest or ():
        if requested and node.name not in requested:
            continue
        level = settings.levels[node.level]
        entry = results.setdefault(level, {}).setdefault(node.name, {})
        if "resources" in fields:
            entry["resources"] = _node_resources(state, level, node.name)
        if "disabled" in fields and not node.enabled:
            entry["disabled"] = True
    return {"results": results}


def _node_resources(state: StateSnapshot, level: str, name: str) -> dict[str, Any]:
    """Bistro's per-node resource entry; ``override`` is added when a live limit is set."""
    specs = state.require_config().settings.resources.get(level, {})
    overrides = state.overrides.get((level, name), {})
    resources = {}
    for resource, spec in specs.items():
        entry: dict[str, Any] = {"default": spec.default, "limit": spec.limit}
        if spec.weight > 0:
            entry["weight"] = spec.weight
        if resource in overrides:
            entry["override"] = overrides[resource]
        resources[resource] = entry
    return resources


def _sorted_node_names(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    # Despite its name, Bistro's handler lists names in fetch order, replicas repeated.
    names: dict[str, list[str]] = {}
    forest = state.fetched_forest
    if forest is None:
        return names
    for node in forest:
        names.setdefault(forest.levels[node.level], []).append(node.name)
    return names


def _errors(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    body = state.errors_doc()
    found = body.get("errors") if isinstance(body.get("errors"), dict) else {}
    errors = {key: str(message) for key, message in found.items() if message}
    for job in state.require_config().jobs.values():
        if job.errors:
            errors[f"job {job.name}"] = "; ".join(state.job_errors(job))
    return errors


def _refresh_time(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    times = [document.updated_at for document in state.published.values()]
    return int(max(times)) if times else 0


def _forgive_jobs(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    jobs = query.get("jobs") or []
    if not isinstance(jobs, list):
        raise MonitorError('"jobs" must be a list of job names')
    for name in jobs:
        actions.forgive_job(state, user, str(name))
    return "forgiven"


def _kill_task(state: StateSnapshot, query: dict[str, Any], user: str) -> Any:
    job = query.get("job_id")
    node = query.get("node_id")
    if not isinstance(job, str) or not isinstance(node, str):
        raise MonitorError('kill_task needs "job_id" and "node_id" strings')
    if job not in state.require_config().jobs:
        raise MonitorError(f"Unknown job {job}")
    if (job, node) not in state.grants_by_task():
        raise MonitorError(f"Unknown running task {job}, {node}")
    actions.kill_task(state, user, job=job, node=node)
    return "signaled"


HANDLERS: dict[str, Callable[[StateSnapshot, dict[str, Any], str], Any]] = {
    "jobs": _jobs,
    "running_tasks": _running_tasks,
    "job_node_runtime": _job_node_runtime,
    "histogram": _histogram,
    "nodes": _nodes,
    "sorted_node_names": _sorted_node_names,
    "errors": _errors,
    "refresh_time": _refresh_time,
    "forgive_jobs": _forgive_jobs,
    "kill_task": _kill_task,
}

NOT_SUPPORTED = {
    "task_logs": "task_logs is not supported: read task logs in Airflow (UI, or GET "
    "/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/run/logs/{try})",
    "save_job": "save_job is not supported: jobs come from the config file named by "
    "[bistro] config_file; edit that file",
    "delete_job": "delete_job is not supported: jobs come from the config file named by "
    "[bistro] config_file; edit that file",
}
