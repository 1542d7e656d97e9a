"""Publishes the executor's view (config, forest, errors, workers, waiting tasks).

The API-server, the CLI and the UI run in other processes, so they read these documents
instead of asking the scheduler. A document is rewritten only when its content changed.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sqlalchemy.orm import Session

from bistro_provider.core.config import config_to_json
from bistro_provider.executors.admission import AdmissionController
from bistro_provider.store import repository


class StatePublisher:
    """Writes the published documents of one executor."""

    def __init__(self, admission: AdmissionController):
        self.admission = admission
        self._published: dict[str, Any] = {}

    def publish(self, session: Session) -> None:
        live = self.admission.live
        documents: dict[str, Any] = {"waiting": self._waiting(), "workers": self._workers()}
        if live is not None:
            documents["errors"] = {
                "config_file": live.config_path,
                "errors": live.errors(),
                "forest_time": live.forest_time,
            }
            if live.config is not None and self._published.get("config#id") is not live.config:
                documents["config"] = config_to_json(live.config)
                self._published["config#id"] = live.config
            if live.forest is not None and self._published.get("forest#id") is not live.forest:
                documents["forest"] = {
                    "levels": list(live.forest.levels),
                    "fetched_at": live.forest_time,
                    "nodes": live.forest.to_json(),
                }
                self._published["forest#id"] = live.forest
        now = time.time()
        for name, body in documents.items():
            digest = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
            if self._published.get(name) == digest:
                continue
            repository.publish(session, name, body, owner=self.admission.owner, now=now)
            self._published[name] = digest

    def _workers(self) -> list[dict[str, Any]]:
        """Return the worker nodes with their capacity and what is in use on each."""
        pool = self.admission.workers
        if pool is None:
            return []
        return [
            {
                "name": name,
                "host": worker.host,
                "queue": worker.queue,
                "capacity": pool.capacity_of(name),
                "used": self.admission.ledger.used(("worker", name)),
            }
            for name, worker in sorted(pool.workers.items())
        ]

    def _waiting(self) -> list[dict[str, Any]]:
        items = []
        for task in self.admission.waiting.values():
            ti = task.workload.ti
            items.append(
                {
                    "ti_id": str(ti.id),
                    "dag_id": ti.dag_id,
                    "run_id": ti.run_id,
                    "task_id": ti.task_id,
                    "map_index": ti.map_index,
                    "try_number": ti.try_number,
                    "job": task.job,
                    "node": task.node,
                    "reason": task.reason,
                    "since": task.since,
                }
            )
        items.sort(key=lambda item: (item["job"], item["node"]))
        return items
