"""Two schedulers share one PostgreSQL metadata database and never over-allocate.

Ten jobs each run one task on each of twenty databases whose limit is 1, so 200 tasks
contend for 20 slots while both schedulers admit. The tasks record their own start and end
times; no two intervals on one database may overlap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from demo.stack import AirflowStack
from demo.timeline import max_concurrency

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

REPO_ROOT = Path(__file__).resolve().parents[2]
JOBS = [f"j{index}" for index in range(10)]
DATABASES = [f"d{index:02d}" for index in range(20)]

TASK_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    start = time.time()
    out, hold = sys.argv[1], float(sys.argv[2])
    node, pipe, argument = sys.argv[3], sys.argv[4], json.loads(sys.argv[5])
    time.sleep(hold)
    end = time.time()
    name = f"{argument['id']}-{node}.json"
    with open(os.path.join(out, name), "w") as handle:
        json.dump({"job": argument["id"], "node": node, "start": start, "end": end,
                   "pid": os.getpid()}, handle)
    with open(pipe, "w") as status:
        status.write("done\\n")
    """
)


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql],
        check=True,
        capture_output=True,
    )


@pytest.fixture
def postgres_database() -> str:
    if shutil.which("psql") is None and not os.environ.get("CI"):
        pytest.skip("psql is not installed and CI is not set; PostgreSQL tests need a server")
    name = f"bistro_ha_{uuid.uuid4().hex[:8]}"
    _psql(f"CREATE DATABASE {name}")
    yield f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _write_config(path: Path, out: Path, script: Path) -> None:
    config = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": "roundrobin",
            "nodes": {
                "levels": ["db"],
                "node_order": "random",
                "node_sources": [{"source": "manual", "prefs": {name: [] for name in DATABASES}}],
            },
            "resources": {"db": {"db_lock": {"limit": 1, "default": 1}}},
        }
    }
    for job in JOBS:
        config[f"bistro_job->{job}"] = {
            "owner": "ha-test",
            "command": [sys.executable, str(script), str(out), "0.3"],
        }
    path.write_text(json.dumps(config, indent=2))


def test_two_schedulers_never_run_two_tasks_on_one_database(tmp_path, postgres_database):
    out = tmp_path / "timeline"
    out.mkdir()
    script = tmp_path / "task.py"
    script.write_text(TASK_SCRIPT)
    config_path = tmp_path / "bistro.json"
    _write_config(config_path, out, script)
    env = {
        "AIRFLOW__CORE__EXECUTOR": "bistro_provider.executors.bistro_executor.BistroExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres_database,
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config_path),
        "AIRFLOW__BISTRO__WORKER_PROCESSES": "4",
        # Without a cap, one scheduler can queue all 200 task instances in its first loops
        # and leave the other nothing to admit. With 40 each, both must admit.
        "AIRFLOW__BISTRO__MAX_WAITING_TASKS": "40",
        "AIRFLOW__CORE__PARALLELISM": "64",
        "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "64",
        "PYTHONPATH": str(REPO_ROOT),
    }
    stack = AirflowStack(tmp_path / "airflow", REPO_ROOT / "dags", env, schedulers=2)
    with stack:
        runs = [(f"bistro_{job}", stack.trigger(f"bistro_{job}")) for job in JOBS]
        states = [stack.wait_for_run(dag_id, run_id, timeout=900) for dag_id, run_id in runs]
        admitted = {
            name: (stack.log_dir / f"{name}.log").read_text().count("Admitted ")
            for name in ("scheduler", "scheduler-2")
        }
    intervals = [json.loads(path.read_text()) for path in out.glob("*.json")]
    per_db = max_concurrency(intervals, key=lambda item: item["node"])

    assert states == ["success"] * len(JOBS)
    assert len(intervals) == len(JOBS) * len(DATABASES)
    assert max(per_db.values()) == 1
    assert admitted["scheduler"] > 0, admitted
    assert admitted["scheduler-2"] > 0, admitted
