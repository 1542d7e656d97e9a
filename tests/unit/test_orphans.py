"""Orphaned running tasks are stopped only after their delay; vanished waiting tasks drop."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bistro_provider.core.live import LiveForest, RefreshIntervals
from bistro_provider.core.status import TaskStatus
from bistro_provider.executors.admission import AdmissionController, RunningTask, WaitingTask
from bistro_provider.executors.orphans import OrphanTracker, orphan_reason, waiting_to_drop


def write_config(
    path: Path,
    dbs: list[str],
    *,
    kill_after: Any = None,
    job: dict[str, Any] | None = None,
    disabled_host: bool = False,
) -> None:
    host: Any = {"children": dbs, "disabled": True} if disabled_host else dbs
    settings: dict[str, Any] = {
        "enabled": True,
        "nodes": {"levels": ["host", "db"], "node_sources": [{"source": "manual", "prefs": {"h1": host}}]},
        "resources": {"db": {"lock": {"limit": 1, "default": 1}}},
    }
    if kill_after is not None:
        settings["kill_orphan_tasks_after_sec"] = kill_after
    data = {"bistro_settings": settings, "bistro_job->job": job or {"owner": "test"}}
    path.write_text(json.dumps(data))
    stamp = path.stat().st_mtime + 10 + len(dbs) + (5 if disabled_host else 0)
    os.utime(path, (stamp, stamp))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path):
    path = tmp_path / "bistro.json"
    clock = Clock()
    live = LiveForest(
        str(path),
        RefreshIntervals(config_update=0, nodes_update=0, max_deletion_fraction=1.0),
        background=False,
        clock=clock,
    )
    admission = AdmissionController(live)
    admission.running["ti-1"] = RunningTask("ti-1", "dag", "run", "job", "d1", 0.0, "run", 0)
    return SimpleNamespace(path=path, live=live, admission=admission, clock=clock)


def reload(setup) -> None:
    setup.clock.now += 1
    setup.live.poll(force=True)


def test_task_on_existing_node_is_not_an_orphan(setup):
    write_config(setup.path, ["d1", "d2"])
    reload(setup)
    task = setup.admission.running["ti-1"]
    assert orphan_reason(task, setup.live.config, setup.live.forest) is None


def test_orphan_without_delay_is_never_stopped(setup):
    write_config(setup.path, ["d1", "d2"])
    reload(setup)
    write_config(setup.path, ["d2"])
    reload(setup)
    tracker = OrphanTracker()
    assert tracker.scan(setup.admission, setup.clock.now) == []
    assert tracker.scan(setup.admission, setup.clock.now + 10**6) == []


def test_orphan_is_stopped_after_its_delay(setup):
    write_config(setup.path, ["d2"], kill_after=30)
    reload(setup)
    tracker = OrphanTracker()
    first = setup.clock.now
    assert tracker.scan(setup.admission, first) == []
    assert tracker.scan(setup.admission, first + 29) == []
    [stop] = tracker.scan(setup.admission, first + 30)
    assert stop.ti_id == "ti-1"
    assert "no longer in the node list" in stop.note


def test_node_that_comes_back_cancels_the_stop(setup):
    write_config(setup.path, ["d2"], kill_after=30)
    reload(setup)
    tracker = OrphanTracker()
    first = setup.clock.now
    assert tracker.scan(setup.admission, first) == []
    write_config(setup.path, ["d1", "d2"], kill_after=30)
    reload(setup)
    assert tracker.scan(setup.admission, first + 10) == []
    write_config(setup.path, ["d2"], kill_after=30)
    reload(setup)
    assert tracker.scan(setup.admission, first + 31) == []


def test_job_delay_wins_over_global(setup):
    write_config(setup.path, ["d2"], kill_after=1000, job={"owner": "t", "kill_orphan_tasks_after_sec": 5})
    reload(setup)
    tracker = OrphanTracker()
    assert tracker.scan(setup.admission, 0.0) == []
    assert len(tracker.scan(setup.admission, 5.0)) == 1


def test_disabled_job_makes_orphans(setup):
    write_config(setup.path, ["d1"], job={"owner": "t", "enabled": False})
    reload(setup)
    reason = orphan_reason(setup.admission.running["ti-1"], setup.live.config, setup.live.forest)
    assert reason is not None
    assert "disabled" in reason


def test_disabled_ancestor_makes_orphans(setup):
    write_config(setup.path, ["d1"], disabled_host=True)
    reload(setup)
    reason = orphan_reason(setup.admission.running["ti-1"], setup.live.config, setup.live.forest)
    assert reason is not None
    assert "disabled" in reason


def _waiting(node: str) -> WaitingTask:
    ti = SimpleNamespace(id="ti-w", key=("k", node), dag_id="dag", run_id="run", map_index=0)
    return WaitingTask(SimpleNamespace(ti=ti), "job", node, "snapshot_nodes")


def test_waiting_task_of_vanished_node_is_dropped(setup):
    write_config(setup.path, ["d2"])
    reload(setup)
    setup.admission.waiting[("k", "d1")] = _waiting("d1")
    setup.admission.waiting[("k", "d2")] = _waiting("d2")
    drops = waiting_to_drop(setup.admission, {})
    assert [task.node for task, _note in drops] == ["d1"]


def test_continuous_job_drops_done_nodes(setup):
    write_config(setup.path, ["d1", "d2"], job={"owner": "t", "airflow": {"continuous": True}})
    reload(setup)
    setup.admission.waiting[("k", "d1")] = _waiting("d1")
    setup.admission.waiting[("k", "d2")] = _waiting("d2")
    statuses = {("job", "d1"): TaskStatus("done", 1.0)}
    drops = waiting_to_drop(setup.admission, statuses)
    assert [task.node for task, _note in drops] == ["d1"]


def test_plain_job_keeps_done_nodes(setup):
    write_config(setup.path, ["d1"])
    reload(setup)
    setup.admission.waiting[("k", "d1")] = _waiting("d1")
    statuses = {("job", "d1"): TaskStatus("done", 1.0)}
    assert waiting_to_drop(setup.admission, statuses) == []
