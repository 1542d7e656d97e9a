"""Scoped admission passes against full passes over the same waiting tasks.

A scoped pass (`run_pass(..., scoped=True)`) looks only at the waiting tasks that the
changes since the last pass can let start. With a policy whose order does not depend on
which jobs are in the pass (ranked_priority with distinct priorities, lexicographic node
order), it must start exactly the tasks a full pass starts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest

from bistro_provider.core.status import TaskStatus
from bistro_provider.core.workers import WorkerInfo, WorkerPool
from bistro_provider.executors.admission import AdmissionController, Granted
from tests.unit.test_executor import (  # noqa: F401
    live_forest,
    make_workload,
    patch_snapshot,
    snapshot_of,
)


def write_fleet(
    path: Path, *, hosts: int, dbs: int, worker_slots: int | None = None, depends: bool = False
) -> str:
    """Hosts of `dbs` databases each, host limit 2, db limit 1, two ranked jobs."""
    prefs = {f"host{h}": [f"db{h}_{d}" for d in range(dbs)] for h in range(hosts)}
    resources: dict[str, Any] = {
        "host": {"host_concurrency": {"limit": 2, "default": 1}},
        "db": {"db_concurrency": {"limit": 1, "default": 1}},
    }
    if worker_slots is not None:
        resources["worker"] = {"slots": {"limit": worker_slots, "default": 1}}
    data: dict[str, Any] = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": "ranked_priority",
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [{"source": "manual", "prefs": prefs}],
            },
            "resources": resources,
        },
        "bistro_job->urgent": {"owner": "test", "priority": 10},
        "bistro_job->backfill": {
            "owner": "test",
            "priority": 1,
            **({"depends_on": ["urgent"]} if depends else {}),
        },
    }
    path.write_text(json.dumps(data))
    return str(path)


def started(granted: list[Granted]) -> list[tuple[str, str]]:
    return sorted((item.admission.job, item.admission.node) for item in granted)


class Twin:
    """The same waiting tasks in a controller that runs full passes and in one that runs
    scoped passes."""

    def __init__(self, live: Any, workers: list[WorkerInfo] | None = None):
        self.full = AdmissionController(live, worker_name="w", workers=self._pool(live, workers))
        self.scoped = AdmissionController(
            live, worker_name="w", workers=self._pool(live, workers)
        )
        self.controllers = (self.full, self.scoped)
        if workers:
            for controller in self.controllers:
                controller.set_workers(workers)
        self.running: list[str] = []
        self.node_of: dict[str, str] = {}

    @staticmethod
    def _pool(live: Any, workers: list[WorkerInfo] | None) -> WorkerPool | None:
        return WorkerPool(live.config.settings) if workers else None

    def add(self, workloads: list[Any]) -> None:
        for controller in self.controllers:
            controller.resolve(workloads, MagicMock())

    def admit(self, free: int, statuses: dict[Any, Any] | None = None) -> list[tuple[str, str]]:
        full = self.full.run_pass(free, statuses=statuses or {})
        scoped = self.scoped.run_pass(free, statuses=statuses or {}, scoped=True)
        assert started(scoped) == started(full)
        for controller, granted in ((self.full, full), (self.scoped, scoped)):
            for item in granted:
                controller.forget(item.task.workload.ti.key)
        for item in full:
            self.running.append(item.task.ti_id)
            self.node_of[item.task.ti_id] = item.admission.node
        return started(full)

    def end(self, ti_ids: list[str]) -> None:
        for ti_id in ti_ids:
            self.running.remove(ti_id)
            for controller in self.controllers:
                controller.release(ti_id)


@pytest.mark.parametrize("seed", range(20))
def test_scoped_passes_start_what_full_passes_start(tmp_path, patch_snapshot, seed) -> None:
    rng = random.Random(seed)
    live = live_forest(write_fleet(tmp_path / "bistro.json", hosts=8, dbs=5))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    twin = Twin(live)
    jobs = ("urgent", "backfill")
    twin.add([make_workload(i, job=job) for job in jobs for i in range(len(names))])
    looked_at_fewer = 0
    run = 0
    starts = 0

    for _step in range(60):
        # A small free count makes some passes stop early; the next pass is then full.
        starts += len(twin.admit(free=rng.choice([1, 3, 100])))
        if twin.scoped.last_pass_tasks < len(twin.scoped.waiting):
            looked_at_fewer += 1
        ending = rng.sample(twin.running, k=min(len(twin.running), rng.randint(0, 3)))
        twin.end(ending)
        if rng.random() < 0.2:
            run += 1
            nodes = rng.sample(range(len(names)), k=4)
            twin.add([make_workload(i, job=rng.choice(jobs), run_id=f"r{run}") for i in nodes])

    assert set(twin.full.ledger.holders()) == set(twin.scoped.ledger.holders())
    assert twin.full.waiting.keys() == twin.scoped.waiting.keys()
    assert looked_at_fewer > 0, "no pass was scoped"
    assert starts >= 40


def test_scoped_pass_looks_only_under_the_freed_host(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_fleet(tmp_path / "bistro.json", hosts=50, dbs=10))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    twin = Twin(live)
    twin.add([make_workload(i, job="backfill") for i in range(len(names))])
    assert len(twin.admit(free=1000)) == 100  # two per host
    first = twin.running[0]
    freed_host = twin.node_of[first].split("_")[0]  # "db7" for the dbs of host7

    twin.end([first])
    [(_job, node)] = twin.admit(free=1000)

    assert node.split("_")[0] == freed_host
    # Only the waiting databases of the freed host were looked at.
    assert twin.scoped.last_pass_tasks == 10 - 2
    assert twin.full.last_pass_tasks == 500 - 100


def test_freed_worker_scopes_worker_waiters(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_fleet(tmp_path / "bistro.json", hosts=4, dbs=3, worker_slots=2))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    workers = [WorkerInfo(name="w1", host="w1")]
    twin = Twin(live, workers)
    twin.add([make_workload(i, job="backfill") for i in range(len(names))])
    assert len(twin.admit(free=100)) == 2
    waiting_for_worker = [t for t in twin.scoped.waiting.values() if t.reason == "no worker available"]
    assert waiting_for_worker

    twin.end([twin.running[0]])
    assert len(twin.admit(free=100)) == 1
    # The freed worker brought in the tasks that had waited for a worker.
    assert twin.scoped.last_pass_tasks >= len(waiting_for_worker) - 1


def test_earlier_run_goes_first(tmp_path, patch_snapshot) -> None:
    """The earlier run's task waited for a status that then changed outside the executor.
    A later run's task on the same node arrives, and it brings the earlier one into the
    scoped pass, which starts the earlier one."""
    live = live_forest(write_fleet(tmp_path / "bistro.json", hosts=2, dbs=2, depends=True))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    twin = Twin(live)
    index = names.index("db0_0")
    twin.add([make_workload(index, job="backfill", run_id="early")])
    assert twin.admit(free=10) == []
    assert next(iter(twin.scoped.waiting.values())).reason.startswith("dependency not done")

    twin.add([make_workload(index, job="backfill", run_id="late")])
    done = {("urgent", "db0_0"): TaskStatus("done", 0.0)}
    assert twin.admit(free=10, statuses=done) == [("backfill", "db0_0")]

    [task] = twin.scoped.waiting.values()
    assert task.workload.ti.run_id == "late"
