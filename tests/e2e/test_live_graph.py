"""The live node graph with the real scheduler, triggerer and BistroExecutor.

A script node source reads a JSON file that the test rewrites while the job runs. The job
is continuous: its DAG runs whenever the graph changes, and statuses persist across runs.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from demo.stack import AirflowStack

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "bistro_live"

NODES_SCRIPT = textwrap.dedent(
    """
    import json, sys
    fleet = json.load(open(sys.argv[1]))
    parent = sys.argv[2]
    for name in (list(fleet) if parent not in fleet else fleet[parent]):
        print(name)
    """
)

TASK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    start = time.time()
    out, hold = sys.argv[1], float(sys.argv[2])
    node, pipe, argument = sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    host = argument["path_to_node"][-2]
    with open(os.path.join(out, f"{node}-{os.getpid()}.start"), "w") as handle:
        json.dump({"node": node, "host": host, "start": start}, handle)
    time.sleep(hold)
    with open(os.path.join(out, f"{node}-{os.getpid()}.json"), "w") as handle:
        json.dump({"node": node, "host": host, "start": start, "end": time.time()}, handle)
    with open(pipe, "w") as status:
        status.write("done\\n")
    """
)


def write_fleet(path: Path, fleet: dict[str, list[str]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(fleet))
    os.replace(tmp, path)


def make_setup(tmp_path: Path, fleet: dict[str, list[str]], hold: float, **settings: Any):
    out = tmp_path / "out"
    out.mkdir()
    fleet_file = tmp_path / "fleet.json"
    write_fleet(fleet_file, fleet)
    nodes_script = tmp_path / "nodes.py"
    nodes_script.write_text(NODES_SCRIPT)
    task_script = tmp_path / "task.py"
    task_script.write_text(TASK_SCRIPT)
    script = [sys.executable, str(nodes_script), str(fleet_file)]
    config = {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "original",
                "node_sources": [
                    {"source": "script", "prefs": {"parent_level": "instance", "script": script}},
                    {"source": "script", "prefs": {"parent_level": "host", "script": script}},
                ],
            },
            "resources": settings.pop("resources"),
            **settings,
        },
        "bistro_job->live": {
            "owner": "live-test",
            "command": [sys.executable, str(task_script), str(out), str(hold)],
            "airflow": {"continuous": True, "poll_interval": 2},
        },
    }
    config_file = tmp_path / "bistro.json"
    config_file.write_text(json.dumps(config))
    env = {
        "AIRFLOW__CORE__EXECUTOR": "bistro_provider.executors.bistro_executor.BistroExecutor",
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config_file),
        "AIRFLOW__BISTRO__NODES_UPDATE_INTERVAL": "2",
        "AIRFLOW__BISTRO__STATE_SYNC_INTERVAL": "1",
        "AIRFLOW__BISTRO__WORKER_PROCESSES": "8",
        "PYTHONPATH": str(REPO_ROOT),
    }
    stack = AirflowStack(tmp_path / "airflow", REPO_ROOT / "dags", env, triggerer=True)
    return stack, fleet_file, out


def task_rows(stack: AirflowStack) -> list[dict[str, Any]]:
    with sqlite3.connect(stack.home / "airflow.db") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT ti.run_id, ti.map_index, ti.rendered_map_index AS node, ti.state, "
            "ti.end_date, n.content AS note FROM task_instance ti "
            "LEFT JOIN task_instance_note n ON n.ti_id = ti.id "
            "WHERE ti.dag_id = ? AND ti.task_id = 'run'",
            (DAG_ID,),
        ).fetchall()
    return [dict(row) for row in rows]


def grants(stack: AirflowStack) -> list[dict[str, Any]]:
    with sqlite3.connect(stack.home / "airflow.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT node, holdings FROM bistro_grant")]


def wait_for(predicate, timeout: float, what: str) -> float:
    started = time.time()
    while time.time() - started < timeout:
        if predicate():
            return time.time() - started
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def starts(out: Path, node: str) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in out.glob(f"{node}-*.start")]


def test_dropped_node_is_skipped_and_new_node_runs(tmp_path):
    fleet = {"h1": ["d4", "d1", "d2", "d3"]}
    stack, fleet_file, out = make_setup(
        tmp_path,
        fleet,
        hold=8.0,
        resources={"host": {"slots": {"limit": 3, "default": 1}}, "db": {"lock": {"limit": 1, "default": 1}}},
    )
    with stack:
        wait_for(lambda: len(list(out.glob("*.start"))) >= 3, 120, "three tasks starting")
        assert starts(out, "d4") == []
        write_fleet(fleet_file, {"h1": ["d1", "d2", "d3", "d5"]})
        changed = time.time()
        wait_for(
            lambda: any(r["node"] == "d4" and r["state"] == "skipped" for r in task_rows(stack)),
            30,
            "d4's waiting task being skipped",
        )
        d5_queued = wait_for(
            lambda: any(r["node"] == "d5" for r in task_rows(stack)), 60, "a task for d5"
        )
        wait_for(lambda: starts(out, "d5") != [], 120, "d5's task starting")
        wait_for(
            lambda: all(r["state"] in ("success", "skipped") for r in task_rows(stack))
            and not grants(stack),
            180,
            "every task ending",
        )
        job = stack.api("GET", "/bistro/api/v1/jobs/live")
    rows = task_rows(stack)
    d4 = [row for row in rows if row["node"] == "d4"]
    sys.stderr.write(f"d5 task appeared {d5_queued:.1f} s after the change\n")

    assert [row["state"] for row in d4] == ["skipped"]
    assert "no longer in the node list" in (d4[0]["note"] or "")
    assert starts(out, "d4") == []
    assert {r["node"] for r in rows if r["state"] == "success"} >= {"d1", "d2", "d3", "d5"}
    assert sum(len(starts(out, name)) for name in ("d1", "d2", "d3")) == 3
    assert changed < time.time()
    assert job["progress"]["done"] == 4
    assert job["progress"]["total"] == 4


def test_dropped_host_is_stopped_after_kill_delay(tmp_path):
    fleet = {"h1": ["a1", "a2"], "h2": ["b1", "b2"], "h3": ["c1", "c2"]}
    stack, fleet_file, out = make_setup(
        tmp_path,
        fleet,
        hold=25.0,
        resources={"host": {"slots": {"limit": 1, "default": 1}}},
        kill_orphan_tasks_after_sec=5,
    )
    with stack:
        wait_for(lambda: len(list(out.glob("*.start"))) >= 3, 120, "one task per host starting")
        before = {g["node"]: g["holdings"] for g in grants(stack)}
        h3_running = [node for node in before if node.startswith("c")]
        assert len(h3_running) == 1
        write_fleet(fleet_file, {"h1": ["a1", "a2"], "h2": ["b1", "b2"], "h4": ["e1", "e2"]})
        changed = time.time()
        released = wait_for(
            lambda: h3_running[0] not in {g["node"] for g in grants(stack)},
            60,
            "the orphan on h3 releasing its grant",
        )
        wait_for(lambda: starts(out, "e1") or starts(out, "e2"), 60, "a task on h4")
        during = {g["node"]: g["holdings"] for g in grants(stack)}
        rows = task_rows(stack)
    orphan = [r for r in rows if r["node"] == h3_running[0]]
    sys.stderr.write(f"orphan released {released:.1f} s after the change\n")

    assert released >= 5
    assert released <= 5 + 2 + 15
    assert orphan and orphan[0]["state"] == "skipped"
    assert "orphan" in (orphan[0]["note"] or "")
    assert not list(out.glob(f"{h3_running[0]}-*.json"))
    for node, holdings in before.items():
        if not node.startswith("c") and node in during:
            assert during[node] == holdings
    assert changed > 0
