"""BistroCeleryExecutor: CeleryExecutor with Bistro's resource-forest admission in front.

Every Celery worker that consumes a queue named after its host becomes a node of the
``worker`` level (see `celery_workers`). Its capacity comes from the ``worker`` level's
limits and `worker_resources_override`. Admission picks a worker with room by
`remote_worker_selector` and sends the task to that worker's own queue, so placement is
exact. When a worker stops answering for `[bistro] worker_lost_after` seconds, its node
leaves the forest and the resources its tasks held are released at the next pass; Airflow
then fails or retries those task instances as it does for any lost worker.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.celery.executors.celery_executor import CeleryExecutor

from bistro_provider.core.workers import WorkerInfo
from bistro_provider.executors.base import BistroAdmissionMixin
from bistro_provider.executors.celery_workers import CeleryWorkerDiscovery
from bistro_provider.options import BistroOptions

log = logging.getLogger(__name__)


class BistroCeleryExecutor(BistroAdmissionMixin, CeleryExecutor):
    """Send tasks to the Celery worker chosen by admission, once their path has room."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        options = BistroOptions.from_airflow()
        self._init_bistro(options)
        self.discovery = CeleryWorkerDiscovery(
            self.celery_app,
            interval=options.worker_refresh_interval,
            lost_after=options.worker_lost_after,
        )

    def start(self) -> None:
        super().start()
        self.discovery.start()

    def _current_workers(self) -> list[WorkerInfo]:
        return self.discovery.workers()

    def _route(self, workload: Any, worker: WorkerInfo | None) -> None:
        if worker is not None and worker.queue:
            workload.ti.queue = worker.queue

    def end(self, synchronous: bool = False) -> None:
        self.discovery.stop()
        super().end()

    def terminate(self) -> None:
        self.discovery.stop()
        super().terminate()
