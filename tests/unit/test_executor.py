"""AdmissionController and BistroExecutor with real workloads, no worker processes, no DB.

Workloads are real `ExecuteTask` models. The run's node list, which the executor reads
from the snapshot task's XCom, is patched in, and sessions are MagicMocks. The grant rows
live in a dict. `LocalExecutor._process_workloads` is replaced by a function that only
takes the workloads off `queued_tasks`, as the real one does before it hands them to the
worker processes.
"""

from __future__ import annotations

import json
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import pytest
from airflow.executors.local_executor import LocalExecutor
from airflow.executors.workloads import ExecuteTask
from airflow.executors.workloads.base import BundleInfo
from airflow.executors.workloads.task import TaskInstanceDTO
from airflow.utils.state import TaskInstanceState

from bistro_provider.core.live import LiveForest
from bistro_provider.core.status import TaskStatus
from bistro_provider.executors.admission import AdmissionController, Granted
from bistro_provider.executors.bistro_executor import BistroExecutor
from bistro_provider.executors.endings import record_endings
from bistro_provider.store import repository

HOSTS = {"host1": ["db11", "db12", "db13"], "host2": ["db21", "db22"]}
DAG_VERSION = uuid.uuid4()


def write_config(
    path: Path,
    *,
    enabled: bool = True,
    hosts: dict[str, Any] | None = None,
    db_limit: int = 1,
    **jobs: Any,
) -> str:
    """Write a Bistro config with levels host/db, host limit 2, db limit 1 unless given."""
    sources = [{"source": "manual", "prefs": hosts or HOSTS}]
    data: dict[str, Any] = {
        "bistro_settings": {
            "enabled": enabled,
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": sources,
            },
            "resources": {
                "host": {"host_concurrency": {"limit": 2, "default": 1}},
                "db": {"db_concurrency": {"limit": db_limit, "default": 1}},
            },
        }
    }
    for name, job in (jobs or {"job1": {}}).items():
        data[f"bistro_job->{name}"] = {"owner": "test", **job}
    path.write_text(json.dumps(data))
    return str(path)


def live_forest(path: str) -> LiveForest:
    live = LiveForest(path, background=False)
    live.poll()
    assert live.errors() == {}
    return live


def snapshot_of(
    live: LiveForest, *extra: tuple[str, ...]
) -> tuple[list[str], dict[str, list[str]]]:
    """Return what the snapshot task records: sorted db names and each db's path.

    :param extra: paths of nodes the snapshot saw that the live forest no longer has.
    """
    assert live.forest is not None
    paths = {node.name: node.path_names() for node in live.forest.nodes("db")}
    for path in extra:
        paths[path[-1]] = list(path)
    return sorted(paths), paths


def make_workload(
    map_index: int,
    *,
    job: str | None = "job1",
    run_id: str = "run1",
    priority: int = 1,
    ti_id: uuid.UUID | None = None,
) -> ExecuteTask:
    executor_config = {"bistro": {"job": job, "snapshot_task": "snapshot_nodes"}} if job else None
    ti = TaskInstanceDTO(
        id=ti_id or uuid.uuid4(),
        task_id="run",
        dag_id=f"bistro_{job or 'plain'}",
        run_id=run_id,
        try_number=1,
        dag_version_id=DAG_VERSION,
        map_index=map_index,
        pool_slots=1,
        priority_weight=priority,
        executor_config=executor_config,
    )
    return ExecuteTask(
        ti=ti,
        dag_rel_path=Path("bistro_jobs.py"),
        token="token-from-queueing",
        bundle_info=BundleInfo(name="dags-folder"),
        log_path=None,
    )


@pytest.fixture
def patch_snapshot(mocker: Any) -> Callable[[tuple[list[str], dict[str, list[str]]]], MagicMock]:
    def patch(snapshot: tuple[list[str], dict[str, list[str]]]) -> MagicMock:
        return mocker.patch(
            "bistro_provider.executors.admission._read_snapshot", return_value=snapshot
        )

    return patch


def controller_with(
    live: LiveForest, names: list[str], workloads: list[ExecuteTask]
) -> AdmissionController:
    controller = AdmissionController(live, worker_name="worker1")
    controller.resolve(workloads, MagicMock())
    assert len(controller.waiting) == len(workloads)
    return controller


def workloads_for(names: list[str], nodes: list[str], **kwargs: Any) -> list[ExecuteTask]:
    return [make_workload(names.index(node), **kwargs) for node in nodes]


def granted_nodes(granted: list[Granted]) -> list[str]:
    return sorted(item.admission.node for item in granted)


def hold_host(controller: AdmissionController, host: str, amount: int = 2) -> None:
    controller.ledger.force_acquire(f"other-{host}", {("host", host): {"host_concurrency": amount}})


# --- AdmissionController ----------------------------------------------------------------


def test_no_head_of_line_blocking(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    high = workloads_for(names, ["db11", "db12", "db13"], priority=100)
    low = workloads_for(names, ["db21"], priority=1)
    controller = controller_with(live, names, [*high, *low])
    hold_host(controller, "host1")

    granted = controller.run_pass(1, statuses={})

    assert granted_nodes(granted) == ["db21"]
    assert granted[0].admission.path == ("instance", "host2", "db21")


def test_free_slots_bound_starts(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    controller = controller_with(live, names, workloads_for(names, names))

    granted = controller.run_pass(2, statuses={})

    assert len(granted) == 2
    holders = set(controller.ledger.holders())
    assert holders == {item.task.ti_id for item in granted}
    for task in controller.waiting.values():
        if task.ti_id not in holders:
            assert task.reason in ("no worker available", "not tried this pass"), task.node


def test_task_left_by_stopped_pass_gets_fresh_reason(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    controller = controller_with(live, names, workloads_for(names, names))
    hold_host(controller, "host1")
    hold_host(controller, "host2")
    controller.run_pass(5, statuses={})
    controller.ledger.release("other-host1")
    controller.ledger.release("other-host2")

    granted = controller.run_pass(1, statuses={})

    assert len(granted) == 1
    started = granted[0].task.ti_id
    for task in controller.waiting.values():
        if task.ti_id != started:
            assert not task.reason.startswith("waiting for"), f"{task.node}: {task.reason}"


def test_disabled_scheduling_admits_nothing(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json", enabled=False))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    controller = controller_with(live, names, workloads_for(names, names))

    assert controller.run_pass(8, statuses={}) == []
    assert len(controller.ledger) == 0
    for task in controller.waiting.values():
        assert "bistro_settings.enabled is false" in task.reason


def test_dependent_job_waits_until_dependency_done(tmp_path, patch_snapshot) -> None:
    path = write_config(tmp_path / "bistro.json", job1={}, job2={"depends_on": ["job1"]})
    live = live_forest(path)
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    controller = controller_with(live, names, workloads_for(names, ["db11"], job="job2"))
    task = next(iter(controller.waiting.values()))

    assert controller.run_pass(8, statuses={}) == []
    assert task.reason.startswith("dependency not done")
    assert "job1" in task.reason

    done = {("job1", "db11"): TaskStatus("done", 0.0)}
    assert granted_nodes(controller.run_pass(8, statuses=done)) == ["db11"]


def test_lowered_override_blocks_node(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    controller = controller_with(live, names, workloads_for(names, ["db11", "db12", "db21"]))
    controller.overrides = {("host", "host1"): {"host_concurrency": 0}}

    granted = controller.run_pass(8, statuses={})

    assert granted_nodes(granted) == ["db21"]
    reasons = controller.waiting_reasons()
    assert reasons[("job1", "db11")] == (
        "waiting for host 'host1': host_concurrency needs 1, 0/0 in use"
    )


def test_node_missing_from_forest_uses_recorded_path(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    names, paths = snapshot_of(live, ("instance", "host2", "db99"))
    patch_snapshot((names, paths))
    controller = controller_with(live, names, workloads_for(names, ["db99"]))
    hold_host(controller, "host2", amount=1)

    granted = controller.run_pass(8, statuses={})

    assert granted_nodes(granted) == ["db99"]
    admission = granted[0].admission
    assert admission.path == ("instance", "host2", "db99")
    assert admission.holdings == {
        ("host", "host2"): {"host_concurrency": 1},
        ("db", "db99"): {"db_concurrency": 1},
    }
    assert controller.ledger.used(("host", "host2")) == {"host_concurrency": 2}


def test_waiting_reason_names_node_resource_usage(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    controller = controller_with(live, names, workloads_for(names, ["db11"]))
    hold_host(controller, "host1")

    assert controller.run_pass(8, statuses={}) == []
    reason = controller.waiting_reasons()[("job1", "db11")]
    assert reason == "waiting for host 'host1': host_concurrency needs 1, 2/2 in use"


def test_workload_without_marker_is_plain(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    names, paths = snapshot_of(live)
    read = patch_snapshot((names, paths))
    controller = AdmissionController(live, worker_name="worker1")
    plain = make_workload(-1, job=None)

    assert controller.resolve([plain], MagicMock()) == [plain]
    assert controller.waiting == {}
    read.assert_not_called()


def test_unread_snapshot_keeps_task_unresolved(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    patch_snapshot((None, {}))
    controller = AdmissionController(live, worker_name="worker1")

    assert controller.resolve([make_workload(0)], MagicMock()) == []
    assert controller.waiting == {}


def test_map_index_outside_snapshot_is_plain(tmp_path, patch_snapshot) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    controller = AdmissionController(live, worker_name="worker1")
    outside = make_workload(len(names))

    assert controller.resolve([outside], MagicMock()) == [outside]
    assert controller.waiting == {}


# --- BistroExecutor ---------------------------------------------------------------------


class FakeJWT:
    """Fake JWT generator whose tokens name the subject they were minted for."""

    def generate(self, extras: dict[str, Any], valid_for: float) -> str:
        return f"fresh-token-for-{extras['sub']}"


def take_off_queue(executor: BistroExecutor, workloads: list[Any]) -> None:
    for workload in workloads:
        executor.queued_tasks.pop(workload.key, None)
        executor.queued_callbacks.pop(workload.key, None)


class FakeGrantTable:
    """The grant rows of the metadata database, kept in a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, repository.GrantRecord] = {}

    def add_grant(self, session: Any, record: repository.GrantRecord) -> None:
        self.rows[record.ti_id] = record

    def load_grants(self, session: Any) -> list[repository.GrantRecord]:
        return list(self.rows.values())

    def delete_grants(self, session: Any, ti_ids: Any) -> int:
        return sum(self.rows.pop(ti_id, None) is not None for ti_id in ti_ids)


@pytest.fixture
def executor_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mocker: Any) -> Iterator[Any]:
    """Patch Airflow's config, the DB session, grant rows, XCom writes and the worker
    hand-off."""
    path = write_config(tmp_path / "bistro.json")
    monkeypatch.setenv("AIRFLOW__BISTRO__CONFIG_FILE", path)
    monkeypatch.setenv("AIRFLOW__BISTRO__WORKER_PROCESSES", "8")
    monkeypatch.setenv("AIRFLOW__BISTRO__MAX_WAITING_TASKS", "10000")
    # Most tests count dispatched tasks against the 8 worker processes.
    monkeypatch.setenv("AIRFLOW__BISTRO__PREFETCH_TASKS", "0")
    session = MagicMock(name="session")
    context = MagicMock(name="create_session")
    context.return_value.__enter__.return_value = session
    mocker.patch("bistro_provider.executors.base.create_session", context)
    mocker.patch("airflow.utils.session.create_session", context)
    xcom_set = mocker.patch("airflow.models.xcom.XComModel.set")
    grants = FakeGrantTable()
    for name in ("add_grant", "load_grants", "delete_grants"):
        mocker.patch.object(repository, name, side_effect=getattr(grants, name))
    # Every task instance handed to the executor is still queued in the database.
    mocker.patch.object(
        repository, "ti_states", side_effect=lambda _session, ids: dict.fromkeys(ids, "queued")
    )
    process = mocker.patch.object(
        LocalExecutor, "_process_workloads", autospec=True, side_effect=take_off_queue
    )
    mocker.patch.object(LocalExecutor, "_check_workers", autospec=True)
    yield {
        "path": path,
        "session": session,
        "xcom_set": xcom_set,
        "process": process,
        "grants": grants,
    }


def make_executor(path: str) -> BistroExecutor:
    executor = BistroExecutor()
    executor.admission.live = live_forest(path)
    executor.jwt_generator = FakeJWT()
    executor.result_queue = queue.SimpleQueue()
    # Limit sync() to reading task endings, because the periodic publishing and grant
    # checks would only see MagicMock sessions here.
    executor._next_sync = float("inf")
    executor._next_reconcile = float("inf")
    return executor


def queue_all(executor: BistroExecutor, workloads: list[ExecuteTask]) -> None:
    for workload in workloads:
        executor.queue_workload(workload, session=MagicMock())


def dispatched(env: dict[str, Any]) -> list[Any]:
    return [workload for call in env["process"].call_args_list for workload in call.args[1]]


def test_executor_dispatches_only_admitted(executor_env, patch_snapshot) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    queue_all(executor, workloads_for(names, ["db11", "db12", "db13", "db21"]))

    executor.trigger_tasks(open_slots=8)

    sent = [names[w.ti.map_index] for w in dispatched(executor_env)]
    assert len(sent) == 3
    assert "db21" in sent
    assert len([node for node in sent if node.startswith("db1")]) == 2
    assert len(executor.queued_tasks) == 1
    assert len(executor.admission.waiting) == 1


def test_executor_remints_token_on_admission(executor_env, patch_snapshot) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    queue_all(executor, workloads_for(names, ["db11"]))

    executor.trigger_tasks(open_slots=8)

    [workload] = dispatched(executor_env)
    assert workload.token == f"fresh-token-for-{workload.ti.id}"


def test_executor_records_admission_xcom(executor_env, patch_snapshot) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    [workload] = workloads_for(names, ["db21"])
    queue_all(executor, [workload])

    executor.trigger_tasks(open_slots=8)

    call = executor_env["xcom_set"].call_args
    assert call.kwargs["key"] == f"bistro_admission.{workload.ti.map_index}"
    assert call.kwargs["task_id"] == "snapshot_nodes"
    assert call.kwargs["map_index"] == -1
    record = call.kwargs["value"]
    assert record["node"] == "db21"
    assert record["path"] == ["instance", "host2", "db21"]
    assert record["resources_by_node"] == {
        "host2": {"host_concurrency": 1},
        "db21": {"db_concurrency": 1},
    }
    executor_env["session"].commit.assert_called()


def test_executor_slots_count_dispatched_and_waiting(executor_env, patch_snapshot) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    queue_all(executor, workloads_for(names, names))

    assert executor.slots_occupied == 0
    assert executor.slots_available == 10000 - 5

    executor.trigger_tasks(open_slots=8)

    assert len(dispatched(executor_env)) == 4
    assert executor.slots_occupied == 4
    assert executor.slots_available == 10000 - 1


def end_through_worker(executor: BistroExecutor, key: Any) -> None:
    """Report an end the way a LocalExecutor worker process does: on the result queue."""
    executor.result_queue.put((key, TaskInstanceState.SUCCESS, None))


def end_through_scheduler(executor: BistroExecutor, key: Any) -> None:
    """Report an end the way the scheduler does for a task it gave up on."""
    executor.change_state(key, TaskInstanceState.SUCCESS)


@pytest.mark.parametrize(
    "report_end",
    [
        pytest.param(end_through_worker, id="worker-result"),
        pytest.param(end_through_scheduler, id="change-state"),
    ],
)
def test_executor_release_admits_next_waiting(executor_env, patch_snapshot, report_end) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    queue_all(executor, workloads_for(names, ["db11", "db12", "db13"]))
    executor.trigger_tasks(open_slots=8)
    first = dispatched(executor_env)
    assert len(first) == 2

    executor.trigger_tasks(open_slots=8)
    assert len(dispatched(executor_env)) == 2

    report_end(executor, first[0].key)
    executor.sync()

    # The heartbeat that reads the ending admits the next task; no scheduler loop passes.
    assert first[0].ti.id not in {uuid.UUID(h) for h in executor.admission.ledger.holders()}
    assert executor.event_buffer[first[0].key][0] == TaskInstanceState.SUCCESS
    after = dispatched(executor_env)
    assert len(after) == 3
    assert after[2].ti.map_index not in {w.ti.map_index for w in first}
    assert executor.queued_tasks == {}
    assert executor.slots_occupied == 2


def test_executor_plain_tasks_need_no_admission(executor_env, patch_snapshot) -> None:
    executor = make_executor(executor_env["path"])
    read = patch_snapshot(snapshot_of(executor.admission.live))
    plain = [make_workload(-1, job=None, priority=p, run_id=f"run{p}") for p in range(10)]
    queue_all(executor, plain)

    executor.trigger_tasks(open_slots=8)

    sent = dispatched(executor_env)
    assert len(sent) == 8
    assert sorted(w.ti.priority_weight for w in sent) == list(range(2, 10))
    assert len(executor.admission.ledger) == 0
    read.assert_not_called()


def test_prefetched_tasks_wait_beyond_worker_processes(
    executor_env, patch_snapshot, monkeypatch
) -> None:
    """Up to `prefetch` admitted tasks beyond the worker processes go to the worker pool's
    queue. They occupy no scheduler slot, and no task is admitted beyond them."""
    monkeypatch.setenv("AIRFLOW__BISTRO__PREFETCH_TASKS", "3")
    hosts = {f"host{h}": [f"db{h}_{d}" for d in range(2)] for h in range(10)}
    path = write_config(Path(executor_env["path"]), hosts=hosts)
    executor = make_executor(path)
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    queue_all(executor, [make_workload(index) for index in range(len(names))])

    executor.trigger_tasks(open_slots=8)

    assert len(dispatched(executor_env)) == 8 + 3
    assert executor.slots_occupied == 8
    assert len(executor.queued_tasks) == 20 - 11

    first = dispatched(executor_env)[0]
    end_through_worker(executor, first.key)
    executor.sync()
    executor.trigger_tasks(open_slots=8)

    assert len(dispatched(executor_env)) == 12
    assert executor.slots_occupied == 8


def test_plain_tasks_fill_open_slots(
    executor_env, patch_snapshot
) -> None:
    """Plain tasks fill the open slots the executor class reports, whatever is already
    dispatched, and LocalExecutor counts none of them once handed over."""
    executor = make_executor(executor_env["path"])
    patch_snapshot(snapshot_of(executor.admission.live))
    for round_number in range(3):
        plain = [make_workload(-1, job=None, run_id=f"r{round_number}-{p}") for p in range(8)]
        queue_all(executor, plain)
        executor.trigger_tasks(open_slots=8)

    assert len(dispatched(executor_env)) == 24
    assert executor.slots_occupied == 0
    assert executor.queued_tasks == {}


def test_plain_tasks_do_not_block_admission(executor_env, patch_snapshot) -> None:
    """Admitted tasks are capped apart from plain ones, so a stream of plain tasks never
    keeps a Bistro task that fits from starting."""
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    queue_all(executor, [make_workload(-1, job=None, run_id=f"p{p}") for p in range(16)])
    executor.trigger_tasks(open_slots=16)
    queue_all(executor, workloads_for(names, ["db11"]))

    executor.trigger_tasks(open_slots=8)

    sent = dispatched(executor_env)
    assert len(sent) == 17
    assert names[sent[-1].ti.map_index] == "db11"
    assert executor.slots_occupied == 1


def test_requeued_try_waits_for_previous_end(executor_env, patch_snapshot) -> None:
    """A rescheduled try keeps its task instance id and key, and the scheduler may queue
    it again before the executor has read the end of the previous run.

    The db limit of 2 leaves room for both runs, so only the holder id tells them apart.
    """
    path = write_config(Path(executor_env["path"]), db_limit=2)
    executor = make_executor(path)
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    [first] = workloads_for(names, ["db11"])
    queue_all(executor, [first])
    executor.trigger_tasks(open_slots=8)
    again = first.model_copy(update={"token": "token-from-second-queueing"})
    queue_all(executor, [again])

    executor.trigger_tasks(open_slots=8)

    assert len(dispatched(executor_env)) == 1
    assert executor.admission.ledger.used(("host", "host1")) == {"host_concurrency": 1}

    executor.result_queue.put((first.key, TaskInstanceState.SUCCESS, None))
    executor.sync()
    executor.trigger_tasks(open_slots=8)

    assert len(dispatched(executor_env)) == 2
    assert executor.admission.ledger.used(("host", "host1")) == {"host_concurrency": 1}
    assert executor.slots_occupied == 1


def test_executor_ten_thousand_waiting(executor_env, patch_snapshot, capsys) -> None:
    hosts = {f"host{h}": [f"db{h}_{d}" for d in range(100)] for h in range(100)}
    path = write_config(Path(executor_env["path"]), hosts=hosts)
    executor = make_executor(path)
    names, paths = snapshot_of(executor.admission.live)
    assert len(names) == 10000
    patch_snapshot((names, paths))
    queue_all(executor, [make_workload(index) for index in range(len(names))])
    assert executor.slots_available == 0

    started = time.perf_counter()
    executor.trigger_tasks(open_slots=8)
    trigger_seconds = time.perf_counter() - started

    assert len(dispatched(executor_env)) == 8
    assert len(executor.admission.waiting) == 10000 - 8

    started = time.perf_counter()
    granted = executor.admission.run_pass(10000, statuses={})
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\ntrigger_tasks over 10000 queued tasks: {trigger_seconds:.3f} s")
        print(f"admission pass over {10000 - 8} waiting tasks: {elapsed:.3f} s")

    assert len(granted) == 200 - 8
    assert len(executor.admission.ledger) == 200

    # One dispatched task ends: the scoped pass looks only at the waiting databases of
    # its host and starts one of them. The grants of the pass above are recorded, as the
    # executor records what it admits.
    executor.admission.commit(granted, executor_env["session"], {})
    for item in granted:
        executor.admission.forget(item.task.workload.ti.key)
    ended = dispatched(executor_env)[0]
    host = f"host{names[ended.ti.map_index].split('_')[0][2:]}"
    end_through_worker(executor, ended.key)
    started = time.perf_counter()
    executor.sync()
    scoped_seconds = time.perf_counter() - started
    with capsys.disabled():
        print(f"sync with one ending and a scoped pass: {scoped_seconds * 1000:.2f} ms")

    [after] = dispatched(executor_env)[8:]
    assert paths[names[after.ti.map_index]][1] == host
    assert executor.admission.last_pass_tasks == 100 - 2


def grant_record(ti_id: str, holdings: dict[Any, dict[str, int]]) -> repository.GrantRecord:
    return repository.GrantRecord(
        ti_id=ti_id,
        dag_id="bistro_job1",
        task_id="run",
        run_id="other-scheduler-run",
        map_index=0,
        try_number=1,
        job="job1",
        node="db11",
        path=("instance", "host1", "db11"),
        holdings=holdings,
        worker="worker2",
        granted_at=0.0,
        owner="other-host:1",
    )


def test_executor_writes_and_deletes_grant_rows(executor_env, patch_snapshot) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    [workload] = workloads_for(names, ["db21"])
    queue_all(executor, [workload])

    executor.trigger_tasks(open_slots=8)

    rows = executor_env["grants"].rows
    assert list(rows) == [str(workload.ti.id)]
    assert rows[str(workload.ti.id)].holdings == {
        ("host", "host2"): {"host_concurrency": 1},
        ("db", "db21"): {"db_concurrency": 1},
    }

    executor.result_queue.put((workload.key, TaskInstanceState.FAILED, None))
    executor.sync()

    assert rows == {}
    assert len(executor.admission.ledger) == 0


def test_executor_counts_other_schedulers_grants(executor_env, patch_snapshot) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    other = grant_record(str(uuid.uuid4()), {("host", "host1"): {"host_concurrency": 2}})
    executor_env["grants"].rows[other.ti_id] = other
    queue_all(executor, workloads_for(names, ["db11", "db21"]))

    executor.trigger_tasks(open_slots=8)

    assert [names[w.ti.map_index] for w in dispatched(executor_env)] == ["db21"]
    reason = executor.admission.waiting_reasons()[("job1", "db11")]
    assert reason == "waiting for host 'host1': host_concurrency needs 1, 2/2 in use"


def test_record_endings_survives_failed_write(tmp_path, patch_snapshot, mocker) -> None:
    live = live_forest(write_config(tmp_path / "bistro.json"))
    names, paths = snapshot_of(live)
    patch_snapshot((names, paths))
    [workload] = workloads_for(names, ["db11"])
    controller = controller_with(live, names, [workload])
    granted = controller.run_pass(1, statuses={})
    mocker.patch("airflow.models.xcom.XComModel.set")
    controller.commit(granted, MagicMock(), statuses={})
    failing = mocker.patch("airflow.utils.session.create_session")
    failing.return_value.__enter__.side_effect = RuntimeError("database is locked")

    record_endings(controller, [(workload.key, TaskInstanceState.SUCCESS, str(workload.ti.id))])

    assert len(controller.ledger) == 0
    assert controller.running == {}
