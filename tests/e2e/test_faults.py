"""Faults injected into a real Airflow stack that runs BistroExecutor, each with its bound.

One SQLite stack runs every case except the dropped database connection, which needs
PostgreSQL. Each case triggers its own job's DAG, so the cases share the stack but not
their tasks, and they run in file order. The tasks record their own start and end times.
A monitor thread records when each task process disappears, because a killed task cannot
write its end, and when each `bistro_grant` row appears and disappears. Every check reads those
records, not the executor's bookkeeping, and every case checks that no host ran more than
2 tasks and no database more than 1 at once, and that no (job, node) started again after
a try of it reported done.

Bounds in seconds, with the settings of `stack_env`:

- api-server restarted: in-flight tasks survive an outage shorter than the heartbeat
  timeout (120 until the scheduler restart) and the task SDK's Execution API retries
  (40 tries, 2 to 4 s apart).
- scheduler killed and restarted: the new scheduler rebuilds the ledger from bistro_grant;
  Airflow resets the dead scheduler's tasks once its heartbeat is 15 s old, and a grant
  whose task instance vanished in that reset is released after two grant checks (2 x 5).
- worker killed: the grant is released <= heartbeat timeout 20 + detection interval 5 +
  grant_check_interval 5 + SLACK after the kill, and the command dies before that.
- task timeout: the grant is released <= SLACK after the command died at its timeout;
  the retry starts <= backoff 1 + full_pass_interval 5 + SLACK after that.
- run cancelled: commands die <= heartbeat interval 1 + SLACK after the PATCH, and grants
  go <= that + the task supervisor's 5 s wait before SIGKILL + state_sync_interval 1; no
  waiting task takes a grant.
- connection dropped mid-pass: the pass is retried on the next heartbeat once the
  database answers again.

SLACK covers starting a task process and Airflow's scheduler loop on a busy machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from demo.stack import AirflowStack
from demo.timeline import max_concurrency

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_LIMIT = 2
HEARTBEAT_TIMEOUT = 20
LONG_HEARTBEAT_TIMEOUT = 120
DETECTION_INTERVAL = 5
GRANT_CHECK_INTERVAL = 5
STATE_SYNC_INTERVAL = 1
FULL_PASS_INTERVAL = 5
TASK_TIMEOUT = 4
HEARTBEAT_INTERVAL = 1
"""`[workers] min_heartbeat_interval` as AirflowStack sets it."""
KILL_ESCALATION = 5
"""Seconds the task SDK's supervisor (Airflow 3.3) waits after SIGTERM before SIGKILL."""
SLACK = 15
FLEET = {"h1": ["a1", "a2", "a3", "a4"], "h2": ["b1", "b2", "b3", "b4"]}
ADMISSION_LOCK_ID = 0x42495354
GRANTS_SQL = "SELECT ti_id, job, node, granted_at FROM bistro_grant"
GrantRow = tuple[str, str, str, float]
GrantReader = Callable[[], "list[GrantRow] | None"]
MEASURED: dict[str, float] = {}
"""Figures printed at the end of the module, for docs/reliability.md."""

TASK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    start = time.time()
    out = sys.argv[1]
    node, pipe, argument = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    config, job, prev = argument["config"], argument["id"], argument.get("prev_status")
    record = {"job": job, "node": node, "host": argument["path_to_node"][-2],
              "start": start, "pid": os.getpid(), "prev_status": prev}
    name = os.path.join(out, f"{job}-{node}-{os.getpid()}")
    with open(name + ".start", "w") as handle:
        json.dump(record, handle)
    behavior = "done" if prev else config.get("behavior", {}).get(node, "done")
    if behavior == "hang":
        time.sleep(3600)
    # "first_holds" apply to a node's first try only, so that a retry is short.
    holds = {} if prev else config.get("first_holds", {})
    time.sleep(holds.get(node, config.get("hold", 1)))
    text = {"done": "done\\n", "silent": "", "garbage": "not-a-status-word\\n"}[behavior]
    record.update(end=time.time(), status=behavior)
    with open(name + ".end", "w") as handle:
        json.dump(record, handle)
    with open(pipe, "w") as status:
        status.write(text)
    """
)


# -- records ------------------------------------------------------------------------------


@dataclass
class GrantSeen:
    """One `bistro_grant` row as the monitor saw it: first and last poll, and when it went."""

    job: str
    node: str
    first: float
    last: float
    gone: float | None = None


@dataclass
class Monitor:
    """Polls task processes and grant rows every `interval` seconds in a thread."""

    out: Path
    read_grants: GrantReader
    interval: float = 0.25
    deaths: dict[int, float] = field(default_factory=dict)
    grants: dict[tuple[str, float], GrantSeen] = field(default_factory=dict)
    _starts: dict[Path, dict[str, Any]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, name="fault-monitor", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        now = time.time()
        for path in self.out.glob("*.start"):
            if path not in self._starts:
                self._starts[path] = json.loads(path.read_text())
        for record in self._starts.values():
            pid = record["pid"]
            if pid not in self.deaths and not _alive(pid):
                self.deaths[pid] = now
                # Kept next to the task's own records for reading a failed run afterwards.
                (self.out / f"{record['job']}-{record['node']}-{pid}.died").write_text(str(now))
        rows = self.read_grants()
        if rows is None:
            return
        current = set()
        for ti_id, job, node, granted_at in rows:
            key = (ti_id, granted_at)
            current.add(key)
            seen = self.grants.setdefault(key, GrantSeen(job, node, now, now))
            seen.last = now
        for key, seen in self.grants.items():
            if key not in current and seen.gone is None:
                seen.gone = now

    def records(self, job: str | None = None) -> list[dict[str, Any]]:
        """Return every task's start record with its end: the task's own, else its death."""
        self.poll()
        records = []
        for path, start in sorted(self._starts.items(), key=lambda item: item[1]["start"]):
            if job is not None and start["job"] != job:
                continue
            end_path = path.with_suffix(".end")
            record = json.loads(end_path.read_text()) if end_path.exists() else dict(start)
            record.setdefault("end", self.deaths.get(start["pid"]))
            records.append(record)
        return records

    def grants_of(self, job: str) -> list[GrantSeen]:
        self.poll()
        return sorted(
            (seen for seen in self.grants.values() if seen.job == job), key=lambda s: s.first
        )


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s")


# -- the stacks ---------------------------------------------------------------------------


def job_config(hold: float, **extra: Any) -> dict[str, Any]:
    config = {"hold": hold, **extra.pop("config", {})}
    return {"owner": "fault-tests", "config": config, **extra}


JOBS: dict[str, dict[str, Any]] = {
    # a4 starts in the first wave; its command would outlive its grant if the kill of its
    # worker left the command running.
    "worker_kill": job_config(5, config={"first_holds": {"a4": 60}}),
    # The first four tasks (the last names go first) still run when the scheduler is back.
    "sched_kill": job_config(
        2, config={"first_holds": dict.fromkeys(["a3", "a4", "b3", "b4"], 20)}
    ),
    "api_restart": job_config(3),
    "timeout": job_config(
        1,
        config={"behavior": {"a4": "hang"}},
        backoff=[1, "fail"],
        filters={"db": {"whitelist": ["a4", "b4"]}},
        airflow={"task_timeout_sec": TASK_TIMEOUT},
    ),
    "cancel": job_config(60),
    "garbage": job_config(
        0.5,
        config={"behavior": {"a4": "silent", "b4": "garbage"}},
        backoff=[1, "fail"],
        filters={"db": {"whitelist": ["a3", "a4", "b4"]}},
    ),
    "upstream": job_config(2),
    "downstream": job_config(1, depends_on=["upstream"]),
    "db_drop": job_config(3),
}


def write_config(tmp: Path, out: Path) -> Path:
    script = tmp / "task.py"
    script.write_text(TASK_SCRIPT)
    config: dict[str, Any] = {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [{"source": "manual", "prefs": FLEET}],
            },
            "resources": {
                "host": {"host_slots": {"limit": HOST_LIMIT, "default": 1}},
                "db": {"db_lock": {"limit": 1, "default": 1}},
            },
        }
    }
    for name, job in JOBS.items():
        config[f"bistro_job->{name}"] = {"command": [sys.executable, str(script), str(out)], **job}
    path = tmp / "bistro.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def stack_env(config_path: Path) -> dict[str, str]:
    return {
        "AIRFLOW__CORE__EXECUTOR": "bistro_provider.executors.bistro_executor.BistroExecutor",
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config_path),
        "AIRFLOW__BISTRO__WORKER_PROCESSES": "6",
        "AIRFLOW__BISTRO__GRANT_CHECK_INTERVAL": str(GRANT_CHECK_INTERVAL),
        "AIRFLOW__BISTRO__STATE_SYNC_INTERVAL": str(STATE_SYNC_INTERVAL),
        "AIRFLOW__BISTRO__FULL_PASS_INTERVAL": str(FULL_PASS_INTERVAL),
        # Long enough for the api-server outage; the scheduler restart shortens it.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(LONG_HEARTBEAT_TIMEOUT),
        # Task processes retry Execution API calls for at least 39 x 2 s = 78 s, longer
        # than the api-server takes to restart on a busy machine.
        "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "40",
        "AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MIN": "2",
        "AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MAX": "4",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": str(
            DETECTION_INTERVAL
        ),
        # A killed scheduler's queued tasks are reset once its heartbeat is this old.
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15",
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
        "PYTHONPATH": str(REPO_ROOT),
    }


@dataclass
class Setup:
    stack: AirflowStack
    monitor: Monitor
    out: Path

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        rows = self.stack.task_instances(dag_id, run_id)
        return {row["rendered_map_index"]: row["state"] for row in rows if row["task_id"] == "run"}


def sqlite_grants(home: Path) -> GrantReader:
    def read() -> list[GrantRow] | None:
        uri = f"file:{home / 'airflow.db'}?mode=ro"
        try:
            with sqlite3.connect(uri, uri=True, timeout=0.2) as db:
                return db.execute(GRANTS_SQL).fetchall()
        except sqlite3.Error:  # locked by a writer, or the table is not created yet
            return None

    return read


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("faults")
    out = tmp / "out"
    out.mkdir()
    stack = AirflowStack(tmp / "airflow", REPO_ROOT / "dags", stack_env(write_config(tmp, out)))
    monitor = Monitor(out, sqlite_grants(stack.home))
    with stack:
        monitor.start()
        try:
            yield Setup(stack, monitor, out)
        finally:
            monitor.stop()
            record_peaks(monitor)
            sys.stderr.write(f"fault figures: {json.dumps(MEASURED, sort_keys=True)}\n")


def record_peaks(monitor: Monitor) -> None:
    records = [r for r in monitor.records() if r["end"] is not None]
    MEASURED["max_running_per_host"] = max(max_concurrency(records, "host").values(), default=0)
    MEASURED["max_running_per_db"] = max(max_concurrency(records, "node").values(), default=0)
    MEASURED["task_tries"] = len(records)


# -- checks shared by every case ----------------------------------------------------------


def assert_within_limits(monitor: Monitor) -> None:
    """No host ran more than HOST_LIMIT tasks and no database more than one at once."""
    records = [r for r in monitor.records() if r["end"] is not None]
    per_host = max_concurrency(records, "host")
    per_db = max_concurrency(records, "node")
    assert max(per_host.values(), default=0) <= HOST_LIMIT, per_host
    assert max(per_db.values(), default=0) <= 1, per_db


def assert_done_once(monitor: Monitor, job: str) -> None:
    """No (job, node) started again after a try of it reported done."""
    done: dict[str, float] = {}
    for record in monitor.records(job):
        node = record["node"]
        assert node not in done or record["start"] < done[node], (job, node)
        if record.get("status") == "done":
            done[node] = record["end"]


def assert_no_grant_left(monitor: Monitor, job: str) -> None:
    """Every grant of `job` goes within one grant check after its run ended.

    A run ends when its last task instance does. The executor learns that the task
    process ended a little later, and only then deletes the grant.
    """
    deadline = time.time() + GRANT_CHECK_INTERVAL + SLACK
    while _grants_left(monitor, job) and time.time() < deadline:
        time.sleep(0.25)
    assert _grants_left(monitor, job) == []


def _grants_left(monitor: Monitor, job: str) -> list[GrantSeen]:
    return [seen for seen in monitor.grants_of(job) if seen.gone is None]


def trigger(setup: Setup, job: str) -> tuple[str, str]:
    """Trigger `job`'s DAG and return its DAG id and run id."""
    dag_id = f"bistro_{job}"
    return dag_id, setup.stack.trigger(dag_id)


def started(monitor: Monitor, job: str) -> list[dict[str, Any]]:
    return monitor.records(job)


def started_at_least(monitor: Monitor, job: str, count: int) -> list[dict[str, Any]] | None:
    records = monitor.records(job)
    return records if len(records) >= count else None


# -- the api-server restarted ----------------------------------------------------------


def test_restarted_api_server_keeps_run_going(setup: Setup) -> None:
    dag_id, run_id = trigger(setup, "api_restart")
    wait_for(lambda: started_at_least(setup.monitor, "api_restart", 2), 180, "two tasks starting")
    down_at = time.time()
    setup.stack.restart("api-server")
    MEASURED["api_restart_downtime_s"] = round(time.time() - down_at, 1)
    state = setup.stack.wait_for_run(dag_id, run_id, timeout=240)

    assert state == "success"
    assert_within_limits(setup.monitor)
    assert_done_once(setup.monitor, "api_restart")
    assert_no_grant_left(setup.monitor, "api_restart")


# -- the scheduler killed and restarted ------------------------------------------------


def test_restarted_scheduler_rebuilds_ledger_and_finishes(setup: Setup) -> None:
    dag_id, run_id = trigger(setup, "sched_kill")
    wait_for(lambda: started_at_least(setup.monitor, "sched_kill", 2), 180, "two tasks starting")
    setup.stack.kill("scheduler", signal.SIGKILL)
    time.sleep(2)
    # The worker-kill case that follows needs a short heartbeat timeout.
    setup.stack.restart(
        "scheduler",
        env_extra={"AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)},
    )
    state = setup.stack.wait_for_run(dag_id, run_id, timeout=240)
    log_text = (setup.stack.log_dir / "scheduler.log").read_text(errors="replace")
    rebuilt = [int(n) for n in re.findall(r"Rebuilt the Bistro ledger: (\d+) grants", log_text)]

    killed = [r for r in started(setup.monitor, "sched_kill") if r.get("status") is None]
    first_grants = {}
    for grant in setup.monitor.grants_of("sched_kill"):
        first_grants.setdefault(grant.node, grant)
    MEASURED["sched_kill_rebuilt_grants"] = rebuilt[-1] if rebuilt else 0
    MEASURED["sched_kill_killed_tries"] = len(killed)
    held = [first_grants[r["node"]].gone - r["end"] for r in killed if first_grants[r["node"]].gone]
    MEASURED["sched_kill_grant_held_after_death_s"] = round(min(held, default=0), 1)

    assert state == "success"
    assert rebuilt and rebuilt[-1] >= 1, rebuilt
    assert len({r["node"] for r in started(setup.monitor, "sched_kill")}) == 8
    for record in killed:
        # A try that Airflow reset keeps its grant until its command is dead.
        released = first_grants[record["node"]].gone
        assert released is not None, record
        assert released >= record["end"], record
    assert_within_limits(setup.monitor)
    assert_done_once(setup.monitor, "sched_kill")
    assert_no_grant_left(setup.monitor, "sched_kill")


# -- a LocalExecutor worker killed -----------------------------------------------------


def find_worker(command_pid: int) -> int:
    """Return the LocalExecutor worker (the task's supervisor) that runs a task command."""
    task_process = _parent(command_pid)
    worker = _parent(task_process)
    title = Path(f"/proc/{worker}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    assert "LocalExecutor" in title, title
    return worker


def heartbeat_timeouts(setup: Setup, dag_id: str, run_id: str) -> list[str]:
    """Return the nodes whose task instances Airflow failed for a missing heartbeat."""
    uri = f"file:{setup.stack.home / 'airflow.db'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=10) as db:
        rows = db.execute(
            "SELECT map_index FROM log WHERE event = 'heartbeat timeout' AND dag_id = ? "
            "AND run_id = ?",
            (dag_id, run_id),
        ).fetchall()
    nodes = sorted(name for names in FLEET.values() for name in names)
    return [nodes[map_index] for (map_index,) in rows]


def test_killed_worker_fails_task_and_releases_grant(setup: Setup) -> None:
    dag_id, run_id = trigger(setup, "worker_kill")
    victim = wait_for(
        lambda: next((r for r in started(setup.monitor, "worker_kill") if r["node"] == "a4"), None),
        180,
        "the task on a4 starting",
    )
    os.kill(find_worker(victim["pid"]), signal.SIGKILL)
    killed_at = time.time()
    state = setup.stack.wait_for_run(dag_id, run_id, timeout=240)
    states = setup.task_states(dag_id, run_id)
    grant = next(g for g in setup.monitor.grants_of("worker_kill") if g.node == "a4")
    command_death = setup.monitor.deaths.get(victim["pid"])
    bound = HEARTBEAT_TIMEOUT + DETECTION_INTERVAL + GRANT_CHECK_INTERVAL + SLACK

    assert command_death is not None
    assert grant.gone is not None
    MEASURED["worker_kill_grant_release_s"] = round(grant.gone - killed_at, 1)
    MEASURED["worker_kill_command_death_s"] = round(command_death - killed_at, 1)
    assert state == "failed"
    assert [node for node, s in states.items() if s != "success"] == ["a4"]
    assert states["a4"] == "failed"
    assert heartbeat_timeouts(setup, dag_id, run_id) == ["a4"]
    assert grant.gone - killed_at <= bound
    # The command held a4 for 60 s; it must be gone before the grant is.
    assert command_death < grant.gone
    assert_within_limits(setup.monitor)
    assert_done_once(setup.monitor, "worker_kill")
    assert_no_grant_left(setup.monitor, "worker_kill")


# -- a task that hangs past its timeout ------------------------------------------------


@dataclass(frozen=True)
class TimeoutRun:
    state: str
    first: dict[str, Any]
    retry: dict[str, Any]
    first_grant: GrantSeen


@pytest.fixture(scope="module")
def timeout_run(setup: Setup) -> TimeoutRun:
    dag_id, run_id = trigger(setup, "timeout")
    state = setup.stack.wait_for_run(dag_id, run_id, timeout=240)
    tries = [r for r in started(setup.monitor, "timeout") if r["node"] == "a4"]
    grants = [g for g in setup.monitor.grants_of("timeout") if g.node == "a4"]
    assert len(tries) == 2, tries
    first, retry = tries
    MEASURED["timeout_grant_release_s"] = round(grants[0].gone - first["end"], 1)
    MEASURED["timeout_retry_start_s"] = round(retry["start"] - first["end"], 1)
    return TimeoutRun(state, first, retry, grants[0])


def test_timed_out_task_is_error_backoff_with_reason(timeout_run: TimeoutRun) -> None:
    previous = timeout_run.retry["prev_status"]
    assert previous["result"] == "error_backoff"
    assert previous["backoff_duration"] == 1
    assert previous["data"]["timed_out"] is True
    assert "timed out after 4 s" in previous["data"]["exception"]


def test_timed_out_command_is_killed_at_timeout(timeout_run: TimeoutRun) -> None:
    # The timeout counts from the command's start, which comes after the grant and before
    # the script's first line records its start.
    assert timeout_run.first["end"] - timeout_run.first_grant.first >= TASK_TIMEOUT
    assert timeout_run.first["end"] - timeout_run.first["start"] <= TASK_TIMEOUT + 2


def test_timed_out_slot_is_free_at_timeout(timeout_run: TimeoutRun) -> None:
    assert timeout_run.first_grant.gone - timeout_run.first["end"] <= SLACK


def test_timed_out_retry_starts_within_one_pass(timeout_run: TimeoutRun) -> None:
    waited = timeout_run.retry["start"] - timeout_run.first["end"]
    assert waited >= 1
    assert waited <= 1 + FULL_PASS_INTERVAL + SLACK


def test_timed_out_job_completes_within_limits(setup: Setup, timeout_run: TimeoutRun) -> None:
    assert timeout_run.state == "success"
    assert_within_limits(setup.monitor)
    assert_done_once(setup.monitor, "timeout")
    assert_no_grant_left(setup.monitor, "timeout")


# -- a cancelled DAG run ---------------------------------------------------------------


@dataclass(frozen=True)
class CancelRun:
    state: str
    cancelled_at: float
    running: list[dict[str, Any]]
    after: list[dict[str, Any]]
    grants: list[GrantSeen]
    states: dict[str, str]


@pytest.fixture(scope="module")
def cancel_run(setup: Setup) -> CancelRun:
    dag_id, run_id = trigger(setup, "cancel")
    running = wait_for(
        lambda: started_at_least(setup.monitor, "cancel", 2 * HOST_LIMIT),
        180,
        "every host filling up",
    )

    # The remaining tasks must be queued in the executor, waiting for a slot.
    wait_for(
        lambda: list(setup.task_states(dag_id, run_id).values()).count("queued") >= 4,
        60,
        "four tasks waiting",
    )

    cancelled_at = time.time()
    setup.stack.api("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", {"state": "failed"})
    wait_for(
        lambda: all(g.gone for g in setup.monitor.grants_of("cancel")),
        60,
        "every grant of the cancelled run going",
    )
    # Give the executor two full passes in which a waiting task could wrongly start.
    time.sleep(2 * FULL_PASS_INTERVAL)

    grants = setup.monitor.grants_of("cancel")
    MEASURED["cancel_grant_release_s"] = round(max(g.gone for g in grants) - cancelled_at, 1)
    MEASURED["cancel_command_death_s"] = round(
        max(setup.monitor.deaths.get(r["pid"], 1e18) for r in running) - cancelled_at, 1
    )
    return CancelRun(
        str(setup.stack.dag_run(dag_id, run_id)["state"]),
        cancelled_at,
        running,
        started(setup.monitor, "cancel"),
        grants,
        setup.task_states(dag_id, run_id),
    )


def test_cancelled_run_stops_running_tasks(setup: Setup, cancel_run: CancelRun) -> None:
    bound = HEARTBEAT_INTERVAL + SLACK
    for record in cancel_run.running:
        died = setup.monitor.deaths.get(record["pid"])
        assert died is not None, record
        assert died - cancel_run.cancelled_at <= bound
    assert cancel_run.state == "failed"


def test_cancelled_task_frees_slot_at_once(cancel_run: CancelRun) -> None:
    # The supervisor waits up to KILL_ESCALATION for a task process to exit after SIGTERM,
    # and the executor learns of the end only from the supervisor.
    bound = HEARTBEAT_INTERVAL + KILL_ESCALATION + STATE_SYNC_INTERVAL + SLACK
    for grant in cancel_run.grants:
        assert grant.gone is not None
        assert grant.gone - cancel_run.cancelled_at <= bound


def test_cancelled_waiting_tasks_never_start(cancel_run: CancelRun) -> None:
    ran = {record["node"] for record in cancel_run.running}
    waited = {node: state for node, state in cancel_run.states.items() if node not in ran}

    assert len(cancel_run.after) == len(cancel_run.running)
    assert [g for g in cancel_run.grants if g.first > cancel_run.cancelled_at] == []
    assert len(waited) == 4
    # Airflow 3.3 skips the waiting instances and then fails every instance of a mapped
    # task that had one running, so the waiting ones end failed, never having run.
    assert set(waited.values()) <= {"failed", "skipped"}
    assert [cancel_run.states[node] for node in sorted(ran)] == ["failed"] * 4


def test_cancelled_run_stays_within_limits(setup: Setup, cancel_run: CancelRun) -> None:
    assert_within_limits(setup.monitor)
    assert_no_grant_left(setup.monitor, "cancel")


# -- a task that writes no status, or garbage ------------------------------------------


def task_log(setup: Setup, dag_id: str, node_index: int) -> str:
    folder = setup.stack.home / "logs" / f"dag_id={dag_id}"
    paths = folder.glob(f"run_id=*/task_id=run/map_index={node_index}/*.log")
    return "\n".join(path.read_text(errors="replace") for path in paths)


def test_unparsable_status_backs_off_and_retries(setup: Setup) -> None:
    dag_id, run_id = trigger(setup, "garbage")
    state = setup.stack.wait_for_run(dag_id, run_id, timeout=240)
    records = started(setup.monitor, "garbage")
    nodes = sorted(FLEET["h1"][2:] + FLEET["h2"][3:])  # map index i is the i-th sorted node

    assert state == "success"
    for node, raw in (("a4", "raw status text: ''"), ("b4", "not-a-status-word")):
        tries = [r for r in records if r["node"] == node]
        assert len(tries) == 2, tries
        assert tries[1]["prev_status"]["result"] == "error_backoff"
        assert tries[1]["prev_status"]["backoff_duration"] == 1
        assert tries[1]["start"] - tries[0]["end"] >= 1
        log_text = task_log(setup, dag_id, nodes.index(node))
        assert "raw status text" in log_text
        assert raw in log_text
    assert len([r for r in records if r["node"] == "a3"]) == 1
    assert_within_limits(setup.monitor)
    assert_done_once(setup.monitor, "garbage")
    assert_no_grant_left(setup.monitor, "garbage")


# -- tasks waiting on another job hold nothing -----------------------------------------


def test_waiting_on_dependency_never_deadlocks(setup: Setup) -> None:
    down = trigger(setup, "downstream")
    wait_for(
        lambda: list(setup.task_states(*down).values()).count("queued") == 8,
        120,
        "every downstream task waiting",
    )
    up = trigger(setup, "upstream")
    states = [setup.stack.wait_for_run(*run, timeout=240) for run in (up, down)]
    ends = {r["node"]: r["end"] for r in started(setup.monitor, "upstream")}

    assert states == ["success", "success"]
    for record in started(setup.monitor, "downstream"):
        assert record["start"] >= ends[record["node"]], record
    assert_within_limits(setup.monitor)
    assert_done_once(setup.monitor, "upstream")
    assert_done_once(setup.monitor, "downstream")


# -- the metadata database connection dropped mid-pass ---------------------------------


def _psql(sql: str, database: str = "postgres") -> None:
    subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if shutil.which("psql") is None and not os.environ.get("CI"):
        pytest.skip("psql is not installed and CI is not set; this case needs PostgreSQL")
    name = f"bistro_faults_{uuid.uuid4().hex[:8]}"
    _psql(f"CREATE DATABASE {name}")
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def postgres_grants(url: str) -> GrantReader:
    import psycopg2

    dsn = url.replace("postgresql+psycopg2", "postgresql")

    def read() -> list[GrantRow] | None:
        try:
            with psycopg2.connect(dsn, connect_timeout=2) as db, db.cursor() as cursor:
                cursor.execute(GRANTS_SQL)
                return list(cursor.fetchall())
        except psycopg2.Error:  # the table is not created yet
            return None

    return read


def drop_connection_mid_pass(dsn: str, hold: float) -> float:
    """Hold the admission lock until a scheduler's pass waits for it, and terminate that
    connection. The lock is held `hold` seconds longer, so the next passes wait too.

    :return: when the lock was released.
    """
    import psycopg2

    with psycopg2.connect(dsn) as db:
        db.autocommit = True
        cursor = db.cursor()
        cursor.execute("SELECT pg_advisory_lock(%s)", (ADMISSION_LOCK_ID,))

        def waiter() -> int | None:
            cursor.execute(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objid = %s "
                "AND NOT granted",
                (ADMISSION_LOCK_ID,),
            )
            row = cursor.fetchone()
            return row[0] if row else None

        victim = wait_for(waiter, 120, "an admission pass waiting for the lock")
        cursor.execute("SELECT pg_terminate_backend(%s)", (victim,))
        time.sleep(hold)
        cursor.execute("SELECT pg_advisory_unlock(%s)", (ADMISSION_LOCK_ID,))
    return time.time()


@pytest.mark.postgres
def test_dropped_connection_mid_pass_is_retried(tmp_path: Path, postgres_url: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    env = stack_env(write_config(tmp_path, out))
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = postgres_url
    stack = AirflowStack(tmp_path / "airflow", REPO_ROOT / "dags", env)
    monitor = Monitor(out, postgres_grants(postgres_url))
    with stack:
        monitor.start()
        run_id = stack.trigger("bistro_db_drop")
        wait_for(lambda: started(monitor, "db_drop"), 180, "a task starting")
        unlocked_at = drop_connection_mid_pass(
            postgres_url.replace("postgresql+psycopg2", "postgresql"), 3
        )
        state = stack.wait_for_run("bistro_db_drop", run_id, timeout=240)
        scheduler_alive = _alive(stack.service_pid("scheduler"))
        assert_no_grant_left(monitor, "db_drop")
        monitor.stop()
    log_text = (stack.log_dir / "scheduler.log").read_text(errors="replace")
    later = [g.first for g in monitor.grants_of("db_drop") if g.first >= unlocked_at]
    if later:
        MEASURED["db_drop_first_grant_after_unlock_s"] = round(min(later) - unlocked_at, 1)

    assert state == "success"
    assert scheduler_alive
    assert "could not use the metadata database" in log_text
    assert len(started(monitor, "db_drop")) == 8
    assert_within_limits(monitor)
    assert_done_once(monitor, "db_drop")
    assert_no_grant_left(monitor, "db_drop")
