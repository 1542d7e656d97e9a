"""BistroExecutor: LocalExecutor with Bistro's resource-forest admission in front of it.

The machine itself is the one node of the ``worker`` level. Its capacity comes from the
``worker`` level's limits, `worker_resources_override` for this host, and the CPU cores
and RAM detected here when `physical_resources` asks for them. `[bistro] worker_processes`
bounds how many tasks run at once regardless of resources. Up to `[bistro] prefetch_tasks`
more admitted tasks wait in the worker processes' queue, so that a process that finishes
one task starts the next without waiting for the scheduler loop. Tasks of other DAGs go to
that queue as LocalExecutor sends them, without a cap.
"""

from __future__ import annotations

import socket

from airflow.executors.base_executor import PARALLELISM
from airflow.executors.local_executor import LocalExecutor

from bistro_provider.core.workers import WorkerInfo, detect_physical
from bistro_provider.executors.base import BistroAdmissionMixin
from bistro_provider.options import BistroOptions


class BistroExecutor(BistroAdmissionMixin, LocalExecutor):
    """Run tasks in local worker processes once every node on their path has room."""

    def __init__(self, parallelism: int = PARALLELISM, team_name: str | None = None):
        options = BistroOptions.from_airflow()
        super().__init__(parallelism=options.worker_processes, team_name=team_name)
        self._init_bistro(options)
        # Workers take the next task from the queue the moment they finish one.
        self.prefetch = options.prefetch_tasks
        host = socket.gethostname()
        self._local_worker = WorkerInfo(
            name=host, host=host, physical=detect_physical()
        )

    def _current_workers(self) -> list[WorkerInfo]:
        return [self._local_worker]
