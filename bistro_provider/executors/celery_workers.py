"""Finds live Celery workers and their own queues, so each becomes a ``worker`` node.

A worker takes part when it consumes a queue named exactly like its host name (for
`airflow celery worker --celery-hostname worker-a --queues worker-a,default` that is
``worker-a``): tasks sent to that queue reach that worker alone, so placement is exact. A
worker that has not answered for `lost_after` seconds is treated as gone.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bistro_provider.core.workers import WorkerInfo

log = logging.getLogger(__name__)


class CeleryWorkerDiscovery:
    """Polls `app.control.inspect().active_queues()` in a background thread.

    :param app: the Celery app the executor sends tasks with.
    :param interval: seconds between polls.
    :param lost_after: seconds without an answer after which a worker is dropped.
    """

    def __init__(self, app: Any, interval: float = 5.0, lost_after: float = 30.0):
        self.app = app
        self.interval = interval
        self.lost_after = lost_after
        self._seen: dict[str, tuple[WorkerInfo, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned: set[str] = set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self.poll_once()
        self._thread = threading.Thread(target=self._run, name="bistro-celery-workers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def workers(self) -> list[WorkerInfo]:
        """Return the workers seen within `lost_after` seconds, sorted by name."""
        cutoff = time.time() - self.lost_after
        with self._lock:
            return sorted(
                (info for info, seen in self._seen.values() if seen >= cutoff),
                key=lambda info: info.name,
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll_once()

    def poll_once(self) -> None:
        try:
            replies = self.app.control.inspect(timeout=min(2.0, self.interval)).active_queues()
        except Exception:  # a broker outage must not stop discovery; workers age out instead
            log.exception("Could not ask Celery workers for their queues; will retry")
            return
        now = time.time()
        found = {}
        for node_name, queues in (replies or {}).items():
            info = self._worker_info(str(node_name), queues or [])
            if info is not None:
                found[info.name] = info
        with self._lock:
            for name, info in found.items():
                if name not in self._seen:
                    log.info("Celery worker %s joined (queue %s)", name, info.queue)
                self._seen[name] = (info, now)
            for name, (_info, seen) in list(self._seen.items()):
                if now - seen > self.lost_after:
                    log.warning("Celery worker %s has not responded for %.0f s; dropping it", name, now - seen)
                    del self._seen[name]

    def _worker_info(self, node_name: str, queues: list[Any]) -> WorkerInfo | None:
        host = node_name.split("@", 1)[-1]
        names = {str(queue.get("name")) for queue in queues if isinstance(queue, dict)}
        if host not in names:
            if node_name not in self._warned:
                self._warned.add(node_name)
                log.warning(
                    "Celery worker %s does not consume a queue named %r, so Bistro cannot send "
                    "tasks to it alone; start it with --queues %s,... to make it a worker node",
                    node_name,
                    host,
                    host,
                )
            return None
        return WorkerInfo(name=host, host=host, queue=host)
