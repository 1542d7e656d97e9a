"""Operators of a Bistro job DAG: a node snapshot, then one mapped task per node.

The snapshot task fetches the nodes once for the run and returns the task nodes' names in
a stable (sorted) order; the mapped task expands over that list, so map index i is always
the i-th name. The executor reads the same list from the metadata database to learn which
node a queued task instance is for, admits it, and records what it granted under the
snapshot task's XCom key ``bistro_admission.<map_index>``, which the task then reads.
`BistroNodeTask` (in `bistro_provider.operators.node_task`) reads it and maps the task's
Bistro status to Airflow; `BistroOperatorTask` runs any Airflow operator the same way.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from bistro_provider.core.errors import StatusParseError
from bistro_provider.core.filters import task_eligibility
from bistro_provider.core.protocol import CommandResult, run_task_command, task_argument
from bistro_provider.core.resources import task_needs
from bistro_provider.core.status import parse_status_line
from bistro_provider.nodes import fetch_forest
from bistro_provider.operators.node_task import (
    ADMISSION_KEY_PREFIX,
    PATHS_KEY,
    SNAPSHOT_TASK_ID,
    STATUS_KEY,
    BistroNodeTask,
    TaskResult,
    admission_key,
    find_job,
)

log = logging.getLogger(__name__)

__all__ = [
    "ADMISSION_KEY_PREFIX",
    "PATHS_KEY",
    "SNAPSHOT_TASK_ID",
    "STATUS_KEY",
    "BistroNodeSnapshotOperator",
    "BistroTaskOperator",
    "admission_key",
]


class BistroNodeSnapshotOperator(BaseOperator):
    """Fetch the job's nodes once for this run and return their names, sorted.

    :param job: the Bistro job name (``bistro_job->NAME`` in the config).
    :param config_file: the Bistro config file; nodes come from its node sources.
    :param script_timeout: seconds a node-source script may run.
    :param config_source: a config location (``variable:NAME``, ``plugin:NAME``) read
        instead of `config_file`.
    :param job_config: the job's definition when a DAG file defines it instead of the config.
    """

    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        job: str,
        config_file: str,
        script_timeout: float = 60.0,
        config_source: str | None = None,
        job_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.job = job
        self.config_file = config_file
        self.script_timeout = script_timeout
        self.config_source = config_source
        self.job_config = job_config

    def execute(self, context: Any) -> list[str]:
        from bistro_provider.config_store import load_config_at

        location = self.config_source or self.config_file
        config = load_config_at(location)
        try:
            job = find_job(config, self.job, self.job_config, location)
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        if job is None:
            raise AirflowFailException(
                f"job {self.job!r} is not in {location}; defined jobs: "
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
        # A continuous job's run maps every current node, and the executor skips the nodes
        # the job has already done. Mapping only the nodes that the triggering events list
        # as added would lose nodes: Airflow 3.3 drops node-graph events that arrive while
        # the DAG waits at max_active_runs, except the first.
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


def _check_map_length(count: int, job: str) -> None:
    from airflow.sdk.configuration import conf

    limit = conf.getint("core", "max_map_length", fallback=1024)
    if count > limit:
        raise AirflowFailException(
            f"job {job!r} has {count} task nodes but [core] max_map_length is {limit}; "
            f"raise it to at least {count} (AIRFLOW__CORE__MAX_MAP_LENGTH={count})"
        )


class BistroTaskOperator(BistroNodeTask):
    """Run one Bistro task: the job's command (or a Python callable) on one node.

    The status maps to Airflow as follows: ``done`` succeeds; ``incomplete`` reschedules
    at once without using a try; ``incomplete_backoff`` reschedules after the next backoff
    delay; ``error_backoff`` reschedules after the next backoff delay and fails once the
    job's backoff list is used up (never, if it ends in ``"repeat"``); ``failed`` fails with
    no retry. A missing or unparsable status counts as ``error_backoff``.

    Parameters other than these two are those of `BistroNodeTask`.

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
        super().__init__(
            job=job,
            node=node,
            config_file=config_file,
            snapshot_task_id=snapshot_task_id,
            **kwargs,
        )
        self.python_callable = python_callable
        self.command_timeout = command_timeout
        self._command_pgid: int | None = None

    def _task_result(self, admission: dict[str, Any], context: Any) -> TaskResult:
        return self._run(admission)

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
        supervisor = os.getppid()
        try:
            result = run_task_command(
                command,
                self.node,
                argument,
                timeout=self.command_timeout,
                on_output=lambda line: self.log.info("%s", line),
                on_start=self._remember_command,
                # A task process whose supervisor died gets no heartbeats, so Airflow fails
                # it and frees its resources; its command must not keep running meanwhile.
                keep_running=lambda: os.getppid() == supervisor,
                die_with_parent=True,
            )
        except (FileNotFoundError, PermissionError, ValueError) as exc:
            self.log.error("Job %s could not start its command %s: %s", self.job, command, exc)
            return "error_backoff", {"exception": f"failed to start the command: {exc}"}
        finally:
            self._command_pgid = None
        return self._result_of(result)

    def _result_of(self, result: CommandResult) -> tuple[str, dict[str, Any] | None]:
        if result.timed_out:
            message = (
                f"timed out after {self.command_timeout:g} s (airflow.task_timeout_sec); "
                "the command's process group was killed"
            )
            self.log.error("Command of job %s on %s %s", self.job, self.node, message)
            return "error_backoff", {"exception": message, "timed_out": True}
        if result.abandoned:
            # Nothing is logged: the supervisor that received this process's logs is gone.
            message = "the Airflow task supervisor exited; the command's process group was killed"
            return "error_backoff", {"exception": message}
        return self._parse(result.status_text)

    def _remember_command(self, pgid: int) -> None:
        self._command_pgid = pgid

    def on_kill(self) -> None:
        """Kill the running command's process group when Airflow stops this task.

        The command runs in a session of its own, so the signal that stops the task process
        does not reach it; without this it would keep running after its resources were freed.
        """
        pgid = getattr(self, "_command_pgid", None)
        if pgid is None:
            return
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.log.warning("Task stopped by Airflow; killed the command's process group %d", pgid)

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


def needs_by_node_name(settings: Any, job: Any, path_nodes: list[Any]) -> dict[str, dict[str, int]]:
    """Return Bistro's `resources_by_node`: node name to the amounts the task takes there."""
    return {name: amounts for (_level, name), amounts in task_needs(settings, job, path_nodes).items()}
