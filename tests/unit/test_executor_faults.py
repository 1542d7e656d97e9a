"""BistroExecutor under faults: database errors, cancelled runs, grants of a dead scheduler.

Uses the fakes of `test_executor`: MagicMock sessions, grant rows in a dict and worker
hand-off that only takes workloads off the queue. `tests/e2e/test_faults.py` injects the
same faults into a real stack.
"""

# The fixtures imported from test_executor are parameters of the tests here.
# ruff: noqa: F811

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any
from unittest.mock import MagicMock

import pytest
from airflow.utils.state import TaskInstanceState
from sqlalchemy.exc import OperationalError

from bistro_provider.executors.admission import RunningTask
from bistro_provider.store import repository
from tests.unit.test_executor import (  # noqa: F401
    dispatched,
    executor_env,
    grant_record,
    make_executor,
    patch_snapshot,
    queue_all,
    snapshot_of,
    workloads_for,
)

DROPPED = OperationalError("SELECT 1", {}, Exception("server closed the connection"))


def states_with(overrides: dict[str, str]) -> Any:
    """Return a fake `ti_states`: every id queued unless `overrides` names its state."""

    def ti_states(_session: Any, ids: Any) -> dict[str, str]:
        return {ti_id: overrides.get(ti_id, "queued") for ti_id in ids}

    return ti_states


def test_cancelled_waiting_task_is_not_dispatched(executor_env, patch_snapshot, mocker) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    cancelled, kept = workloads_for(names, ["db11", "db21"])
    mocker.patch.object(
        repository, "ti_states", side_effect=states_with({str(cancelled.ti.id): "skipped"})
    )
    queue_all(executor, [cancelled, kept])

    executor.trigger_tasks(open_slots=8)

    assert [w.key for w in dispatched(executor_env)] == [kept.key]
    assert list(executor_env["grants"].rows) == [str(kept.ti.id)]
    assert str(cancelled.ti.id) not in executor.admission.ledger
    assert cancelled.key not in executor.admission.waiting
    assert cancelled.key not in executor.queued_tasks


def test_stale_waiting_task_is_forgotten(executor_env, patch_snapshot, mocker) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    [workload] = workloads_for(names, ["db11"])
    queue_all(executor, [workload])
    executor.admission.resolve([workload], MagicMock())
    mocker.patch.object(
        repository, "ti_states", side_effect=states_with({str(workload.ti.id): "failed"})
    )

    executor._drop_stale_waiting(MagicMock())

    assert executor.admission.waiting == {}
    assert executor.queued_tasks == {}


def test_failed_pass_after_ending_retries(
    executor_env, patch_snapshot, mocker, caplog: pytest.LogCaptureFixture
) -> None:
    """The pass that sync runs after an ending fails: the ending is still recorded, the
    next task keeps waiting, and the next heartbeat admits it."""
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    queue_all(executor, workloads_for(names, ["db11", "db12", "db13"]))
    executor.trigger_tasks(open_slots=8)
    [first, _second] = dispatched(executor_env)
    mocker.patch.object(repository, "load_statuses", side_effect=DROPPED)

    executor.result_queue.put((first.key, TaskInstanceState.SUCCESS, None))
    executor.sync()

    assert len(dispatched(executor_env)) == 2
    assert len(executor.admission.waiting) == 1
    assert str(first.ti.id) not in executor_env["grants"].rows
    assert "could not use the metadata database" in caplog.text

    mocker.patch.object(repository, "load_statuses", return_value={})
    executor.trigger_tasks(open_slots=8)

    assert len(dispatched(executor_env)) == 3
    assert executor.admission.waiting == {}


def test_dropped_connection_keeps_tasks_waiting(
    executor_env, patch_snapshot, mocker, caplog: pytest.LogCaptureFixture
) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    queue_all(executor, workloads_for(names, ["db11", "db21"]))
    calls: list[int] = []

    def load_statuses(_session: Any, _jobs: Any) -> dict[Any, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise DROPPED
        return {}

    mocker.patch.object(repository, "load_statuses", side_effect=load_statuses)

    executor.trigger_tasks(open_slots=8)

    assert dispatched(executor_env) == []
    assert len(executor.admission.waiting) == 2
    assert executor_env["grants"].rows == {}
    assert "could not use the metadata database" in caplog.text

    executor.trigger_tasks(open_slots=8)

    assert len(dispatched(executor_env)) == 2


def test_failed_state_sync_is_logged_not_raised(
    executor_env, mocker, caplog: pytest.LogCaptureFixture
) -> None:
    executor = make_executor(executor_env["path"])
    executor._next_sync = 0.0
    mocker.patch.object(repository, "load_capacity_overrides", side_effect=DROPPED)

    executor.sync()

    assert "state sync could not use the metadata database" in caplog.text


def adopt_foreign_grant(executor: Any, grants: Any) -> str:
    """Put a grant of another scheduler process into the table, ledger and running set."""
    ti_id = str(uuid.uuid4())
    record = grant_record(ti_id, {("host", "host1"): {"host_concurrency": 1}})
    grants.rows[ti_id] = record
    executor.admission.ledger.force_acquire(ti_id, record.holdings)
    executor.admission.running[ti_id] = RunningTask(
        ti_id, record.dag_id, record.run_id, record.job, record.node, 0.0, "run", 0, "worker2"
    )
    return ti_id


def test_ended_foreign_task_frees_job_node(executor_env, mocker) -> None:
    executor = make_executor(executor_env["path"])
    ti_id = adopt_foreign_grant(executor, executor_env["grants"])
    mocker.patch.object(repository, "ti_states", side_effect=states_with({ti_id: "success"}))
    mocker.patch.object(repository, "put_status")

    executor._release_foreign_grants(MagicMock())

    assert ti_id not in executor.admission.ledger
    assert ti_id not in executor.admission.running
    assert executor_env["grants"].rows == {}


def test_ended_task_of_live_scheduler_gets_its_status(executor_env, mocker) -> None:
    """A grant of another running scheduler reaches this ledger only through the grant
    table. When its task ends before that scheduler records it, this process records the
    (job, node) status; otherwise a continuous job would run the node again."""
    executor = make_executor(executor_env["path"])
    ti_id = str(uuid.uuid4())
    record = grant_record(ti_id, {("host", "host1"): {"host_concurrency": 1}})
    executor_env["grants"].rows[ti_id] = record
    executor.admission.sync_ledger([record])
    assert ti_id not in executor.admission.running
    mocker.patch.object(repository, "ti_states", side_effect=states_with({ti_id: "success"}))
    put_status = mocker.patch.object(repository, "put_status")

    executor._release_foreign_grants(MagicMock())

    assert [call.args[1:3] for call in put_status.call_args_list] == [("job1", "db11")]
    assert put_status.call_args.kwargs["run_id"] == "other-scheduler-run"
    assert ti_id not in executor.admission.ledger
    assert executor_env["grants"].rows == {}


def test_unwritten_foreign_status_keeps_grant(executor_env, mocker) -> None:
    executor = make_executor(executor_env["path"])
    ti_id = adopt_foreign_grant(executor, executor_env["grants"])
    mocker.patch.object(repository, "ti_states", side_effect=states_with({ti_id: "success"}))
    mocker.patch.object(repository, "put_status", side_effect=DROPPED)

    executor._release_foreign_grants(MagicMock())
    executor._release_foreign_grants(MagicMock())

    assert list(executor_env["grants"].rows) == [ti_id]
    assert [task.ti_id for task in executor._unrecorded] == [ti_id]


def test_vanished_foreign_task_keeps_grant_one_check(executor_env, mocker) -> None:
    executor = make_executor(executor_env["path"])
    ti_id = adopt_foreign_grant(executor, executor_env["grants"])
    mocker.patch.object(repository, "ti_states", side_effect=lambda _session, _ids: {})
    mocker.patch.object(repository, "put_status")

    executor._release_foreign_grants(MagicMock())

    assert ti_id in executor.admission.ledger
    assert list(executor_env["grants"].rows) == [ti_id]

    executor._release_foreign_grants(MagicMock())

    assert ti_id not in executor.admission.ledger
    assert ti_id not in executor.admission.running
    assert executor_env["grants"].rows == {}


def test_grant_of_unseen_commit_is_deleted(executor_env, patch_snapshot) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    [workload] = workloads_for(names, ["db11"])
    queue_all(executor, [workload])
    executor.admission.resolve([workload], MagicMock())
    # The database applied the commit, but the executor saw an error and kept waiting.
    leftover = grant_record(str(workload.ti.id), {("host", "host1"): {"host_concurrency": 1}})
    executor_env["grants"].rows[leftover.ti_id] = replace(leftover, owner=executor.admission.owner)

    executor.trigger_tasks(open_slots=8)

    assert [w.key for w in dispatched(executor_env)] == [workload.key]
    assert executor_env["grants"].rows[str(workload.ti.id)].owner == executor.admission.owner
    assert executor_env["grants"].rows[str(workload.ti.id)].run_id == workload.ti.run_id


def test_foreign_grant_of_waiting_task_is_kept(executor_env, patch_snapshot) -> None:
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    [workload] = workloads_for(names, ["db11"])
    queue_all(executor, [workload])
    other = grant_record(str(workload.ti.id), {("host", "host1"): {"host_concurrency": 1}})
    executor_env["grants"].rows[other.ti_id] = other

    executor.trigger_tasks(open_slots=8)

    assert dispatched(executor_env) == []
    assert executor_env["grants"].rows[other.ti_id] is other


def test_adoption_keeps_own_task_instances(executor_env, patch_snapshot) -> None:
    """A scheduler whose own job was marked failed is offered its own task instances.
    The ones this executor runs or keeps waiting are kept, and the others are reset."""
    executor = make_executor(executor_env["path"])
    names, paths = snapshot_of(executor.admission.live)
    patch_snapshot((names, paths))
    running, waiting = workloads_for(names, ["db11", "db12"])
    queue_all(executor, [running])
    executor.trigger_tasks(open_slots=8)
    assert [w.key for w in dispatched(executor_env)] == [running.key]
    queue_all(executor, [waiting])
    stranger = MagicMock(id=uuid.uuid4())

    reset = executor.try_adopt_task_instances([running.ti, waiting.ti, stranger])

    assert reset == [stranger]
