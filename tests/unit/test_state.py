"""BistroState views and actions against a real SQLite Airflow metadata database.

One database per session: `airflow db migrate` and `airflow dags reserialize` run once in
subprocesses (about 10 s), with a DAG file that builds the job DAGs from the test config.
Each test then empties the provider's tables and the job DAGs' runs, and seeds the rows it
needs: published documents, grants, statuses and overrides, as the executor writes them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bistro_provider.cli.state_commands import dag_file_text
from bistro_provider.core.config import config_to_json, parse_config
from bistro_provider.core.resources import holdings_from_json
from bistro_provider.nodes import fetch_forest
from bistro_provider.options import BistroOptions
from bistro_provider.state import BistroState, StateError
from bistro_provider.state.monitor import handle_monitor
from bistro_provider.state.tasks import encode_histogram_bits
from bistro_provider.state.views import fill_state
from bistro_provider.store import repository
from bistro_provider.store.models import (
    AuditEntry,
    CapacityOverride,
    Grant,
    PublishedState,
    TaskStatusRow,
)

AIRFLOW = Path(sys.executable).with_name("airflow")
NOW = 1_800_000_000.0
USER = "cli:tester"

CONFIG: dict[str, Any] = {
    "bistro_settings": {
        "enabled": True,
        "nodes": {
            "levels": ["host", "db"],
            "node_order": "lexicographic",
            "node_sources": [
                {
                    "source": "manual",
                    "prefs": {
                        "host1": ["db11", "db12"],
                        "host2": ["db21", "db22"],
                        "host3": {"children": ["db31"], "disabled": True},
                    },
                }
            ],
        },
        "resources": {
            "host": {"slots": {"limit": 2, "default": 1}},
            "db": {"conns": {"limit": 1, "default": 1}},
            "worker": {"worker_slots": {"limit": 4, "default": 1}},
        },
        "worker_resources_override": {"big-worker": {"worker_slots": 16}},
    },
    "bistro_job->job1": {"owner": "test"},
    "bistro_job->job2": {
        "owner": "test",
        "depends_on": ["job1"],
        "filters": {"db": {"blacklist": ["db12"]}},
    },
    "bistro_job->job3": {"owner": "test", "enabled": False},
    "bistro_job->broken": {"owner": "test", "priority": "high"},
}


# -- database ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Migrate a fresh SQLite metadata database and serialize the job DAGs into it."""
    home = tmp_path_factory.mktemp("airflow_home")
    config_path = home / "bistro.json"
    config_path.write_text(json.dumps(CONFIG))
    dags = home / "dags"
    dags.mkdir()
    (dags / "bistro_jobs.py").write_text(dag_file_text(str(config_path)))
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config_path),
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    for argv in (["db", "migrate"], ["dags", "reserialize"]):
        result = subprocess.run(
            [str(AIRFLOW), *argv], env=dict(os.environ), capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _point_airflow_at_database()
    yield home
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _point_airflow_at_database() -> None:
    """Make this process use the new database, even if Airflow was imported before."""
    from airflow import settings

    settings.configure_vars()
    settings.reconfigure_orm()


@pytest.fixture
def session(airflow_home: Path) -> Iterator[Session]:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as cleanup:
        for model in (Grant, TaskStatusRow, CapacityOverride, AuditEntry, PublishedState):
            cleanup.execute(delete(model))
        cleanup.execute(delete(TaskInstance).where(TaskInstance.dag_id.like("bistro_%")))
        cleanup.execute(delete(DagRun).where(DagRun.dag_id.like("bistro_%")))
    with create_session() as opened:
        yield opened


def options(airflow_home: Path) -> BistroOptions:
    return BistroOptions(config_file=str(airflow_home / "bistro.json"))


def forest_document(tags: dict[str, list[str]] | None = None) -> dict[str, Any]:
    config = parse_config(CONFIG)
    forest = fetch_forest(config.settings, now=0)
    nodes = forest.to_json()
    for node in nodes:
        node["tags"] = (tags or {}).get(str(node["name"]), [])
    return {"levels": list(forest.levels), "fetched_at": NOW - 60, "nodes": nodes}


def publish(
    session: Session,
    *,
    waiting: list[dict[str, Any]] | None = None,
    forest: dict[str, Any] | None = None,
) -> None:
    repository.publish(session, "config", config_to_json(parse_config(CONFIG)), now=NOW)
    repository.publish(session, "forest", forest or forest_document(), now=NOW)
    errors = {"config_file": "/etc/bistro.json", "errors": {}, "forest_time": NOW - 60}
    repository.publish(session, "errors", errors, now=NOW)
    repository.publish(session, "waiting", waiting or [], now=NOW)


def grant(
    session: Session,
    job: str,
    node: str,
    host: str,
    ti_id: str | None = None,
    worker: str | None = None,
) -> repository.GrantRecord:
    """Add a ledger row; with `worker`, the task also holds a worker slot there."""
    items = [
        {"level": "host", "node": host, "resources": {"slots": 1}},
        {"level": "db", "node": node, "resources": {"conns": 1}},
    ]
    if worker is not None:
        items.append({"level": "worker", "node": worker, "resources": {"worker_slots": 1}})
    holdings = holdings_from_json(items)
    record = repository.GrantRecord(
        ti_id=ti_id or str(uuid.uuid4()),
        dag_id=f"bistro_{job}",
        task_id="run",
        run_id="manual__1",
        map_index=0,
        try_number=1,
        job=job,
        node=node,
        path=("instance", host, node),
        holdings=holdings,
        worker="worker1",
        granted_at=NOW - 30,
        owner="scheduler:1",
    )
    repository.add_grant(session, record)
    return record


def status(
    session: Session, job: str, node: str, kind: str, backoff: int = 0, age: float = 10
) -> None:
    stored = repository.StoredStatus(kind, NOW - age, backoff)
    repository.put_status(session, job, node, stored)


def load(session: Session, airflow_home: Path) -> BistroState:
    session.flush()
    return BistroState.load(session, options=options(airflow_home), now=NOW)


def node_row(forest: dict[str, Any], name: str) -> dict[str, Any]:
    return next(row for row in forest["nodes"] if row["name"] == name)


# -- forest --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("capacity", "usage", "expected"),
    [
        pytest.param({"slots": 2}, {}, "free", id="nothing-used"),
        pytest.param({"slots": 2}, {"slots": 1}, "busy", id="some-used"),
        pytest.param({"slots": 2}, {"slots": 2}, "full", id="all-used"),
        pytest.param({"slots": 2, "cpu": 4}, {"slots": 2}, "full", id="one-resource-full"),
        pytest.param({"slots": 1}, {"slots": 2}, "over", id="limit-lowered-below-usage"),
        pytest.param({"slots": 0}, {}, "full", id="limit-zero"),
        pytest.param({}, {}, "free", id="level-without-resources"),
    ],
)
def test_fill_state_rules(capacity: dict[str, int], usage: dict[str, int], expected: str) -> None:
    assert fill_state(capacity, usage) == expected


def test_forest_usage_sums_every_grant(session: Session, airflow_home: Path) -> None:
    publish(session)
    grant(session, "job1", "db11", "host1")
    grant(session, "job2", "db12", "host1")
    forest = load(session, airflow_home).forest()
    host1 = node_row(forest, "host1")
    assert host1["usage"] == {"slots": 2}
    assert host1["available"] == {"slots": 0}
    assert host1["fill"] == "full"
    assert host1["running"] == 2
    assert node_row(forest, "db11")["fill"] == "full"
    assert node_row(forest, "host2")["fill"] == "free"
    assert node_row(forest, "host2")["usage"] == {"slots": 0}


def test_forest_override_wins_over_level_limit(session: Session, airflow_home: Path) -> None:
    publish(session)
    session.add(CapacityOverride(level="host", node="host2", resource="slots", amount=5))
    host2 = node_row(load(session, airflow_home).forest(), "host2")
    assert host2["capacity"] == {"slots": 5}
    assert host2["overrides"] == {"slots": 5}


def test_forest_node_capacity_beats_level_limit(session: Session, airflow_home: Path) -> None:
    document = forest_document()
    node_row(document, "host2")["capacity"] = {"slots": 7}
    publish(session, forest=document)
    assert node_row(load(session, airflow_home).forest(), "host2")["capacity"] == {"slots": 7}


def test_forest_lowered_limit_shows_over(session: Session, airflow_home: Path) -> None:
    publish(session)
    grant(session, "job1", "db11", "host1")
    grant(session, "job1", "db12", "host1")
    session.add(CapacityOverride(level="host", node="host1", resource="slots", amount=1))
    host1 = node_row(load(session, airflow_home).forest(), "host1")
    assert host1["fill"] == "over"
    assert host1["available"] == {"slots": -1}


def test_forest_lists_workers_that_hold_resources(session: Session, airflow_home: Path) -> None:
    publish(session)
    grant(session, "job1", "db11", "host1", worker="worker1")
    grant(session, "job1", "db12", "host1", worker="big-worker")
    forest = load(session, airflow_home).forest(level="worker")
    rows = {row["name"]: row for row in forest["nodes"]}
    assert sorted(rows) == ["big-worker", "worker1"]
    assert rows["worker1"]["capacity"] == {"worker_slots": 4}
    assert rows["worker1"]["usage"] == {"worker_slots": 1}
    assert rows["worker1"]["fill"] == "busy"
    assert rows["worker1"]["enabled"] is True
    assert rows["worker1"]["in_forest"] is False
    assert rows["big-worker"]["capacity"] == {"worker_slots": 16}


def test_forest_lists_nodes_held_after_leaving(session: Session, airflow_home: Path) -> None:
    publish(session)
    grant(session, "job1", "db99", "host9")
    forest = load(session, airflow_home).forest()
    departed = node_row(forest, "db99")
    assert departed["in_forest"] is False
    assert departed["path"] == ["instance", "host9", "db99"]
    assert departed["usage"] == {"conns": 1}
    assert departed["capacity"] == {"conns": 1}
    assert departed["fill"] == "full"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({"level": "host"}, ["host1", "host2", "host3"], id="level"),
        pytest.param({"query": "DB2"}, ["db21", "db22"], id="query-ignores-case"),
        pytest.param({"tag": "ssd"}, ["db21"], id="tag"),
        pytest.param({"state": "full"}, ["db11"], id="fill-state"),
        pytest.param({"level": "db", "offset": 1, "limit": 2}, ["db12", "db21"], id="paging"),
    ],
)
def test_forest_filters(
    session: Session, airflow_home: Path, filters: dict[str, Any], expected: list[str]
) -> None:
    publish(session, forest=forest_document(tags={"db21": ["ssd"]}))
    grant(session, "job1", "db11", "host1")
    forest = load(session, airflow_home).forest(**filters)
    assert [row["name"] for row in forest["nodes"]] == expected


def test_forest_total_counts_before_paging(session: Session, airflow_home: Path) -> None:
    publish(session)
    forest = load(session, airflow_home).forest(level="db", limit=1)
    assert forest["total"] == 5
    assert len(forest["nodes"]) == 1


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        pytest.param(
            {"level": "rack"}, "unknown level 'rack'; defined levels: instance, host", id="level"
        ),
        pytest.param(
            {"state": "empty"}, "unknown fill state 'empty'; use one of: free", id="state"
        ),
        pytest.param({"offset": -1}, "offset must be >= 0", id="offset"),
    ],
)
def test_forest_rejects_bad_filters(
    session: Session, airflow_home: Path, filters: dict[str, Any], message: str
) -> None:
    publish(session)
    with pytest.raises(StateError, match=message):
        load(session, airflow_home).forest(**filters)


def test_state_reads_config_file_when_none_published(session: Session, airflow_home: Path) -> None:
    state = load(session, airflow_home)
    assert state.config is not None
    assert sorted(state.config.jobs) == ["broken", "job1", "job2", "job3"]
    assert state.fetched_forest is None


# -- explain -------------------------------------------------------------------------------


def seed_explain_cases(session: Session) -> None:
    waiting = [
        {
            "ti_id": "ti-w",
            "dag_id": "bistro_job1",
            "run_id": "manual__1",
            "task_id": "run",
            "map_index": 3,
            "try_number": 1,
            "job": "job1",
            "node": "db21",
            "reason": "waiting for host 'host2': slots needs 1, 2/2 in use",
            "since": NOW - 5,
        }
    ]
    publish(session, waiting=waiting)
    grant(session, "job1", "db11", "host1")
    status(session, "job1", "db12", "done")
    status(session, "job2", "db11", "failed")
    status(session, "job2", "db22", "error_backoff", backoff=600)
    status(session, "job1", "db22", "error_backoff", backoff=5, age=100)


@pytest.mark.parametrize(
    ("job", "node", "expected", "reason_part"),
    [
        pytest.param("job1", "db11", "running", "on worker worker1", id="running"),
        pytest.param("job1", "db21", "waiting", "waiting for host 'host2'", id="waiting"),
        pytest.param("job1", "db12", "done", "with status done", id="done"),
        pytest.param("job2", "db11", "failed", "airflow bistro forgive job2", id="failed"),
        pytest.param("job2", "db22", "backoff", "in backoff until", id="in-backoff"),
        pytest.param("job1", "db22", "ready", "may run", id="backoff-ended"),
        pytest.param(
            "job2", "db12", "filtered", "filter for level db rejects node 'db12'", id="filtered"
        ),
        pytest.param("job1", "db31", "node_disabled", "node 'host3'", id="disabled-ancestor"),
        pytest.param("job1", "db99", "not_in_forest", "not in the node list", id="unknown-node"),
        pytest.param(
            "job1", "host1", "not_in_forest", "is on level host", id="node-on-other-level"
        ),
        pytest.param(
            "nojob", "db11", "unknown_job", "defined jobs: broken, job1", id="unknown-job"
        ),
        pytest.param("job3", "db11", "disabled_job", "is disabled", id="disabled-job"),
        pytest.param("broken", "db11", "invalid_job", "priority", id="invalid-job"),
        pytest.param("job2", "db21", "dependency_not_done", "job1 (not started)", id="dependency"),
    ],
)
def test_explain_cases(
    session: Session, airflow_home: Path, job: str, node: str, expected: str, reason_part: str
) -> None:
    seed_explain_cases(session)
    answer = load(session, airflow_home).explain(job, node)
    assert answer["state"] == expected
    assert reason_part in answer["reason"]


def test_explain_running_lists_holdings(session: Session, airflow_home: Path) -> None:
    seed_explain_cases(session)
    details = load(session, airflow_home).explain("job1", "db11")["details"]
    assert details["holdings"] == [
        {"level": "host", "node": "host1", "resources": {"slots": 1}},
        {"level": "db", "node": "db11", "resources": {"conns": 1}},
    ]
    assert details["worker"] == "worker1"


# -- jobs and histograms -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bits", "expected"),
    [
        pytest.param(1, "B", id="unstarted"),
        pytest.param(2, "C", id="running"),
        pytest.param(4, "E", id="done"),
        pytest.param(6, "G", id="done-and-running"),
        pytest.param(16, "Q", id="failed"),
        pytest.param(96, "gB", id="error-in-backoff"),
        pytest.param(128, "AC", id="avoided"),
        pytest.param(129, "BC", id="avoided-and-unstarted"),
        pytest.param(256, "AE", id="disabled"),
    ],
)
def test_histogram_encoding_matches_bistro(bits: int, expected: str) -> None:
    assert encode_histogram_bits(bits) == expected


def test_histogram_ors_bits_into_ancestors(session: Session, airflow_home: Path) -> None:
    publish(session)
    grant(session, "job1", "db11", "host1")
    status(session, "job1", "db12", "done")
    histograms = load(session, airflow_home).histogram(["job1"])["histograms"]["job1"]
    # db11 RUNNING C, db12 DONE E, db21 and db22 UNSTARTED B, db31 under host3 DISABLED AE.
    assert histograms["db"] == {"C": 1, "E": 1, "B": 2, "AE": 1}
    assert histograms["host"] == {"G": 1, "B": 1, "AE": 1}
    assert histograms["instance"] == {encode_histogram_bits(2 | 4 | 1 | 256): 1}


def test_histogram_backoff_bit_only_while_waiting(session: Session, airflow_home: Path) -> None:
    publish(session)
    status(session, "job1", "db11", "error_backoff", backoff=600)
    status(session, "job1", "db12", "error_backoff", backoff=5, age=100)
    db = load(session, airflow_home).histogram(["job1"])["histograms"]["job1"]["db"]
    assert db["gB"] == 1
    assert db["g"] == 1


def test_histogram_samples_only_when_asked(session: Session, airflow_home: Path) -> None:
    publish(session)
    state = load(session, airflow_home)
    assert "samples" not in state.histogram(["job1"])
    samples = state.histogram(["job1"], num_samples=1)["samples"]["job1"]["db"]
    assert samples["B"] == ["db11"]


def test_histogram_skips_invalid_and_unknown_jobs(session: Session, airflow_home: Path) -> None:
    publish(session)
    histograms = load(session, airflow_home).histogram(["broken", "nojob", "job3"])["histograms"]
    assert list(histograms) == ["job3"]


def test_jobs_progress_counts_each_task_once(session: Session, airflow_home: Path) -> None:
    seed_explain_cases(session)
    jobs = {job["name"]: job for job in load(session, airflow_home).jobs()["jobs"]}
    assert jobs["job1"]["progress"] == {
        "done": 1,
        "running": 1,
        "waiting": 1,
        "backoff": 0,
        "incomplete": 1,
        "failed": 0,
        "filtered": 0,
        "disabled": 1,
        "unstarted": 0,
        "total": 5,
    }
    assert jobs["job2"]["progress"]["filtered"] == 1
    assert jobs["job2"]["progress"]["failed"] == 1
    assert jobs["job2"]["progress"]["backoff"] == 1


def test_jobs_show_errors_of_invalid_job(session: Session, airflow_home: Path) -> None:
    publish(session)
    broken = load(session, airflow_home).job_info("broken")
    assert broken["valid"] is False
    assert broken["progress"] is None
    assert "priority" in broken["errors"][0]


def test_job_info_rejects_unknown_job(session: Session, airflow_home: Path) -> None:
    publish(session)
    with pytest.raises(StateError, match="unknown job 'nojob'; defined jobs: broken") as raised:
        load(session, airflow_home).job_info("nojob")
    assert raised.value.kind == "not_found"


# -- capacity ------------------------------------------------------------------------------


def audit_rows(session: Session) -> list[AuditEntry]:
    session.flush()
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def test_set_capacity_stores_override_and_audit(session: Session, airflow_home: Path) -> None:
    publish(session)
    result = load(session, airflow_home).set_capacity(USER, "host", "host1", "slots", 5)
    again = load(session, airflow_home).set_capacity(USER, "host", "host1", "slots", 3)
    row = session.get(CapacityOverride, ("host", "host1", "slots"))
    audits = audit_rows(session)
    assert row is not None and row.amount == 3
    assert result["previous_capacity"] == 2
    assert again["previous_override"] == 5
    assert [(a.user, a.action, a.target) for a in audits] == [
        (USER, "set_capacity", "host/host1/slots"),
        (USER, "set_capacity", "host/host1/slots"),
    ]
    assert json.loads(audits[1].old_value) == {"override": 5, "capacity": 5}
    assert json.loads(audits[1].new_value) == {"override": 3}


def test_clear_capacity_removes_override_and_audits(session: Session, airflow_home: Path) -> None:
    publish(session)
    session.add(CapacityOverride(level="host", node="host1", resource="slots", amount=5))
    result = load(session, airflow_home).clear_capacity(USER, "host", "host1")
    audits = audit_rows(session)
    assert result["cleared"] == {"slots": 5}
    assert session.get(CapacityOverride, ("host", "host1", "slots")) is None
    assert [(a.action, json.loads(a.old_value), json.loads(a.new_value)) for a in audits] == [
        ("clear_capacity", {"override": 5}, {"override": None})
    ]


def test_audit_view_lists_newest_first(session: Session, airflow_home: Path) -> None:
    publish(session)
    load(session, airflow_home).set_capacity(USER, "host", "host1", "slots", 5)
    load(session, airflow_home).set_capacity(USER, "db", "db11", "conns", 2)
    session.flush()
    entries = load(session, airflow_home).audit(limit=10)["entries"]
    assert [entry["target"] for entry in entries] == ["db/db11/conns", "host/host1/slots"]
    assert entries[0]["new_value"] == {"override": 2}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("rack", "r1", "slots", 1), "unknown level 'rack'; defined levels", id="level"
        ),
        pytest.param(
            ("host", "host1", "cpu", 1),
            "level host has no resource 'cpu'; its resources: slots",
            id="resource",
        ),
        pytest.param(
            ("host", "host1", "slots", -1), "amount must be an integer >= 0, got -1", id="negative"
        ),
        pytest.param(("host", "host9", "slots", 1), "node 'host9' is not on level host", id="node"),
    ],
)
def test_set_capacity_rejects_bad_input(
    session: Session, airflow_home: Path, args: tuple[Any, ...], message: str
) -> None:
    publish(session)
    with pytest.raises(StateError, match=message):
        load(session, airflow_home).set_capacity(USER, *args)
    assert audit_rows(session) == []


def test_clear_capacity_without_override_is_not_found(session: Session, airflow_home: Path) -> None:
    publish(session)
    with pytest.raises(StateError, match="no capacity override for host/host1") as raised:
        load(session, airflow_home).clear_capacity(USER, "host", "host1")
    assert raised.value.kind == "not_found"


# -- forgive and kill ----------------------------------------------------------------------


def make_run(session: Session, job: str, run_id: str, state: str) -> str:
    """Create a run of the job DAG whose mapped task has one instance, map index 0."""
    from airflow.models.dagbag import DBDagBag
    from airflow.sdk import timezone
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    dag = DBDagBag().get_latest_version_of_dag(f"bistro_{job}", session=session)
    assert dag is not None, "the DAG file did not serialize"
    dag.create_dagrun(
        run_id=run_id,
        run_after=timezone.utcnow(),
        run_type=DagRunType.MANUAL,
        triggered_by=DagRunTriggeredByType.TEST,
        state=DagRunState.RUNNING if state == "running" else DagRunState.FAILED,
        session=session,
    )
    ti = mapped_ti(session, job, run_id, -1)
    ti.map_index = 0
    ti.state = state
    session.flush()
    return str(ti.id)


def mapped_ti(session: Session, job: str, run_id: str, map_index: int = 0) -> Any:
    from airflow.models.taskinstance import TaskInstance

    session.expire_all()
    query = select(TaskInstance).where(
        TaskInstance.dag_id == f"bistro_{job}",
        TaskInstance.run_id == run_id,
        TaskInstance.task_id == "run",
        TaskInstance.map_index == map_index,
    )
    return session.scalars(query).one()


def ti_state(session: Session, job: str, run_id: str) -> str | None:
    state = mapped_ti(session, job, run_id).state
    return None if state is None else str(getattr(state, "value", state))


def test_forgive_persists_retryable_statuses(session: Session, airflow_home: Path) -> None:
    from airflow.utils.session import create_session

    publish(session)
    status(session, "job1", "db11", "failed")
    status(session, "job1", "db12", "error_backoff", backoff=600)
    status(session, "job1", "db21", "done")
    status(session, "job2", "db11", "failed")
    result = load(session, airflow_home).forgive_job(USER, "job1")
    session.commit()
    with create_session() as fresh:
        stored = repository.load_statuses(fresh)
    assert result["forgiven_failed"] == 1
    assert result["forgiven_backoff"] == 1
    assert stored[("job1", "db11")].kind == "error_backoff"
    assert stored[("job1", "db11")].backoff == 0
    assert stored[("job1", "db12")].backoff == 0
    assert stored[("job1", "db21")].kind == "done"
    assert stored[("job2", "db11")].kind == "failed"
    assert [a.action for a in audit_rows(session)] == ["forgive_job"]


def test_forgive_clears_failed_task_instances(session: Session, airflow_home: Path) -> None:
    publish(session)
    make_run(session, "job1", "manual__failed", "failed")
    make_run(session, "job1", "manual__ok", "success")
    result = load(session, airflow_home).forgive_job(USER, "job1")
    session.commit()
    assert result["cleared_task_instances"] == [{"run_id": "manual__failed", "map_index": 0}]
    assert ti_state(session, "job1", "manual__failed") is None
    assert ti_state(session, "job1", "manual__ok") == "success"


def test_forgive_rejects_unknown_job(session: Session, airflow_home: Path) -> None:
    publish(session)
    with pytest.raises(StateError, match="unknown job 'nojob'"):
        load(session, airflow_home).forgive_job(USER, "nojob")


def test_kill_marks_running_task_failed(session: Session, airflow_home: Path) -> None:
    publish(session)
    ti_id = make_run(session, "job1", "manual__1", "running")
    grant(session, "job1", "db11", "host1", ti_id=ti_id)
    result = load(session, airflow_home).kill_task(USER, job="job1", node="db11")
    session.commit()
    audits = audit_rows(session)
    assert result["previous_state"] == "running"
    assert ti_state(session, "job1", "manual__1") == "failed"
    assert [(a.user, a.action) for a in audits] == [(USER, "kill_task")]


def test_kill_by_id_rejects_finished_task(session: Session, airflow_home: Path) -> None:
    publish(session)
    ti_id = make_run(session, "job1", "manual__1", "success")
    with pytest.raises(StateError, match="already finished") as raised:
        load(session, airflow_home).kill_task(USER, ti_id=ti_id)
    assert raised.value.kind == "conflict"


def test_kill_without_running_task_is_not_found(session: Session, airflow_home: Path) -> None:
    publish(session)
    with pytest.raises(StateError, match="no running task of job 'job1' on node 'db11'"):
        load(session, airflow_home).kill_task(USER, job="job1", node="db11")


# -- Bistro's monitor ----------------------------------------------------------------------


def test_monitor_answers_each_query(session: Session, airflow_home: Path) -> None:
    publish(session)
    grant(session, "job1", "db11", "host1")
    body = {
        "prefs": {"ignored": True},
        "a": {"handler": "running_tasks"},
        "b": {"handler": "nope"},
        "c": {"handler": "jobs", "jobs": ["job1", "nojob"]},
        "d": {"handler": "sorted_node_names"},
    }
    answer = handle_monitor(load(session, airflow_home), body, user=USER, may_edit=lambda: True)
    assert sorted(answer) == ["a", "b", "c", "d"]
    assert answer["a"] == {
        "data": {"job1": {"db11": {"start_time": int(NOW - 30), "worker_shard": "worker1"}}}
    }
    assert answer["b"] == {"error": "Unknown handler: nope"}
    assert list(answer["c"]["data"]) == ["job1"]
    assert answer["d"]["data"]["host"] == ["host1", "host2", "host3"]


def test_monitor_nodes_shape(session: Session, airflow_home: Path) -> None:
    publish(session)
    session.add(CapacityOverride(level="host", node="host1", resource="slots", amount=4))
    body = {"q": {"handler": "nodes", "nodes": ["host1", "host3"]}}
    answer = handle_monitor(load(session, airflow_home), body, user=USER, may_edit=lambda: True)
    assert answer["q"]["data"] == {
        "results": {
            "host": {
                "host1": {"resources": {"slots": {"default": 1, "limit": 2, "override": 4}}},
                "host3": {"resources": {"slots": {"default": 1, "limit": 2}}, "disabled": True},
            }
        }
    }


def test_monitor_kill_needs_permission(session: Session, airflow_home: Path) -> None:
    publish(session)
    grant(session, "job1", "db11", "host1")
    body = {"k": {"handler": "kill_task", "job_id": "job1", "node_id": "db11"}}
    answer = handle_monitor(load(session, airflow_home), body, user=USER, may_edit=lambda: False)
    assert answer["k"]["error"].startswith("Forbidden")


@pytest.mark.parametrize(
    ("query", "error"),
    [
        pytest.param(
            {"handler": "kill_task", "job_id": "nojob", "node_id": "db11"},
            "Unknown job nojob",
            id="job",
        ),
        pytest.param(
            {"handler": "kill_task", "job_id": "job1", "node_id": "db12"},
            "Unknown running task job1, db12",
            id="task",
        ),
        pytest.param(
            {"handler": "forgive_jobs", "jobs": ["nojob"]}, "unknown job 'nojob'", id="forgive"
        ),
        pytest.param(
            {"handler": "nodes", "fields": ["color"]}, "Unknown field name: color", id="field"
        ),
    ],
)
def test_monitor_reports_errors_per_query(
    session: Session, airflow_home: Path, query: dict[str, Any], error: str
) -> None:
    publish(session)
    answer = handle_monitor(
        load(session, airflow_home), {"q": query}, user=USER, may_edit=lambda: True
    )
    assert error in answer["q"]["error"]


def test_monitor_forgive_answers_forgiven(session: Session, airflow_home: Path) -> None:
    publish(session)
    status(session, "job1", "db11", "failed")
    body = {"f": {"handler": "forgive_jobs", "jobs": ["job1"]}}
    answer = handle_monitor(load(session, airflow_home), body, user=USER, may_edit=lambda: True)
    assert answer == {"f": {"data": "forgiven"}}


def test_monitor_rejects_non_object_body(session: Session, airflow_home: Path) -> None:
    publish(session)
    answer = handle_monitor(load(session, airflow_home), ["jobs"], user=USER, may_edit=lambda: True)
    assert isinstance(answer, str)
