"""BistroExecutor: LocalExecutor with Bistro's resource-forest admission in front of it.

The machine itself is the one node of the ``worker`` level. Its capacity comes from the
``worker`` level's limits, `worker_resources_override` for this host, and the CPU cores
and RAM detected here when `physical_resources` asks for them. `[bistro] worker_processes`
bounds how many tasks run at once regardless of resources. `[bistro] prefetch_tasks` more
admitted tasks wait in the worker processes' queue, so that a process that finishes one
task starts the next without waiting for the scheduler loop.
"""

from __future__ import annotations

import socket
from multiprocessing.connection import wait

from airflow.configuration import conf
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
        self.ending_wait = min(
            1.0, conf.getfloat("scheduler", "scheduler_idle_sleep_time", fallback=1.0)
        )
        """Maximum time in seconds that `sync` waits for a task to end."""

    def _current_workers(self) -> list[WorkerInfo]:
        return [self._local_worker]

    def sync(self) -> None:
        self._wait_for_an_ending()
        super().sync()

    def _wait_for_an_ending(self) -> None:
        """Wait up to `ending_wait` for a task to end when every worker process is busy and
        tasks are waiting.

        A scheduler loop that reads no ending sleeps up to `scheduler_idle_sleep_time`, and
        a task that ends during that sleep leaves its process idle until the loop wakes.
        Waiting here instead returns as soon as a process is free. LocalExecutor gets the
        same effect from blocking on its full task queue.
        """
        if not self.queued_tasks or len(self._dispatched) < self.parallelism:
            return
        reader = getattr(self.result_queue, "_reader", None)
        if reader is None or not self.result_queue.empty():
            return
        wait([reader], timeout=self.ending_wait)
