"""A continuous Bistro job end to end: the triggerer's asset watcher starts a run per change.

A real api-server, scheduler and triggerer run with the stock LocalExecutor. The job's node
source is a script that lists the names in a file; the job's command writes ``done`` to its
status pipe. Every script run appends to a call log, so "no run while the graph stays
unchanged" is checked after a counted number of watcher polls, not after a fixed time. At
the end the whole stack restarts on the same database, which checks that the fingerprint in
the asset state store keeps a new triggerer from reporting the same graph again. Last, a
deferred NodeGraphSensor resumes when the graph changes once more.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from demo.stack import AirflowStack

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
JOB = "live"
DAG_ID = f"bistro_{JOB}"
ASSET_NAME = f"bistro-nodes-{JOB}"
SENSOR_DAG_ID = "node_graph_sensor"
POLL_INTERVAL = 2.0
GUARD_SECONDS = 120.0

NODE_SCRIPT = """\
#!{python}
import os
import pathlib
import sys
import time

folder = pathlib.Path(__file__).parent
with open(folder / "calls.log", "a") as calls:
    calls.write("%.3f parent pid %d\\n" % (time.time(), os.getppid()))
sys.stdout.write((folder / "nodes.txt").read_text())
"""

SENSOR_DAG = f"""\
from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from bistro_provider.sensors.node_graph import NodeGraphSensor

with DAG("{SENSOR_DAG_ID}", schedule=None, start_date=pendulum.datetime(2024, 1, 1)):
    NodeGraphSensor(task_id="wait_for_nodes", level="host", poke_interval=1, timeout=300)
"""

# Bistro's task protocol: argv ends in the node, the status pipe path and the JSON argument.
TASK_SCRIPT = """\
import pathlib
import sys

node, status_pipe = sys.argv[1], sys.argv[2]
with open(pathlib.Path(__file__).parent / "ran.log", "a") as ran:
    ran.write(node + "\\n")
with open(status_pipe, "w") as status:
    status.write("done\\n")
"""


@dataclass
class LiveJob:
    """The running stack plus the files of the continuous job."""

    stack: AirflowStack
    root: Path
    env: dict[str, str]

    def start_stack(self) -> None:
        """Start a stack (again) on the same home, DAG folder and settings."""
        self.stack = AirflowStack(self.root / "home", self.root / "dags", self.env, triggerer=True)
        self.stack.start()

    def write_nodes(self, *names: str) -> None:
        partial = self.root / "nodes.txt.partial"
        partial.write_text("".join(f"{name}\n" for name in names))
        os.replace(partial, self.root / "nodes.txt")

    def script_calls(self) -> int:
        log = self.root / "calls.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def runs(self) -> list[dict[str, Any]]:
        page = self.stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?order_by=id&limit=100")
        return list(page["dag_runs"])

    def asset_events(self) -> list[dict[str, Any]]:
        page = self.stack.api("GET", "/api/v2/assets/events?order_by=timestamp&limit=100")
        return [event for event in page["asset_events"] if event["name"] == ASSET_NAME]

    def mapped_nodes(self, run_id: str) -> list[str]:
        instances = self.stack.task_instances(DAG_ID, run_id)
        return sorted(ti["rendered_map_index"] for ti in instances if ti["task_id"] == "run")


def write_job_files(root: Path) -> Path:
    """Write the scripts, the node list and the config; return the config path."""
    node_script = root / "list_nodes.py"
    node_script.write_text(NODE_SCRIPT.format(python=sys.executable))
    node_script.chmod(0o755)
    (root / "task.py").write_text(TASK_SCRIPT)
    (root / "nodes.txt").write_text("a\nb\n")
    source = {"source": "script", "prefs": {"parent_level": "instance", "script": str(node_script)}}
    config = {
        "bistro_settings": {
            "enabled": True,
            "nodes": {"levels": ["host"], "node_sources": [source]},
            "resources": {},
        },
        f"bistro_job->{JOB}": {
            "owner": "e2e",
            "command": [sys.executable, str(root / "task.py")],
            "airflow": {"continuous": True, "poll_interval": POLL_INTERVAL},
        },
    }
    config_file = root / "bistro.json"
    config_file.write_text(json.dumps(config))
    return config_file


def wait_for_watcher_polls(job: LiveJob, count: int) -> None:
    # One more script run than `count` has started, so `count` polls have finished.
    target = job.script_calls() + count + 1
    wait_until(lambda: job.script_calls() >= target, f"{count} more watcher polls", job)


def wait_until(condition: Callable[[], bool], what: str, job: LiveJob) -> None:
    deadline = time.monotonic() + GUARD_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}\n{job.stack.logs_tail()}")
        time.sleep(1.0)


def finished_runs(job: LiveJob, count: int) -> Callable[[], bool]:
    def check() -> bool:
        runs = job.runs()
        return len(runs) >= count and all(run["state"] in ("success", "failed") for run in runs)

    return check


@pytest.fixture(scope="module")
def live_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveJob]:
    root = tmp_path_factory.mktemp("node-graph")
    config_file = write_job_files(root)
    dags = root / "dags"
    dags.mkdir()
    (dags / "bistro_jobs.py").write_text((REPO_ROOT / "dags" / "bistro_jobs.py").read_text())
    (dags / "node_graph_sensor.py").write_text(SENSOR_DAG)
    env = {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config_file),
        # The stock executor does not create the provider's pool.
        "AIRFLOW__BISTRO__POOL": "default_pool",
    }
    job = LiveJob(AirflowStack(root / "home", dags, env, triggerer=True), root, env)
    job.stack.start()
    try:
        yield job
    finally:
        job.stack.stop()


@pytest.fixture(scope="module")
def history(live_job: LiveJob) -> dict[str, Any]:
    """Drive the scenario once: the first run, a change, then several quiet polls."""
    job = live_job
    job.stack.wait_for_dag(DAG_ID)
    wait_until(finished_runs(job, 1), "the run for the first graph", job)
    first_runs, first_events = job.runs(), job.asset_events()
    job.write_nodes("a", "b", "c")
    wait_until(finished_runs(job, len(first_runs) + 1), "the run after the change", job)
    changed_runs, changed_events = job.runs(), job.asset_events()
    # Snapshot tasks have finished, so from here on only the watcher runs the script.
    wait_for_watcher_polls(job, 3)
    return {
        "first_runs": first_runs,
        "first_events": first_events,
        "changed_runs": changed_runs,
        "changed_events": changed_events,
        "quiet_runs": job.runs(),
        "quiet_events": job.asset_events(),
    }


def test_first_graph_starts_one_run(history: dict[str, Any]) -> None:
    assert len(history["first_runs"]) == 1
    assert history["first_runs"][0]["state"] == "success"
    assert history["first_runs"][0]["run_type"] == "asset_triggered"
    assert len(history["first_events"]) == 1


def test_graph_change_starts_new_run(live_job: LiveJob, history: dict[str, Any]) -> None:
    runs = history["changed_runs"]
    assert len(runs) == len(history["first_runs"]) + 1
    assert runs[-1]["state"] == "success"
    assert runs[-1]["run_type"] == "asset_triggered"
    assert live_job.mapped_nodes(runs[-1]["dag_run_id"]) == ["a", "b", "c"]


def test_change_event_lists_added_node(history: dict[str, Any]) -> None:
    events = history["changed_events"]
    payload = events[-1]["extra"]["payload"]
    assert len(events) == len(history["first_events"]) + 1
    assert payload["added"] == ["c"]
    assert payload["removed"] == []
    assert payload["previous"] == history["first_events"][-1]["extra"]["payload"]["fingerprint"]


def test_unchanged_graph_starts_no_run(history: dict[str, Any]) -> None:
    assert len(history["quiet_runs"]) == len(history["changed_runs"])
    assert len(history["quiet_events"]) == len(history["changed_events"])


def test_task_command_ran_on_each_node(live_job: LiveJob, history: dict[str, Any]) -> None:
    ran = (live_job.root / "ran.log").read_text().split()
    assert sorted(ran) == ["a", "a", "b", "b", "c"]


@pytest.fixture(scope="module")
def after_restart(live_job: LiveJob, history: dict[str, Any]) -> dict[str, Any]:
    """Restart every service with the graph unchanged and let the new watcher poll."""
    assert live_job.stack.stop() == []
    live_job.start_stack()
    wait_for_watcher_polls(live_job, 3)
    return {"runs": live_job.runs(), "events": live_job.asset_events()}


def test_restarted_watcher_stays_quiet(
    history: dict[str, Any], after_restart: dict[str, Any]
) -> None:
    assert len(after_restart["events"]) == len(history["quiet_events"])
    assert len(after_restart["runs"]) == len(history["quiet_runs"])


def sensor_state(job: LiveJob, run_id: str) -> str | None:
    instances = job.stack.task_instances(SENSOR_DAG_ID, run_id)
    return instances[0]["state"] if instances else None


@pytest.fixture(scope="module")
def sensor_result(live_job: LiveJob, after_restart: dict[str, Any]) -> dict[str, Any]:
    """Defer the sensor on the current graph, change the graph, and return its result."""
    job = live_job
    run_id = job.stack.trigger(SENSOR_DAG_ID)
    wait_until(lambda: sensor_state(job, run_id) == "deferred", "the sensor to defer", job)
    job.write_nodes("a", "b", "c", "d")
    state = job.stack.wait_for_run(SENSOR_DAG_ID, run_id, timeout=GUARD_SECONDS)
    path = (
        f"/api/v2/dags/{SENSOR_DAG_ID}/dagRuns/{run_id}/taskInstances/wait_for_nodes"
        "/xcomEntries/return_value?deserialize=true"
    )
    return {"state": state, "payload": job.stack.api("GET", path)["value"]}


def test_deferred_sensor_resumes_on_change(
    history: dict[str, Any], sensor_result: dict[str, Any]
) -> None:
    last_reported = history["quiet_events"][-1]["extra"]["payload"]["fingerprint"]
    assert sensor_result["state"] == "success"
    assert sensor_result["payload"]["previous"] == last_reported
    assert sensor_result["payload"]["fingerprint"] != last_reported
    assert sensor_result["payload"]["nodes"] == 4
