"""End-to-end check of demo/stack.py: a real Airflow stack runs a mapped DAG and stops cleanly.

It uses the stock LocalExecutor, so it does not depend on the provider's executor.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from demo.processes import is_loopback, listening_sockets
from demo.stack import AirflowStack, StackError

pytestmark = pytest.mark.e2e

DAG_ID = "stack_smoke"

DAG_SOURCE = textwrap.dedent(
    f"""
    from __future__ import annotations

    import pendulum
    from airflow.sdk import dag, task


    @dag(dag_id="{DAG_ID}", schedule=None, start_date=pendulum.datetime(2024, 1, 1))
    def stack_smoke():
        @task
        def square(value: int) -> int:
            return value * value

        square.expand(value=[1, 2, 3])


    stack_smoke()
    """
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    root = tmp_path_factory.mktemp("stack")
    dags = root / "dags"
    dags.mkdir()
    (dags / "stack_smoke.py").write_text(DAG_SOURCE)
    env = {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "2"}
    with AirflowStack(root / "home", dags, env) as running:
        yield running


@pytest.fixture(scope="module")
def finished_run(stack: AirflowStack) -> tuple[str, str, list[dict[str, int]]]:
    seen: list[dict[str, int]] = []
    run_id = stack.trigger(DAG_ID, conf={"source": "smoke"})
    state = stack.wait_for_run(DAG_ID, run_id, timeout=120, progress=seen.append)
    return run_id, state, seen


def test_stack_runs_mapped_dag(
    stack: AirflowStack, finished_run: tuple[str, str, list[dict[str, int]]]
) -> None:
    run_id, state, seen = finished_run
    instances = stack.task_instances(DAG_ID, run_id)
    assert state == "success"
    assert sorted(ti["map_index"] for ti in instances) == [0, 1, 2]
    assert {ti["state"] for ti in instances} == {"success"}
    assert seen[-1] == {"success": 3}


def test_stack_run_keeps_conf(
    stack: AirflowStack, finished_run: tuple[str, str, list[dict[str, int]]]
) -> None:
    run_id, _, _ = finished_run
    assert stack.dag_run(DAG_ID, run_id)["conf"] == {"source": "smoke"}


def test_stack_listens_on_loopback_only(stack: AirflowStack) -> None:
    sockets = listening_sockets(set(stack.pids()))
    if sockets is None:
        pytest.skip("ss (iproute2) is not installed")
    assert f"127.0.0.1:{stack.port}" in {address for address, _ in sockets}
    assert [address for address, _ in sockets if not is_loopback(address)] == []


def test_stack_stop_leaves_no_process(
    stack: AirflowStack, finished_run: tuple[str, str, list[dict[str, int]]]
) -> None:
    started = stack.pids()
    assert started != []
    assert stack.stop() == []
    assert stack.stop() == []


def test_stack_start_reports_crashed_service(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    env = {"AIRFLOW__CORE__EXECUTOR": "no_such_module.NoSuchExecutor"}
    stack = AirflowStack(tmp_path / "home", dags, env, startup_timeout=60)
    with pytest.raises(StackError, match="scheduler exited") as raised:
        stack.start()
    assert "no_such_module" in str(raised.value)
    assert stack.stop() == []
