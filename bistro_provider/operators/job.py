"""Operators of a Bistro job DAG: a node snapshot, then one mapped task per node.

The snapshot task fetches the nodes once for the run and returns the task nodes' names in
a stable (sorted) order; the mapped task expands over that list, so map index i is always
the i-th name. The executor reads the same list from the metadata database to learn which
node a queued task instance is for, admits it, and records what it granted under the
snapshot task's XCom key ``bistro_admission.<map_index>``, which the task then reads.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSkipException,
)

from bistro_provider.core.config import load_config
from bistro_provider.core.errors import StatusParseError
from bistro_provider.core.filters import task_eligibility
from bistro_provider.core.model import Backoff
from bistro_provider.core.protocol import run_task_command, task_argument
from bistro_provider.core.resources import task_needs
from bistro_provider.core.status import TaskStatus, apply_result, parse_status_line
from bistro_provider.nodes import fetch_forest

log = logging.getLogger(__name__)

SNAPSHOT_TASK_ID = "snapshot_nodes"
PATHS_KEY = "bistro_paths"
STATUS_KEY = "bistro_status"
ADMISSION_KEY_PREFIX = "bistro_admission."


def admission_key(map_index: int) -> str:
    """Return the XCom key under which the executor records one task's admission."""
    return f"{ADMISSION_KEY_PREFIX}{map_index}"


class BistroNodeSnapshotOperator(BaseOperator):
    """Fetch the job's nodes once for this run and return their names, sorted.

    :param job: the Bistro job name (``bistro_job->NAME`` in the config).
    :param config_file: the Bistro config file; nodes come from its node sources.
    :param script_timeout: seconds a node-source script may run.
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, job: str, config_file: str, script_timeout: float = 60.0, **kwargs):
        super().__init__(**kwargs)
        self.job = job
        self.config_file = config_file
        self.script_timeout = script_timeout

    def execute(self, context: Any) -> list[str]:
        config = load_config(self.config_file)
        job = config.jobs.get(self.job)
        if job is None:
            raise AirflowFailException(
                f"job {self.job!r} is not in {self.config_file}; defined jobs: "
                f"{', '.join(sorted(config.jobs)) or 'none'}"
            )
        if job.errors:
            raise AirflowFailException(
                f"job {self.job!r} cannot run until its config is fixed: "
                + "; ".join(str(issue) for issue in job.errors)
            )
        if not job.enabled:
            raise AirflowSkipException(f"job {self.job!r} is disabled (enabled: false)")
        settings = config.settings
        forest = fetch_forest(settings, script_timeout=self.script_timeout)
        level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
        paths: dict[str, list[str]] = {}
        for node in forest.nodes(level):
            if node.name not in paths and task_eligibility(job, node, settings.levels) == "yes":
                paths[node.name] = node.path_names()
        added = _added_by_trigger(context)
        if added is not None:
            # A continuous job's run covers the nodes that appeared since the last run;
            # nodes it has already done are skipped by the executor.
            paths = {name: path for name, path in paths.items() if name in added}
        names = sorted(paths)
        _check_map_length(len(names), self.job)
        context["ti"].xcom_push(key=PATHS_KEY, value=paths)
        self.log.info(
            "Job %s: %d task nodes on level %s out of %d nodes fetched",
            self.job,
            len(names),
            settings.levels[level],
            len(forest),
        )
        return names


def _added_by_trigger(context: Any) -> set[str] | None:
    """Return the node names that the node-graph events behind this run report as added.

    None means "all current nodes": the run was not started by node-graph events, or one of
    them did not know what was added (the first event of a watcher lists every node).
    """
    events = context.get("triggering_asset_events") or {}
    added: set[str] = set()
    seen = False
    for asset_events in events.values():
        for event in asset_events:
            payload = (getattr(event, "extra", None) or {}).get("payload")
            if not isinstance(payload, dict) or "fingerprint" not in payload:
                continue
            seen = True
            names = payload.get("added")
            if names is None or payload.get("added_count", len(names)) > len(names):
                return None
            if payload.get("level") is None:
                # Without a level the trigger lists names as LEVEL/NAME.
                names = [str(name).split("/", 1)[-1] for name in names]
            added.update(str(name) for name in names)
    return added if seen else None


def _check_map_length(count: int, job: str) -> None:
    from airflow.sdk.configuration import conf

    limit = conf.getint("core", "max_map_length", fallback=1024)
    if count > limit:
        raise AirflowFailException(
            f"job {job!r} has {count} task nodes but [core] max_map_length is {limit}; "
            f"raise it to at least {count} (AIRFLOW__CORE__MAX_MAP_LENGTH={count})"
        )


class BistroTaskOperator(BaseOperator):
    """Run one Bistro task: the job's command (or a Python callable) on one node.

    The status maps to Airflow as follows: ``done`` succeeds; ``incomplete`` reschedules
    at once without using a try; ``incomplete_backoff`` reschedules after the next backoff
    delay; ``error_backoff`` reschedules after the next backoff delay and fails once the
    job's backoff list is used up (never, if it ends in ``"repeat"``); ``failed`` fails with
    no retry. A missing or unparsable status counts as ``error_backoff``.

    :param job: the Bistro job name.
    :param node: the node name; mapped over the snapshot's output.
    :param config_file: the Bistro config, read when the executor's admission is missing.
    :param python_callable: runs instead of the job's command; called as
        ``python_callable(node, argument)`` with Bistro's JSON argument as a dict, and may
        return a status label or ``{"result": label, "data": {...}}`` (None means done).
    :param command_timeout: seconds before the command's process group is killed.
    """

    ui_color = "#fde8d7"

    def __init__(
        self,
        *,
        job: str,
        node: str,
        config_file: str,
        snapshot_task_id: str = SNAPSHOT_TASK_ID,
        python_callable: Callable[..., Any] | None = None,
        command_timeout: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.job = job
        self.node = node
        self.config_file = config_file
        self.snapshot_task_id = snapshot_task_id
        self.python_callable = python_callable
        self.command_timeout = command_timeout

    def execute(self, context: Any) -> Any:
        ti = context["ti"]
        admission = ti.xcom_pull(
            task_ids=self.snapshot_task_id, key=admission_key(ti.map_index), map_indexes=-1
        )
        if isinstance(admission, str):
            admission = json.loads(admission)
        if not admission:
            self.log.warning(
                "Task %s of job %s was not admitted by BistroExecutor; running without "
                "resource admission (set [core] executor to BistroExecutor to enforce limits)",
                self.node,
                self.job,
            )
            admission = self._admission_without_executor(ti)
        previous = TaskStatus.from_json(admission["prev_status"]) if admission.get(
            "prev_status"
        ) else None
        kind, data = self._run(admission)
        backoff = Backoff(tuple(admission["backoff"]["delays"]), admission["backoff"]["repeat"])
        status = apply_result(previous, kind, backoff, time.time(), data=data)
        ti.xcom_push(key=STATUS_KEY, value=status.to_json())
        return self._finish(status)

    def _run(self, admission: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        argument = task_argument(
            job=self.job,
            path_to_node=admission["path"],
            config=admission.get("config", {}),
            resources_by_node=admission.get("resources_by_node", {}),
            prev_status=admission.get("prev_status"),
            worker_node=admission.get("worker_node", ""),
            worker_host=admission.get("worker_host", socket.gethostname()),
        )
        if self.python_callable is not None:
            return self._run_callable(argument)
        command = admission.get("command") or []
        try:
            result = run_task_command(
                command,
                self.node,
                argument,
                timeout=self.command_timeout,
                on_output=lambda line: self.log.info("%s", line),
            )
        except (FileNotFoundError, PermissionError, ValueError) as exc:
            self.log.error("Job %s could not start its command %s: %s", self.job, command, exc)
            return "error_backoff", {"exception": f"failed to start the command: {exc}"}
        if result.timed_out:
            self.log.error("Command timed out after %s s and was killed", self.command_timeout)
        return self._parse(result.status_text)

    def _run_callable(self, argument: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
        assert self.python_callable is not None
        try:
            returned = self.python_callable(self.node, argument)
        except Exception as exc:
            self.log.exception("Job %s raised on node %s", self.job, self.node)
            return "error_backoff", {"exception": repr(exc)}
        if returned is None:
            return "done", None
        if isinstance(returned, dict):
            return self._parse(json.dumps(returned))
        return self._parse(str(returned))

    def _parse(self, text: str) -> tuple[str, dict[str, Any] | None]:
        try:
            return parse_status_line(text)
        except StatusParseError as exc:
            self.log.error("Invalid status from the task; raw status text: %r", text[-2000:])
            return "error_backoff", {"exception": str(exc)}

    def _finish(self, status: TaskStatus) -> Any:
        self.log.info("Bistro status of %s on %s: %s", self.job, self.node, status.kind)
        now = datetime.now(tz=timezone.utc)
        if status.kind == "done":
            return status.data
        if status.kind == "failed":
            raise AirflowFailException(f"task reported failed: {status.data or {}}")
        if status.kind == "incomplete":
            raise AirflowRescheduleException(now)
        self.log.info("Backing off for %d s before the next attempt", status.backoff)
        raise AirflowRescheduleException(now + timedelta(seconds=status.backoff))

    def _admission_without_executor(self, ti: Any) -> dict[str, Any]:
        config = load_config(self.config_file)
        job = config.jobs[self.job]
        paths = ti.xcom_pull(task_ids=self.snapshot_task_id, key="bistro_paths", map_indexes=-1)
        path = (paths or {}).get(self.node, [self.node])
        return {
            "path": path,
            "config": job.config,
            "command": list(job.command),
            "backoff": {"delays": list(job.backoff.delays), "repeat": job.backoff.repeat},
            "resources_by_node": {},
            "prev_status": None,
            "worker_node": socket.gethostname(),
            "worker_host": socket.gethostname(),
        }


def needs_by_node_name(settings: Any, job: Any, path_nodes: list[Any]) -> dict[str, dict[str, int]]:
    """Return Bistro's `resources_by_node`: node name to the amounts the task takes there."""
    return {name: amounts for (_level, name), amounts in task_needs(settings, job, path_nodes).items()}
