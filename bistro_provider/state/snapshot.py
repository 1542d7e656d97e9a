"""One consistent read of everything the API, the CLI and the UI show.

The executor runs inside `airflow scheduler`, while the API server and the CLI are other
processes, so they never ask the executor. They read the provider's tables instead: the
ledger (`bistro_grant`), statuses, capacity overrides, the audit log, and the JSON documents
the executor publishes (config, forest, errors, waiting tasks). `StateSnapshot.load` reads
them once per request, and every view is computed from that one read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bistro_provider.core.config import config_to_json, load_config, parse_config
from bistro_provider.core.errors import ConfigError
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import WORKER_LEVEL, Config, Job
from bistro_provider.core.resources import NodeKey, level_capacity
from bistro_provider.core.workers import WorkerInfo, worker_capacity
from bistro_provider.options import BistroOptions
from bistro_provider.store import repository
from bistro_provider.store.models import PublishedState
from bistro_provider.store.repository import GrantRecord, StoredStatus

ERROR_KINDS = ("invalid", "not_found", "conflict")


class StateError(ValueError):
    """A request that names an unknown object or an invalid value.

    :param kind: ``invalid`` (bad value), ``not_found`` (unknown object) or ``conflict``
        (the object is not in a state that allows the action). The API maps these to HTTP
        400, 404 and 409, and the CLI exits with status 1 for all of them.
    """

    def __init__(self, message: str, kind: str = "invalid"):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown StateError kind {kind!r}; use one of {ERROR_KINDS}")
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Published:
    """A document the executor published, when, and which scheduler process wrote it."""

    body: Any
    updated_at: float
    owner: str


@dataclass
class StateSnapshot:
    """The provider's tables and the executor's published documents, read at one moment.

    :param config: the effective config; None when none was published and
        `[bistro] config_file` cannot be loaded (`config_problem` gives the reason).
    :param fetched_forest: the last node list the executor fetched, or None before the first fetch.
    :param now: the time views compare backoff ends against, in seconds since the epoch.
    """

    session: Session
    config: Config | None
    config_problem: str | None
    config_doc: dict[str, Any]
    fetched_forest: Forest | None
    published: dict[str, Published]
    grants: list[GrantRecord]
    ti_states: dict[str, str | None]
    statuses: dict[tuple[str, str], StoredStatus]
    overrides: dict[NodeKey, dict[str, int]]
    options: BistroOptions
    now: float
    _usage: dict[NodeKey, dict[str, int]] = field(default_factory=dict)
    _running_on: dict[NodeKey, int] = field(default_factory=dict)

    @classmethod
    def load(
        cls, session: Session, *, options: BistroOptions | None = None, now: float | None = None
    ) -> StateSnapshot:
        """Read the tables through `session`; nothing is written.

        NOTE: every call reads all grants and statuses and the whole forest document; its
        cost on forests of 100,000 nodes has not been measured.
        """
        options = options or BistroOptions.from_airflow()
        published = _read_published(session)
        config, config_doc, problem = _effective_config(published.get("config"), options)
        forest_doc = published.get("forest")
        grants = repository.load_grants(session)
        state = cls(
            session=session,
            config=config,
            config_problem=problem,
            config_doc=config_doc,
            fetched_forest=forest_from_json(forest_doc.body) if forest_doc else None,
            published=published,
            grants=grants,
            ti_states=_ti_states(session, [grant.ti_id for grant in grants]),
            statuses=repository.load_statuses(session),
            overrides=repository.load_capacity_overrides(session),
            options=options,
            now=time.time() if now is None else now,
        )
        state._count_usage()
        return state

    # -- accounting -----------------------------------------------------------------------

    def _count_usage(self) -> None:
        for grant in self.grants:
            for key, amounts in grant.holdings.items():
                used = self._usage.setdefault(key, {})
                for resource, amount in amounts.items():
                    used[resource] = used.get(resource, 0) + amount
                self._running_on[key] = self._running_on.get(key, 0) + 1

    def usage(self, key: NodeKey) -> dict[str, int]:
        """Return what the admitted tasks hold on a node, by resource."""
        return dict(self._usage.get(key, {}))

    def running_count(self, key: NodeKey) -> int:
        """Return how many admitted tasks hold resources on a node."""
        return self._running_on.get(key, 0)

    def used_keys(self) -> list[NodeKey]:
        return list(self._usage)

    def capacity(self, key: NodeKey) -> dict[str, int]:
        """Return a node's limits: the level's, then the node's own, then overrides.

        A worker's limits are the ones the executor published, which include detected
        cores and RAM; a worker it has not published gets the config's limits.
        """
        if self.config is not None and key[0] == WORKER_LEVEL:
            published = self.published_workers().get(key[1])
            if published is not None:
                limits = {str(k): int(v) for k, v in (published.get("capacity") or {}).items()}
            else:
                limits = worker_capacity(self.config.settings, WorkerInfo(key[1], key[1]))
            limits.update(self.overrides.get(key, {}))
            return limits
        node_capacity = self._node_capacity(key)
        if self.config is None:
            limits = dict(node_capacity.get(key, {}))
            limits.update(self.overrides.get(key, {}))
            return limits
        return dict(level_capacity(self.config.settings, node_capacity, self.overrides)(key))

    def published_workers(self) -> dict[str, dict[str, Any]]:
        """Return the worker nodes the executor published, by name."""
        document = self.published.get("workers")
        if document is None or not isinstance(document.body, list):
            return {}
        return {str(item["name"]): item for item in document.body if isinstance(item, dict)}

    def _node_capacity(self, key: NodeKey) -> dict[NodeKey, dict[str, int]]:
        if self.fetched_forest is None:
            return {}
        try:
            level = self.fetched_forest.level_index(key[0])
        except KeyError:
            return {}
        for node in self.fetched_forest.replicas(level, key[1]):
            if node.capacity:
                return {key: dict(node.capacity)}
        return {}

    # -- lookups --------------------------------------------------------------------------

    def job(self, name: str) -> Job:
        """Return a job of the effective config.

        :raises StateError: ``not_found`` naming the job and the defined ones.
        """
        config = self.require_config()
        job = config.jobs.get(name)
        if job is None:
            defined = ", ".join(sorted(config.jobs)) or "none"
            raise StateError(f"unknown job {name!r}; defined jobs: {defined}", "not_found")
        return job

    def require_config(self) -> Config:
        if self.config is None:
            raise StateError(f"no Bistro config is available: {self.config_problem}", "conflict")
        return self.config

    def task_level(self, job: Job) -> int:
        settings = self.require_config().settings
        return settings.level_index(job.level_for_tasks or settings.level_for_tasks)

    def dag_id(self, job_name: str) -> str:
        """Return the DAG id that the DAG factory gives job `job_name`."""
        return f"{self.options.dag_id_prefix}{job_name}"

    def job_errors(self, job: Job) -> list[str]:
        """Return the job's config errors as the executor reported them."""
        entry = self.config_doc.get(f"bistro_job->{job.name}")
        if isinstance(entry, dict) and isinstance(entry.get("errors"), list):
            return [str(message) for message in entry["errors"]]
        return [str(issue) for issue in job.errors]

    def job_json(self, job: Job) -> dict[str, Any]:
        """Return the job's effective config in Bistro's JSON form."""
        entry = self.config_doc.get(f"bistro_job->{job.name}")
        return dict(entry) if isinstance(entry, dict) else {}

    def grants_by_task(self) -> dict[tuple[str, str], GrantRecord]:
        return {(grant.job, grant.node): grant for grant in self.grants}

    def waiting_tasks(self) -> list[dict[str, Any]]:
        document = self.published.get("waiting")
        body = document.body if document else []
        return [item for item in body if isinstance(item, dict)] if isinstance(body, list) else []

    def waiting_by_task(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {
            (str(item.get("job")), str(item.get("node"))): item for item in self.waiting_tasks()
        }

    def errors_doc(self) -> dict[str, Any]:
        document = self.published.get("errors")
        return document.body if document and isinstance(document.body, dict) else {}


def forest_from_json(body: Mapping[str, Any]) -> Forest | None:
    """Rebuild a forest from the executor's published ``forest`` document.

    The document lists nodes in fetch order with their parent's name. A parent name that
    several replicas share resolves to the first of them.
    """
    levels = tuple(str(level) for level in body.get("levels", ()))
    if len(levels) < 2:
        return None
    items = [item for item in body.get("nodes", ()) if isinstance(item, dict)]
    instance = next((str(i["name"]) for i in items if i.get("level") == levels[0]), levels[0])
    forest = Forest(levels, instance)
    first: dict[tuple[int, str], Node] = {(0, instance): forest.instance}
    for item in items:
        if item.get("level") not in levels:
            continue
        index = levels.index(item["level"])
        if not 0 < index < len(levels) - 1:
            continue
        node = Node(
            str(item["name"]),
            index,
            first.get((index - 1, str(item.get("parent")))),
            bool(item.get("enabled", True)),
            frozenset(str(tag) for tag in item.get("tags", ())),
            {str(res): int(amount) for res, amount in (item.get("capacity") or {}).items()},
        )
        forest.add(node)
        first.setdefault((index, node.name), node)
    return forest


def _read_published(session: Session) -> dict[str, Published]:
    documents = {}
    for row in session.scalars(select(PublishedState)):
        try:
            body = json.loads(row.body)
        except ValueError:
            continue
        documents[row.name] = Published(body, row.updated_at, row.owner)
    return documents


def _effective_config(
    document: Published | None, options: BistroOptions
) -> tuple[Config | None, dict[str, Any], str | None]:
    """Return the config the executor published, else the one `[bistro] config_file` names."""
    if document is not None and isinstance(document.body, dict):
        try:
            return parse_config(document.body, origin="published config"), document.body, None
        except ConfigError as exc:
            problem = f"the published config is invalid: {exc}"
            if not options.config_file:
                return None, {}, problem
    if not options.config_file:
        problem = "the executor has not published a config and [bistro] config_file is not set"
        return None, {}, problem
    try:
        config = load_config(options.config_file)
    except ConfigError as exc:
        return None, {}, str(exc)
    return config, config_to_json(config), None


def _ti_states(session: Session, ti_ids: list[str]) -> dict[str, str | None]:
    if not ti_ids:
        return {}
    states = repository.ti_states(session, ti_ids)
    return {ti_id: _state_text(state) for ti_id, state in states.items()}


def _state_text(state: Any) -> str | None:
    if state is None:
        return None
    return str(getattr(state, "value", state))
