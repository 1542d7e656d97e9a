"""Operator jobs end to end: the example DAGs in dags/ under a real stack with BistroExecutor.

The SQL job runs ``SQLExecuteQueryOperator`` on every database of the PostgreSQL server on
127.0.0.1:5432 and is checked with psql. The RPC job posts one request per node to an HTTP
service that this test runs on 127.0.0.1 and that counts concurrent requests per host, so
the host limit is checked from the service's own view. The RPC stack then also serves the
job save and delete API and CLI.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from demo.stack import AirflowStack, ApiError

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
EXECUTOR = "bistro_provider.executors.bistro_executor.BistroExecutor"
HOST_LIMIT = 2
RUN_TIMEOUT = 600
PSQL = ["psql", "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-X", "-v", "ON_ERROR_STOP=1"]


def write_config(path: Path, levels: list[str], tree: dict[str, list[str]]) -> Path:
    config = {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": levels,
                "node_order": "lexicographic",
                "node_sources": [{"source": "manual", "prefs": tree}],
            },
            "resources": {
                levels[0]: {"host_slots": {"limit": HOST_LIMIT, "default": 1}},
                levels[1]: {"node_lock": {"limit": 1, "default": 1}},
            },
        }
    }
    path.write_text(json.dumps(config, indent=2))
    return path


def stack_env(config_file: Path, **extra: str) -> dict[str, str]:
    return {
        "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config_file),
        "AIRFLOW__BISTRO__STATE_SYNC_INTERVAL": "1",
        "AIRFLOW__BISTRO__WORKER_PROCESSES": "8",
        "PYTHONPATH": str(REPO_ROOT),
        **extra,
    }


def run_task_instances(stack: AirflowStack, dag_id: str) -> tuple[str, list[dict[str, Any]]]:
    run_id = stack.trigger(dag_id)
    state = stack.wait_for_run(dag_id, run_id, timeout=RUN_TIMEOUT)
    instances = [ti for ti in stack.task_instances(dag_id, run_id) if ti["task_id"] == "run"]
    return state, instances


# -- SQL on every database -----------------------------------------------------------------


def psql(sql: str, database: str = "postgres") -> str:
    result = subprocess.run(
        [*PSQL, "-d", database, "-A", "-t", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"psql failed on {database}: {result.stderr.strip()}")
    return result.stdout.strip()


def require_postgres() -> None:
    problem = None
    if shutil.which("psql") is None:
        problem = "psql is not installed"
    else:
        try:
            psql("SELECT 1")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            problem = f"PostgreSQL on 127.0.0.1:5432 does not answer: {exc}"
    if problem is None:
        return
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
        pytest.fail(f"{problem}. CI is set, so the test must run: start PostgreSQL with trust auth")
    pytest.skip(problem)


@pytest.fixture
def databases() -> Iterator[list[str]]:
    require_postgres()
    prefix = f"bistro_sqlex_{secrets.token_hex(4)}"
    names = [f"{prefix}_{k}" for k in range(6)]
    try:
        for name in names:
            psql(f'CREATE DATABASE "{name}"')
        yield names
    finally:
        for name in names:
            psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.postgres
def test_sql_job_runs_on_every_database(tmp_path: Path, databases: list[str]) -> None:
    tree = {"pg_a": databases[:3], "pg_b": databases[3:]}
    config = write_config(tmp_path / "bistro.json", ["host", "db"], tree)
    server = "postgresql://postgres@127.0.0.1:5432/postgres"
    env = stack_env(
        config,
        BISTRO_EXAMPLE_SQL_CONFIG=str(config),
        AIRFLOW_CONN_PG_A=server,
        AIRFLOW_CONN_PG_B=server,
    )
    with AirflowStack(tmp_path / "airflow", REPO_ROOT / "dags", env) as stack:
        state, instances = run_task_instances(stack, "bistro_sql_per_database")
    assert state == "success"
    assert sorted(ti["rendered_map_index"] for ti in instances) == sorted(databases)
    markers = {
        db: psql("SELECT job || '|' || host || '|' || db FROM bistro_example_marker", db)
        for db in databases
    }
    expected = {db: f"sql_per_database|{host}|{db}" for host, dbs in tree.items() for db in dbs}
    assert markers == expected


# -- RPC per node --------------------------------------------------------------------------


class RecordingService(ThreadingHTTPServer):
    """Counts requests per node and concurrent requests per host; each request takes ~1 s."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.lock = threading.Lock()
        self.active: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RecordingHandler(BaseHTTPRequestHandler):
    server: RecordingService

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        host, node = body["host"], body["node"]
        with self.server.lock:
            self.server.requests[node] += 1
            self.server.active[host] += 1
            self.server.peak[host] = max(self.server.peak[host], self.server.active[host])
        try:
            time.sleep(1.0)
        finally:
            with self.server.lock:
                self.server.active[host] -= 1
        answer = json.dumps({"status": "done", "data": {"node": node}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


RPC_TREE = {f"h{h}": [f"h{h}-n{n}" for n in range(1, 5)] for h in range(1, 4)}


@pytest.fixture(scope="module")
def rpc_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp_path = tmp_path_factory.mktemp("rpc")
    config = write_config(tmp_path / "bistro.json", ["host", "node"], RPC_TREE)
    service = RecordingService()
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    env = stack_env(
        config, BISTRO_EXAMPLE_RPC_CONFIG=str(config), BISTRO_EXAMPLE_RPC_URL=service.url
    )
    try:
        with AirflowStack(tmp_path / "airflow", REPO_ROOT / "dags", env) as stack:
            state, instances = run_task_instances(stack, "bistro_rpc_per_node")
            yield {
                "state": state,
                "instances": instances,
                "service": service,
                "stack": stack,
                "config": config,
                "tmp_path": tmp_path,
            }
    finally:
        service.shutdown()
        service.server_close()


def test_rpc_run_succeeds(rpc_run: dict[str, Any]) -> None:
    assert rpc_run["state"] == "success"


def test_rpc_every_node_gets_one_request(rpc_run: dict[str, Any]) -> None:
    nodes = [node for children in RPC_TREE.values() for node in children]
    assert dict(rpc_run["service"].requests) == {node: 1 for node in nodes}


def test_rpc_host_limit_never_exceeded(rpc_run: dict[str, Any]) -> None:
    peaks = dict(rpc_run["service"].peak)
    assert sorted(peaks) == sorted(RPC_TREE)
    assert max(peaks.values()) <= HOST_LIMIT


def test_rpc_host_limit_is_reached(rpc_run: dict[str, Any]) -> None:
    # Eight worker processes and three hosts: admission must fill a host to its limit.
    assert max(rpc_run["service"].peak.values()) == HOST_LIMIT


def test_rpc_tasks_are_labelled_by_node(rpc_run: dict[str, Any]) -> None:
    labels = sorted(ti["rendered_map_index"] for ti in rpc_run["instances"])
    assert labels == sorted(node for children in RPC_TREE.values() for node in children)


# -- saving jobs through the API and the CLI (on the RPC stack) ----------------------------


def config_jobs(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    return {key.split("->", 1)[1]: value for key, value in data.items() if "->" in key}


def test_api_saves_job_with_version(rpc_run: dict[str, Any]) -> None:
    stack: AirflowStack = rpc_run["stack"]
    body = {"job": {"owner": "api-user", "priority": 2.0}, "expected_version": 0}
    result = stack.api("PUT", "/bistro/api/v1/jobs/api_saved", body)
    assert result["version_id"] == 1
    assert config_jobs(rpc_run["config"])["api_saved"]["owner"] == "api-user"


def test_api_stale_save_is_409_naming_versions(rpc_run: dict[str, Any]) -> None:
    stack: AirflowStack = rpc_run["stack"]
    body = {"job": {"owner": "first"}, "expected_version": 0}
    stack.api("PUT", "/bistro/api/v1/jobs/api_conflict", body)
    with pytest.raises(ApiError) as raised:
        stack.api("PUT", "/bistro/api/v1/jobs/api_conflict", {**body, "job": {"owner": "second"}})
    assert raised.value.status == 409
    assert "version 1" in raised.value.body
    assert "expected version 0" in raised.value.body
    assert config_jobs(rpc_run["config"])["api_conflict"]["owner"] == "first"


def test_api_deletes_job_and_audits(rpc_run: dict[str, Any]) -> None:
    stack: AirflowStack = rpc_run["stack"]
    stack.api(
        "PUT", "/bistro/api/v1/jobs/api_deleted", {"job": {"owner": "x"}, "expected_version": 0}
    )
    result = stack.api("DELETE", "/bistro/api/v1/jobs/api_deleted?expected_version=1")
    assert result["action"] == "deleted"
    assert "api_deleted" not in config_jobs(rpc_run["config"])
    audit = stack.api("GET", "/bistro/api/v1/audit?limit=50")["entries"]
    actions = [(entry["action"], entry["target"]) for entry in audit]
    assert ("delete_job", "api_deleted") in actions


def test_cli_saves_job_then_rejects_stale_version(rpc_run: dict[str, Any]) -> None:
    stack: AirflowStack = rpc_run["stack"]
    job_file = rpc_run["tmp_path"] / "job.json"
    job_file.write_text(json.dumps({"owner": "cli-user"}))
    argv = [
        str(Path(sys.executable).with_name("airflow")),
        *("bistro", "job", "save", "cli_saved", "--file", str(job_file)),
        *("--expected-version", "0", "--json"),
    ]
    env = stack.environment()
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout[first.stdout.index("{") :])["version_id"] == 1
    assert second.returncode == 1
    assert "version conflict" in second.stderr
