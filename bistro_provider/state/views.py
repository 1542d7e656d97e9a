"""JSON-ready views of a `StateSnapshot`: forest usage, jobs, running and waiting tasks, errors.

Every view returns plain dicts and lists with every key present (None where a value is
unknown), so the API and the CLI print the same JSON for the same state.
"""

from __future__ import annotations

import json
from typing import Any, get_args

from sqlalchemy import select

from bistro_provider.core.forest import Node
from bistro_provider.core.model import WORKER_LEVEL, Job
from bistro_provider.core.resources import NodeKey, holdings_to_json
from bistro_provider.state.schemas import FillState
from bistro_provider.state.snapshot import StateError, StateSnapshot
from bistro_provider.state.tasks import job_histogram, job_progress
from bistro_provider.store.models import AuditEntry

FILL_STATES: tuple[str, ...] = get_args(FillState)
"""Fill states of a node. ``over``: some resource is used beyond its limit (the limit was
lowered under running tasks). ``full``: some resource has nothing left. ``busy``: something
is in use. ``free``: nothing is in use."""

MAX_AUDIT_ENTRIES = 10000


def fill_state(capacity: dict[str, int], usage: dict[str, int]) -> str:
    """Return the `FILL_STATES` entry for a node with these limits and this usage."""
    names = set(capacity) | set(usage)
    if any(usage.get(name, 0) > capacity.get(name, 0) for name in names):
        return "over"
    if any(capacity.get(name, 0) - usage.get(name, 0) <= 0 for name in names):
        return "full"
    if any(amount > 0 for amount in usage.values()):
        return "busy"
    return "free"


# -- forest --------------------------------------------------------------------------------


def forest_view(
    state: StateSnapshot,
    *,
    level: str | None = None,
    query: str | None = None,
    tag: str | None = None,
    fill: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> dict[str, Any]:
    """Return the forest's nodes with capacity, usage and fill state, filtered and paged.

    :param query: keeps nodes whose name contains it, ignoring case.
    :param fill: keeps nodes in this fill state (one of `FILL_STATES`).
    :raises StateError: for an unknown level or fill state, or a negative offset or limit.
    """
    levels = _levels(state)
    _check_forest_filters(levels, level, fill, offset, limit)
    forest = state.fetched_forest
    rows = []
    if forest is not None:
        rows = [_node_row(state, forest.levels[node.level], node) for node in forest]
    rows += _orphan_rows(state)
    rows += _worker_rows(state, {(row["level"], row["name"]) for row in rows})
    selected = [row for row in rows if _matches(row, level, query, tag, fill)]
    end = None if limit is None else offset + limit
    forest_doc = state.published.get("forest")
    return {
        "levels": levels,
        "fetched_at": forest_doc.body.get("fetched_at") if forest_doc else None,
        "updated_at": forest_doc.updated_at if forest_doc else None,
        "total": len(selected),
        "offset": offset,
        "limit": limit,
        "nodes": selected[offset:end],
    }


def _levels(state: StateSnapshot) -> list[str]:
    if state.fetched_forest is not None:
        return list(state.fetched_forest.levels)
    if state.config is not None:
        return list(state.config.settings.levels)
    return []


def _check_forest_filters(
    levels: list[str], level: str | None, fill: str | None, offset: int, limit: int | None
) -> None:
    if level is not None and level not in levels:
        defined = ", ".join(levels) or "none (no forest published yet)"
        raise StateError(f"unknown level {level!r}; defined levels: {defined}")
    if fill is not None and fill not in FILL_STATES:
        raise StateError(f"unknown fill state {fill!r}; use one of: {', '.join(FILL_STATES)}")
    if offset < 0:
        raise StateError(f"offset must be >= 0, got {offset}")
    if limit is not None and limit < 0:
        raise StateError(f"limit must be >= 0, got {limit}")


def _usage_fields(state: StateSnapshot, key: NodeKey) -> dict[str, Any]:
    capacity = state.capacity(key)
    usage = state.usage(key)
    full_usage = {name: usage.get(name, 0) for name in capacity}
    full_usage.update(usage)
    return {
        "capacity": dict(sorted(capacity.items())),
        "usage": dict(sorted(full_usage.items())),
        "available": {name: capacity[name] - full_usage[name] for name in sorted(capacity)},
        "overrides": dict(sorted(state.overrides.get(key, {}).items())),
        "fill": fill_state(capacity, usage),
        "running": state.running_count(key),
    }


def _node_row(state: StateSnapshot, level: str, node: Node) -> dict[str, Any]:
    return {
        "name": node.name,
        "level": level,
        "parent": node.parent.name if node.parent else None,
        "path": node.path_names(),
        "enabled": node.enabled,
        "tags": sorted(node.tags),
        "in_forest": True,
        **_usage_fields(state, (level, node.name)),
    }


def _worker_rows(state: StateSnapshot, known: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """Rows for the worker nodes the executor published and no grant has shown yet."""
    rows = []
    for name in sorted(state.published_workers()):
        if (WORKER_LEVEL, name) in known:
            continue
        rows.append(
            {
                "name": name,
                "level": WORKER_LEVEL,
                "parent": None,
                "path": [name],
                "enabled": True,
                "tags": [],
                "in_forest": False,
                **_usage_fields(state, (WORKER_LEVEL, name)),
            }
        )
    return rows


def _orphan_rows(state: StateSnapshot) -> list[dict[str, Any]]:
    """Rows for nodes that admitted tasks hold but that the forest does not list.

    These are workers, which the forest never lists, and data nodes that left the forest
    while their tasks still run.
    """
    known = set()
    if state.fetched_forest is not None:
        known = {
            (state.fetched_forest.levels[node.level], node.name) for node in state.fetched_forest
        }
    paths = {}
    for grant in state.grants:
        for name_index, name in enumerate(grant.path):
            paths.setdefault(name, list(grant.path[: name_index + 1]))
    rows = []
    for key in sorted(set(state.used_keys()) - known):
        is_worker = key[0] == WORKER_LEVEL
        path = [key[1]] if is_worker else paths.get(key[1], [key[1]])
        row = {
            "name": key[1],
            "level": key[0],
            "parent": path[-2] if len(path) > 1 else None,
            "path": path,
            "enabled": is_worker,
            "tags": [],
            "in_forest": False,
            **_usage_fields(state, key),
        }
        rows.append(row)
    return rows


def _matches(
    row: dict[str, Any], level: str | None, query: str | None, tag: str | None, fill: str | None
) -> bool:
    if level is not None and row["level"] != level:
        return False
    if query and query.lower() not in row["name"].lower():
        return False
    if tag is not None and tag not in row["tags"]:
        return False
    return fill is None or row["fill"] == fill


# -- jobs ----------------------------------------------------------------------------------


def jobs_view(state: StateSnapshot) -> dict[str, Any]:
    """Return every job of the effective config with its progress and histograms."""
    if state.config is None:
        return {"config_problem": state.config_problem, "jobs": []}
    jobs = [job_view(state, job) for job in state.config.jobs.values()]
    return {"config_problem": None, "jobs": jobs}


def job_view(state: StateSnapshot, job: Job) -> dict[str, Any]:
    """Return one job: effective config, errors, progress per category and histograms."""
    settings = state.require_config().settings
    valid = not job.errors
    histograms = job_histogram(state, job)[0] if valid else {}
    progress = job_progress(state, job) if valid else None
    return {
        "name": job.name,
        "dag_id": state.dag_id(job.name),
        "enabled": job.enabled,
        "valid": valid,
        "errors": state.job_errors(job),
        "owner": job.owner,
        "priority": job.priority,
        "level_for_tasks": job.level_for_tasks or settings.level_for_tasks,
        "depends_on": list(job.depends_on),
        "config": state.job_json(job),
        "progress": progress,
        "histograms": histograms,
    }


# -- tasks ---------------------------------------------------------------------------------


def running_view(state: StateSnapshot) -> dict[str, Any]:
    """Return every admitted task with its holdings and its Airflow state."""
    tasks = []
    for grant in sorted(state.grants, key=lambda item: (item.job, item.node, item.ti_id)):
        tasks.append(
            {
                "ti_id": grant.ti_id,
                "dag_id": grant.dag_id,
                "run_id": grant.run_id,
                "task_id": grant.task_id,
                "map_index": grant.map_index,
                "try_number": grant.try_number,
                "job": grant.job,
                "node": grant.node,
                "path": list(grant.path),
                "holdings": holdings_to_json(grant.holdings),
                "worker": grant.worker,
                "granted_at": grant.granted_at,
                "owner": grant.owner,
                "state": state.ti_states.get(grant.ti_id),
            }
        )
    return {"tasks": tasks}


def waiting_view(state: StateSnapshot) -> dict[str, Any]:
    """Return the queued tasks the executor holds back, with the reason each one waits."""
    document = state.published.get("waiting")
    tasks = []
    for item in state.waiting_tasks():
        tasks.append(
            {
                "ti_id": str(item.get("ti_id", "")),
                "dag_id": str(item.get("dag_id", "")),
                "run_id": str(item.get("run_id", "")),
                "task_id": str(item.get("task_id", "")),
                "map_index": int(item.get("map_index", -1)),
                "try_number": int(item.get("try_number", 0)),
                "job": str(item.get("job", "")),
                "node": str(item.get("node", "")),
                "reason": str(item.get("reason", "")),
                "since": item.get("since"),
            }
        )
    return {
        "updated_at": document.updated_at if document else None,
        "owner": document.owner if document else None,
        "tasks": tasks,
    }


def errors_view(state: StateSnapshot) -> dict[str, Any]:
    """Return config, node-source and job errors, with where and when they were found."""
    document = state.published.get("errors")
    body = state.errors_doc()
    found = body.get("errors") if isinstance(body.get("errors"), dict) else {}
    jobs = {}
    if state.config is not None:
        jobs = {job.name: state.job_errors(job) for job in state.config.jobs.values() if job.errors}
    config_error = found.get("config")
    if config_error is None and state.config is None:
        config_error = state.config_problem
    return {
        "config_file": body.get("config_file") or state.options.config_file or None,
        "updated_at": document.updated_at if document else None,
        "forest_time": body.get("forest_time"),
        "config": config_error,
        "nodes": found.get("nodes"),
        "jobs": jobs,
    }


def audit_view(state: StateSnapshot, limit: int = 100) -> dict[str, Any]:
    """Return the newest `limit` audit entries, newest first.

    :raises StateError: when `limit` is outside 1..10000.
    """
    if not 1 <= limit <= MAX_AUDIT_ENTRIES:
        raise StateError(f"limit must be between 1 and {MAX_AUDIT_ENTRIES}, got {limit}")
    query = select(AuditEntry).order_by(AuditEntry.time.desc(), AuditEntry.id.desc()).limit(limit)
    entries = []
    for row in state.session.scalars(query):
        entries.append(
            {
                "id": row.id,
                "time": row.time,
                "user": row.user,
                "action": row.action,
                "target": row.target,
                "old_value": _decode(row.old_value),
                "new_value": _decode(row.new_value),
            }
        )
    return {"entries": entries}


def _decode(text: str) -> Any:
    """Audit values are stored as JSON text; anything else is returned as written."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
