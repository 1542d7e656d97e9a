"""The Bistro REST API served by a real `airflow api-server`, behind Airflow's own auth.

One api-server (no scheduler) runs on 127.0.0.1 with two SimpleAuthManager users, admin
and viewer. The test seeds the provider's tables directly in the stack's SQLite database,
as the executor would, and then checks authentication, permissions, the actions, Bistro's
monitor protocol, and that ``airflow bistro ... --json`` prints the API's JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from bistro_provider.cli.state_commands import dag_file_text
from bistro_provider.core.config import config_to_json, parse_config
from bistro_provider.core.resources import holdings_from_json
from bistro_provider.nodes import fetch_forest
from bistro_provider.store import repository
from demo.stack import AirflowStack

pytestmark = pytest.mark.e2e

AIRFLOW = Path(sys.executable).with_name("airflow")
API = "/bistro/api/v1"
FAR_FUTURE_BACKOFF = 10**8

CONFIG: dict[str, Any] = {
    "bistro_settings": {
        "enabled": True,
        "nodes": {
            "levels": ["host", "db"],
            "node_order": "lexicographic",
            "node_sources": [
                {"source": "manual", "prefs": {"host1": ["db11", "db12"], "host2": ["db21"]}}
            ],
        },
        "resources": {
            "host": {"slots": {"limit": 2, "default": 1}},
            "db": {"conns": {"limit": 1, "default": 1}},
        },
    },
    "bistro_job->job1": {"owner": "test"},
    "bistro_job->job2": {"owner": "test", "depends_on": ["job1"]},
}

READ_PATHS = [
    f"{API}/forest",
    f"{API}/forest?level=host&state=busy",
    f"{API}/jobs",
    f"{API}/jobs/job1",
    f"{API}/running",
    f"{API}/waiting",
    f"{API}/histogram?jobs=job1&num_samples=2",
    f"{API}/errors",
    f"{API}/audit",
    f"{API}/explain?job=job1&node=db11",
    "/bistro/openapi.json",
    "/bistro/docs",
    "/bistro/ui/",
]


# -- the stack -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    root = tmp_path_factory.mktemp("bistro_api")
    config_path = root / "bistro.json"
    config_path.write_text(json.dumps(CONFIG))
    dags = root / "dags"
    dags.mkdir()
    (dags / "bistro_jobs.py").write_text(dag_file_text(str(config_path)))
    env = {
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config_path),
    }
    with AirflowStack(root / "home", dags, env, schedulers=0) as running:
        seed(running)
        yield running


def database(stack: AirflowStack) -> Session:
    return Session(create_engine(f"sqlite:///{stack.home}/airflow.db"))


def seed(stack: AirflowStack) -> None:
    """Write what a running executor would have written: documents, a grant, statuses."""
    config = parse_config(CONFIG)
    forest = fetch_forest(config.settings, now=0)
    waiting = [
        {
            "ti_id": str(uuid.uuid4()),
            "dag_id": "bistro_job1",
            "run_id": "manual__seed",
            "task_id": "run",
            "map_index": 2,
            "try_number": 1,
            "job": "job1",
            "node": "db21",
            "reason": "waiting for db 'db21': conns needs 1, 1/1 in use",
            "since": 1_700_000_000.0,
        }
    ]
    with database(stack) as session:
        repository.publish(session, "config", config_to_json(config))
        forest_doc = {"levels": list(forest.levels), "fetched_at": 1.0, "nodes": forest.to_json()}
        repository.publish(session, "forest", forest_doc)
        repository.publish(
            session, "errors", {"config_file": "x", "errors": {}, "forest_time": 1.0}
        )
        repository.publish(session, "waiting", waiting)
        add_grant(session, "job2", "db12", "host1", str(uuid.uuid4()))
        repository.put_status(session, "job1", "db12", repository.StoredStatus("done", 1.0))
        failed = repository.StoredStatus("error_backoff", 1.0, FAR_FUTURE_BACKOFF)
        repository.put_status(session, "job2", "db21", failed)
        session.commit()


def add_grant(session: Session, job: str, node: str, host: str, ti_id: str) -> None:
    holdings = holdings_from_json(
        [
            {"level": "host", "node": host, "resources": {"slots": 1}},
            {"level": "db", "node": node, "resources": {"conns": 1}},
        ]
    )
    record = repository.GrantRecord(
        ti_id=ti_id,
        dag_id=f"bistro_{job}",
        task_id="run",
        run_id="manual__seed",
        map_index=0,
        try_number=1,
        job=job,
        node=node,
        path=("instance", host, node),
        holdings=holdings,
        worker="worker1",
        granted_at=1_700_000_000.0,
        owner="scheduler:1",
    )
    repository.add_grant(session, record)


# -- HTTP ----------------------------------------------------------------------------------


def call(
    stack: AirflowStack,
    method: str,
    path: str,
    *,
    token: str | None = None,
    cookie: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    """Send a request and return the status and the body, decoded when it is JSON."""
    headers = {"Accept": "application/json"}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if cookie is not None:
        headers["Cookie"] = f"_token={cookie}"
    request = urllib.request.Request(
        stack.base_url + path, data=data, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, content = response.status, response.read()
            kind = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, content, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
    if "json" in kind and content:
        return status, json.loads(content)
    return status, content.decode(errors="replace")


@pytest.fixture(scope="module")
def tokens(stack: AirflowStack) -> dict[str, str]:
    passwords_file = stack.home / "simple_auth_manager_passwords.json.generated"
    passwords = json.loads(passwords_file.read_text())
    result = {}
    for user in ("admin", "viewer"):
        body = {"username": user, "password": passwords[user]}
        status, answer = call(stack, "POST", "/auth/token", body=body)
        assert status in (200, 201), answer
        result[user] = answer["access_token"]
    return result


def app_routes(stack: AirflowStack) -> list[tuple[str, str]]:
    """List (method, path) of every route of the plugin's app, read in a fresh process."""
    script = (
        "import json\n"
        "from bistro_provider.plugins.api import app\n"
        "routes = [[m, r.path] for r in app.routes for m in sorted(getattr(r, 'methods', []))]\n"
        "print('ROUTES=' + json.dumps(routes))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=stack.environment(),
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(line for line in result.stdout.splitlines() if line.startswith("ROUTES="))
    return [(method, path) for method, path in json.loads(line.removeprefix("ROUTES="))]


def cli_json(stack: AirflowStack, *argv: str) -> Any:
    result = subprocess.run(
        [str(AIRFLOW), "bistro", *argv, "--json"],
        env=stack.environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


# -- authentication ------------------------------------------------------------------------


def test_every_route_needs_a_token(stack: AirflowStack) -> None:
    routes = app_routes(stack)
    statuses = {}
    for method, path in routes:
        url = "/bistro" + path.replace("{job}", "job1")
        statuses[f"{method} {url}"] = call(stack, method, url)[0]
    assert {route: status for route, status in statuses.items() if status != 401} == {}
    assert "POST /bistro/api/monitor" in statuses
    assert "GET /bistro/docs" in statuses
    assert "GET /bistro/openapi.json" in statuses
    assert len(statuses) >= 17


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", f"{API}/forest", id="forest"),
        pytest.param("POST", "/bistro/api/monitor", id="monitor"),
        pytest.param("PUT", f"{API}/capacity", id="capacity"),
    ],
)
def test_bad_token_is_rejected(stack: AirflowStack, method: str, path: str) -> None:
    status, _ = call(stack, method, path, token="not-a-jwt")
    assert status in (401, 403)


def test_cookie_works_like_bearer(stack: AirflowStack, tokens: dict[str, str]) -> None:
    by_header = call(stack, "GET", f"{API}/running", token=tokens["viewer"])
    by_cookie = call(stack, "GET", f"{API}/running", cookie=tokens["viewer"])
    assert by_cookie[0] == 200
    assert by_cookie == by_header


@pytest.mark.parametrize("path", READ_PATHS)
def test_viewer_can_read(stack: AirflowStack, tokens: dict[str, str], path: str) -> None:
    status, body = call(stack, "GET", path, token=tokens["viewer"])
    assert status == 200, body


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", f"{API}/tasks/kill", {"job": "job2", "node": "db12"}, id="kill"),
        pytest.param("POST", f"{API}/jobs/job1/forgive", None, id="forgive"),
        pytest.param(
            "PUT",
            f"{API}/capacity",
            {"level": "host", "node": "host1", "resource": "slots", "amount": 1},
            id="set-capacity",
        ),
        pytest.param("DELETE", f"{API}/capacity?level=host&node=host1", None, id="clear-capacity"),
    ],
)
def test_viewer_cannot_act(
    stack: AirflowStack, tokens: dict[str, str], method: str, path: str, body: Any
) -> None:
    status, answer = call(stack, method, path, token=tokens["viewer"], body=body)
    assert status == 403, answer


def test_docs_document_the_schema(stack: AirflowStack, tokens: dict[str, str]) -> None:
    status, schema = call(stack, "GET", "/bistro/openapi.json", token=tokens["viewer"])
    assert status == 200
    assert f"{API.removeprefix('/bistro')}/forest" in schema["paths"]
    assert "ForestResponse" in schema["components"]["schemas"]
    assert schema["servers"] == [{"url": "/bistro"}]


# -- actions -------------------------------------------------------------------------------


def test_admin_sets_and_clears_capacity(stack: AirflowStack, tokens: dict[str, str]) -> None:
    admin = tokens["admin"]
    change = {"level": "host", "node": "host2", "resource": "slots", "amount": 5}
    set_status, set_answer = call(stack, "PUT", f"{API}/capacity", token=admin, body=change)
    _, forest = call(stack, "GET", f"{API}/forest?level=host", token=admin)
    query = "level=host&node=host2&resource=slots"
    clear_status, clear_answer = call(stack, "DELETE", f"{API}/capacity?{query}", token=admin)
    _, audit = call(stack, "GET", f"{API}/audit?limit=2", token=admin)
    host2 = next(node for node in forest["nodes"] if node["name"] == "host2")
    assert set_status == 200, set_answer
    assert set_answer["previous_capacity"] == 2
    assert host2["capacity"] == {"slots": 5}
    assert clear_status == 200, clear_answer
    assert clear_answer["cleared"] == {"slots": 5}
    assert [(e["user"], e["action"], e["target"]) for e in audit["entries"]] == [
        ("admin", "clear_capacity", "host/host2/slots"),
        ("admin", "set_capacity", "host/host2/slots"),
    ]


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        pytest.param(
            {"level": "rack", "node": "r1", "resource": "slots", "amount": 1},
            400,
            "unknown level 'rack'",
            id="unknown-level",
        ),
        pytest.param(
            {"level": "host", "node": "host1", "resource": "slots", "amount": -1},
            400,
            "amount must be an integer >= 0",
            id="negative",
        ),
        pytest.param(
            {"level": "host", "node": "host9", "resource": "slots", "amount": 1},
            404,
            "node 'host9' is not on level host",
            id="unknown-node",
        ),
    ],
)
def test_capacity_errors_name_the_value(
    stack: AirflowStack, tokens: dict[str, str], change: dict[str, Any], status: int, message: str
) -> None:
    answer = call(stack, "PUT", f"{API}/capacity", token=tokens["admin"], body=change)
    assert answer[0] == status
    assert message in answer[1]["detail"]


def test_admin_kills_then_forgives(stack: AirflowStack, tokens: dict[str, str]) -> None:
    admin = tokens["admin"]
    runs = "/api/v2/dags/bistro_job1/dagRuns"
    created, run = call(stack, "POST", runs, token=admin, body={"logical_date": None})
    assert created == 200, run
    run_id = run["dag_run_id"]
    ti_id = start_mapped_task(stack, run_id)
    kill = call(stack, "POST", f"{API}/tasks/kill", token=admin, body={"ti_id": ti_id})
    ti_path = f"/api/v2/dags/bistro_job1/dagRuns/{run_id}/taskInstances/run/0"
    killed_state = call(stack, "GET", ti_path, token=admin)[1]["state"]
    forgive = call(stack, "POST", f"{API}/jobs/job1/forgive", token=admin)
    forgiven_state = call(stack, "GET", ti_path, token=admin)[1]["state"]
    assert kill[0] == 200, kill[1]
    assert kill[1]["previous_state"] == "running"
    assert killed_state == "failed"
    assert forgive[0] == 200, forgive[1]
    assert {"run_id": run_id, "map_index": 0} in forgive[1]["cleared_task_instances"]
    assert forgiven_state is None


def start_mapped_task(stack: AirflowStack, run_id: str) -> str:
    """Expand the run's mapped task to map index 0 and mark it running, as a worker would."""
    with database(stack) as session:
        session.execute(
            text(
                "UPDATE task_instance SET map_index = 0, state = 'running' "
                "WHERE dag_id = 'bistro_job1' AND run_id = :run AND task_id = 'run'"
            ),
            {"run": run_id},
        )
        ti_id = session.execute(
            text(
                "SELECT id FROM task_instance WHERE dag_id = 'bistro_job1' AND run_id = :run "
                "AND task_id = 'run'"
            ),
            {"run": run_id},
        ).scalar_one()
        session.commit()
    return str(uuid.UUID(str(ti_id)))


# -- Bistro's monitor ----------------------------------------------------------------------


def test_monitor_answers_in_bistro_shape(stack: AirflowStack, tokens: dict[str, str]) -> None:
    body = {
        "a": {"handler": "jobs"},
        "b": {"handler": "histogram", "jobs": ["job1"], "num_samples": 1},
        "c": {"handler": "running_tasks"},
        "d": {"handler": "nope"},
    }
    status, answer = call(stack, "POST", "/bistro/api/monitor", token=tokens["viewer"], body=body)
    assert status == 200
    assert sorted(answer["a"]["data"]) == ["job1", "job2"]
    assert answer["b"]["data"]["histograms"]["job1"]["db"]["E"] == 1
    assert answer["b"]["data"]["samples"]["job1"]["db"]["E"] == ["db12"]
    assert answer["c"]["data"]["job2"]["db12"]["worker_shard"] == "worker1"
    assert answer["d"] == {"error": "Unknown handler: nope"}


def test_monitor_kill_needs_edit_permission(stack: AirflowStack, tokens: dict[str, str]) -> None:
    body = {"k": {"handler": "kill_task", "job_id": "job2", "node_id": "db12"}}
    status, answer = call(stack, "POST", "/bistro/api/monitor", token=tokens["viewer"], body=body)
    assert status == 200
    assert answer["k"]["error"].startswith("Forbidden")


def test_monitor_answers_bad_json_with_a_string(
    stack: AirflowStack, tokens: dict[str, str]
) -> None:
    status, answer = call(
        stack, "POST", "/bistro/api/monitor", token=tokens["viewer"], raw=b"{not json"
    )
    assert status == 200
    assert "not valid JSON" in answer


# -- CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["forest", "jobs", "waiting"])
def test_cli_json_equals_api_json(stack: AirflowStack, tokens: dict[str, str], view: str) -> None:
    status, from_api = call(stack, "GET", f"{API}/{view}", token=tokens["viewer"])
    from_cli = cli_json(stack, view)
    assert status == 200
    assert from_cli == from_api
