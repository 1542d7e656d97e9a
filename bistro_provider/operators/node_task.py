"""What every per-node task of a Bistro job shares: its admission and its status.

The executor records each admitted task's admission under the snapshot task's XCom key
``bistro_admission.<map_index>``. `BistroNodeTask.execute` reads it and lets the subclass
run the task. It turns the result into the task's Bistro status along the job's backoff
list and pushes that status as the XCom ``bistro_status``, which the executor stores when
the try ends. Then it maps the status to Airflow:

* ``done``: success;
* ``incomplete``: up for reschedule at once, without using a try;
* ``incomplete_backoff``: up for reschedule after the next backoff delay; never fails;
* ``error_backoff``: up for reschedule after the next backoff delay, and failed once the
  job's backoff list is used up (never, if it ends in ``"repeat"``);
* ``failed``: failed, with no retry.
"""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

from bistro_provider.core.config import parse_job_definition
from bistro_provider.core.model import Backoff, Config, Job
from bistro_provider.core.status import TaskStatus, apply_result

SNAPSHOT_TASK_ID = "snapshot_nodes"
PATHS_KEY = "bistro_paths"
STATUS_KEY = "bistro_status"
ADMISSION_KEY_PREFIX = "bistro_admission."

TaskResult = tuple[str, dict[str, Any] | None]
"""A Bistro status kind and the data reported with it."""


def admission_key(map_index: int) -> str:
    """Return the XCom key under which the executor records one task's admission."""
    return f"{ADMISSION_KEY_PREFIX}{map_index}"


def find_job(
    config: Config, name: str, job_config: dict[str, Any] | None, location: str
) -> Job | None:
    """Return job `name`: the config's, or the one `job_config` defines in a DAG file.

    :raises ValueError: when both define it, because only one definition can hold.
    """
    if job_config is None:
        return config.jobs.get(name)
    if name in config.jobs:
        raise ValueError(
            f"job {name!r} is defined twice: in the DAG file (job_config=) and in the config "
            f"{location}; rename one of them or remove job_config="
        )
    job, _warnings = parse_job_definition(config, name, job_config)
    return job


class BistroNodeTask(BaseOperator):
    """Base of the operators that run one task of a Bistro job on one node.

    Subclasses implement `_task_result`; `execute` does the rest (see the module docstring).

    :param job: the Bistro job name.
    :param node: the node name; mapped over the snapshot's output.
    :param config_file: the Bistro config file, read only when the executor's admission is
        missing (the task did not run under BistroExecutor).
    :param config_source: a config location (``variable:NAME``, ``plugin:NAME``) read
        instead of `config_file`.
    :param job_config: the job's definition when a DAG file defines it instead of the config.
    """

    def __init__(
        self,
        *,
        job: str,
        node: str,
        config_file: str = "",
        snapshot_task_id: str = SNAPSHOT_TASK_ID,
        config_source: str | None = None,
        job_config: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.job = job
        self.node = node
        self.config_file = config_file
        self.snapshot_task_id = snapshot_task_id
        self.config_source = config_source
        self.job_config = job_config

    @property
    def config_location(self) -> str:
        return self.config_source or self.config_file

    def _task_result(self, admission: dict[str, Any], context: Any) -> TaskResult:
        """Run the task on `self.node` and return its status kind and data."""
        raise NotImplementedError

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
        previous = (
            TaskStatus.from_json(admission["prev_status"]) if admission.get("prev_status") else None
        )
        kind, data = self._task_result(admission, context)
        backoff = Backoff(tuple(admission["backoff"]["delays"]), admission["backoff"]["repeat"])
        status = apply_result(previous, kind, backoff, time.time(), data=data)
        ti.xcom_push(key=STATUS_KEY, value=status.to_json())
        return self._finish(status)

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
        from bistro_provider.config_store import load_config_at

        config = load_config_at(self.config_location)
        job = find_job(config, self.job, self.job_config, self.config_location)
        if job is None:
            raise AirflowFailException(f"job {self.job!r} is not in {self.config_location}")
        paths = ti.xcom_pull(task_ids=self.snapshot_task_id, key="bistro_paths", map_indexes=-1)
        path = (paths or {}).get(self.node, [self.node])
        return {
            "path": path,
            "levels": list(config.settings.levels),
            "config": job.config,
            "command": list(job.command),
            "backoff": {"delays": list(job.backoff.delays), "repeat": job.backoff.repeat},
            "resources_by_node": {},
            "prev_status": None,
            "worker_node": socket.gethostname(),
            "worker_host": socket.gethostname(),
        }
