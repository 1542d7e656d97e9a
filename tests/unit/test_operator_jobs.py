"""Operator jobs: templating per node, status mapping, the DAG they build, and RPC tasks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import (
    AirflowFailException,
    AirflowRescheduleException,
    TaskDeferred,
)

from bistro_provider.dag_factory import JobDefinedTwiceError, bistro_job_dag
from bistro_provider.exceptions import BistroFailed, BistroIncomplete
from bistro_provider.operators import BistroFailed as ReexportedFailed
from bistro_provider.operators.http import (
    BistroHttpError,
    BistroHttpOperator,
    check_target,
    status_from_body,
)
from bistro_provider.operators.job import BistroTaskOperator
from bistro_provider.operators.wrapped import BistroOperatorTask, BistroTemplateValues
from bistro_provider.options import BistroOptions

LEVELS = ["instance", "host", "db", "worker"]
SEEN: list[dict[str, Any]] = []


class FakeTI:
    """The two XCom calls a Bistro task makes, backed by one admission record."""

    def __init__(self, admission: dict[str, Any] | None) -> None:
        self.map_index = 0
        self.admission = admission
        self.pushed: dict[str, Any] = {}

    def xcom_pull(self, task_ids: str, key: str, map_indexes: int) -> Any:
        if key.startswith("bistro_admission."):
            return self.admission
        return None

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


class RecordingOperator(BaseOperator):
    """Records what it was built with; raises `outcome` when one is given."""

    template_fields = ("sql",)

    def __init__(self, *, sql: str, conn_id: str, outcome: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sql = sql
        self.conn_id = conn_id
        self.outcome = outcome

    def execute(self, context: Any) -> Any:
        SEEN.append(
            {
                "sql": self.sql,
                "conn_id": self.conn_id,
                "task_id": self.task_id,
                "bistro": context["bistro"],
            }
        )
        if self.outcome == "defer":
            raise TaskDeferred(trigger=None, method_name="resume")  # type: ignore[arg-type]
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return {"rows": 1}


def make_admission(prev_status: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    admission = {
        "job": "nightly",
        "node": "db1",
        "path": ["instance", "host1", "db1"],
        "levels": LEVELS,
        "config": {"table": "users"},
        "command": [],
        "backoff": {"delays": [10, 20], "repeat": False},
        "resources_by_node": {"host1": {"slots": 1}},
        "prev_status": prev_status,
        "worker_host": "worker-1",
    }
    admission.update(changes)
    return admission


def operator_task(outcome: Any = None, **kwargs: Any) -> BistroOperatorTask:
    operator_kwargs = {
        "sql": "SELECT '{{ bistro.node }}' FROM {{ bistro.config.table }}",
        "conn_id": "pg_{{ bistro.ancestor('host') }}",
        "outcome": outcome,
    }
    operator_kwargs.update(kwargs)
    return BistroOperatorTask(
        task_id="run",
        job="nightly",
        node="db1",
        config_file="unused.json",
        operator=RecordingOperator,
        operator_kwargs=operator_kwargs,
    )


@pytest.fixture(autouse=True)
def clear_seen() -> Iterator[None]:
    SEEN.clear()
    yield
    SEEN.clear()


# -- template values -----------------------------------------------------------------------


def values(path: list[str]) -> BistroTemplateValues:
    return BistroTemplateValues(job="nightly", node=path[-1], path=path, levels=LEVELS)


def test_path_by_level_pairs_levels_with_path() -> None:
    assert values(["instance", "host1", "db1"]).path_by_level == {
        "instance": "instance",
        "host": "host1",
        "db": "db1",
    }


def test_ancestor_returns_node_of_level() -> None:
    assert values(["instance", "host1", "db1"]).ancestor("host") == "host1"


def test_ancestor_of_own_level_is_node() -> None:
    assert values(["instance", "host1", "db1"]).ancestor("db") == "db1"


def test_ancestor_of_level_below_node_names_path_levels() -> None:
    with pytest.raises(ValueError, match="levels on the path: instance, host$"):
        values(["instance", "host1"]).ancestor("db")


def test_level_is_level_of_node() -> None:
    assert values(["instance", "host1"]).level == "host"


# -- building the operator -----------------------------------------------------------------


def test_operator_gets_rendered_kwargs_and_bistro_context() -> None:
    ti = FakeTI(make_admission())
    result = operator_task().execute({"ti": ti})
    assert result == {"rows": 1}
    assert SEEN[0]["sql"] == "SELECT 'db1' FROM users"
    assert SEEN[0]["conn_id"] == "pg_host1"
    assert SEEN[0]["task_id"] == "run__operator"
    assert SEEN[0]["bistro"].resources_by_node == {"host1": {"slots": 1}}
    assert SEEN[0]["bistro"].worker_host == "worker-1"


def test_template_fields_are_left_to_the_operator() -> None:
    task = operator_task()
    context = {"ti": FakeTI(None), "bistro": values(["instance", "host1", "db1"])}
    built = task.build_operator(context)
    # The operator rendered its own template field; nothing rendered it twice.
    assert built.sql == "SELECT 'db1' FROM "


def test_path_by_level_works_in_templates() -> None:
    task = operator_task(conn_id="{{ bistro.path_by_level.host }}-{{ bistro.level }}")
    task.execute({"ti": FakeTI(make_admission())})
    assert SEEN[0]["conn_id"] == "host1-db"


# -- status mapping ------------------------------------------------------------------------

ERROR_USED_UP = {"result": "error_backoff", "time": 1.0, "backoff_duration": 20}


@pytest.mark.parametrize(
    ("outcome", "prev_status", "raised", "kind", "backoff"),
    [
        pytest.param(None, None, None, "done", 0, id="return-done"),
        pytest.param(
            BistroIncomplete("half"),
            None,
            AirflowRescheduleException,
            "incomplete",
            0,
            id="incomplete",
        ),
        pytest.param(
            BistroIncomplete(backoff=True),
            None,
            AirflowRescheduleException,
            "incomplete_backoff",
            10,
            id="incomplete-backoff",
        ),
        pytest.param(
            BistroFailed("bad data"), None, AirflowFailException, "failed", 0, id="failed"
        ),
        pytest.param(
            RuntimeError("boom"), None, AirflowRescheduleException, "error_backoff", 10, id="error"
        ),
        pytest.param(
            RuntimeError("boom"),
            ERROR_USED_UP,
            AirflowFailException,
            "failed",
            0,
            id="error-used-up",
        ),
        pytest.param("defer", None, AirflowRescheduleException, "error_backoff", 10, id="deferral"),
    ],
)
def test_operator_outcome_maps_to_status(
    outcome: Any, prev_status: Any, raised: type[Exception] | None, kind: str, backoff: int
) -> None:
    ti = FakeTI(make_admission(prev_status=prev_status))
    task = operator_task(outcome)
    if raised is None:
        task.execute({"ti": ti})
    else:
        with pytest.raises(raised):
            task.execute({"ti": ti})
    assert ti.pushed["bistro_status"]["result"] == kind
    assert ti.pushed["bistro_status"]["backoff_duration"] == backoff


def test_failed_status_keeps_message() -> None:
    ti = FakeTI(make_admission())
    with pytest.raises(AirflowFailException):
        operator_task(BistroFailed("bad data", data={"rows": 3})).execute({"ti": ti})
    assert ti.pushed["bistro_status"]["data"] == {"rows": 3, "message": "bad data"}


def test_error_status_names_exception() -> None:
    ti = FakeTI(make_admission())
    with pytest.raises(AirflowRescheduleException):
        operator_task(RuntimeError("boom")).execute({"ti": ti})
    assert "boom" in ti.pushed["bistro_status"]["data"]["exception"]


def test_template_error_is_error_backoff() -> None:
    ti = FakeTI(make_admission())
    with pytest.raises(AirflowRescheduleException):
        operator_task(conn_id="{{ bistro.ancestor('rack') }}").execute({"ti": ti})
    assert "rack" in ti.pushed["bistro_status"]["data"]["exception"]


def test_exceptions_are_importable_from_operators() -> None:
    assert ReexportedFailed is BistroFailed


@pytest.mark.parametrize(
    ("returned", "raised", "kind"),
    [
        pytest.param(None, None, "done", id="done"),
        pytest.param("incomplete", AirflowRescheduleException, "incomplete", id="incomplete"),
        pytest.param("failed", AirflowFailException, "failed", id="failed"),
        pytest.param("nonsense", AirflowRescheduleException, "error_backoff", id="invalid"),
    ],
)
def test_command_task_status_mapping_is_shared(
    returned: str | None, raised: type[Exception] | None, kind: str
) -> None:
    ti = FakeTI(make_admission())
    task = BistroTaskOperator(
        task_id="run",
        job="nightly",
        node="db1",
        config_file="unused.json",
        python_callable=lambda node, argument: returned,
    )
    if raised is None:
        task.execute({"ti": ti})
    else:
        with pytest.raises(raised):
            task.execute({"ti": ti})
    assert ti.pushed["bistro_status"]["result"] == kind


# -- the DAG -------------------------------------------------------------------------------

CONFIG = {
    "bistro_settings": {
        "enabled": True,
        "nodes": {
            "levels": ["host", "db"],
            "node_sources": [{"source": "manual", "prefs": {"host1": ["db1", "db2"]}}],
        },
        "resources": {"host": {"slots": {"limit": 2, "default": 1}}},
    },
    "bistro_job->nightly": {"owner": "dba"},
}


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    path = tmp_path / "bistro.json"
    path.write_text(json.dumps(CONFIG))
    return str(path)


def operator_dag(config_file: str, job: str = "nightly", **kwargs: Any) -> Any:
    return bistro_job_dag(
        job,
        config_file=config_file,
        options=BistroOptions(),
        operator=RecordingOperator,
        operator_kwargs={"sql": "SELECT 1", "conn_id": "{{ bistro.ancestor('host') }}"},
        **kwargs,
    )


def test_operator_dag_maps_wrapper_over_nodes(config_file: str) -> None:
    task = operator_dag(config_file).task_dict["run"]
    assert task.operator_class is BistroOperatorTask
    assert task.partial_kwargs["operator"] is RecordingOperator
    assert task.partial_kwargs["map_index_template"] == "{{ task.node }}"


def test_operator_dag_keeps_admission_marker_and_pool(config_file: str) -> None:
    task = operator_dag(config_file).task_dict["run"]
    marker = {"bistro": {"job": "nightly", "snapshot_task": "snapshot_nodes"}}
    assert task.partial_kwargs["executor_config"] == marker
    assert task.partial_kwargs["pool"] == "bistro_pool"
    assert task.partial_kwargs["retries"] == 0


def test_operator_dag_has_snapshot_upstream(config_file: str) -> None:
    dag = operator_dag(config_file)
    assert dag.task_dict["run"].upstream_task_ids == {"snapshot_nodes"}


def test_python_defined_job_marker_names_dag_file(config_file: str) -> None:
    task = operator_dag(config_file, job="adhoc", job_config={"owner": "me"}).task_dict["run"]
    marker = task.partial_kwargs["executor_config"]["bistro"]
    assert marker["job_config"] == {"owner": "me"}
    assert marker["defined_in"] == __file__


def test_python_job_with_config_name_is_error(config_file: str) -> None:
    with pytest.raises(JobDefinedTwiceError) as raised:
        operator_dag(config_file, job_config={"owner": "me"})
    assert __file__ in str(raised.value)
    assert config_file in str(raised.value)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"operator_kwargs": {"sql": "x"}}, ValueError, id="kwargs-without-operator"),
        pytest.param(
            {"operator": RecordingOperator, "python_callable": print}, ValueError, id="both-kinds"
        ),
        pytest.param({"operator": dict}, TypeError, id="not-an-operator"),
        pytest.param(
            {"operator": RecordingOperator, "operator_kwargs": {"task_id": "x"}},
            ValueError,
            id="task-id-in-kwargs",
        ),
    ],
)
def test_bad_task_arguments_are_rejected(
    config_file: str, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        bistro_job_dag("nightly", config_file=config_file, options=BistroOptions(), **kwargs)


def test_command_dag_is_unchanged(config_file: str) -> None:
    task = bistro_job_dag("nightly", config_file=config_file, options=BistroOptions()).task_dict[
        "run"
    ]
    assert task.operator_class is BistroTaskOperator
    assert task.partial_kwargs["config_file"] == config_file
    assert "job_config" not in task.partial_kwargs


# -- RPC tasks -----------------------------------------------------------------------------


class Service(BaseHTTPRequestHandler):
    """Responds by path, and records every request's path and JSON body."""

    requests: ClassVar[list[tuple[str, Any]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"null")
        Service.requests.append((self.path, body))
        name = self.path.rsplit("/", 1)[-1]
        if name == "slow":
            time.sleep(2)
        code, text = RESPONSES.get(name, (200, ""))
        self.send_response(code)
        if code == 302:
            self.send_header("Location", "/empty")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        try:
            self.wfile.write(text.encode())
        except BrokenPipeError:
            pass  # the client gave up first, as the timeout test intends

    def log_message(self, *args: Any) -> None:
        pass


RESPONSES = {
    "empty": (200, ""),
    "done": (200, '{"status": "done", "data": {"x": 1}}'),
    "incomplete": (200, '{"status": "incomplete", "message": "later"}'),
    "failed": (200, '{"status": "failed"}'),
    "error": (500, "broken"),
    "redirect": (302, ""),
    "garbage": (200, "not json"),
    "slow": (200, ""),
}


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Service)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def post(url: str, timeout: float = 10.0) -> Any:
    return BistroHttpOperator(task_id="rpc", url=url, body={"a": 1}, timeout=timeout).execute({})


def test_rpc_empty_body_is_done(service: str) -> None:
    assert post(f"{service}/empty") is None


def test_rpc_done_returns_body(service: str) -> None:
    assert post(f"{service}/done") == {"status": "done", "data": {"x": 1}}


def test_rpc_sends_json_body(service: str) -> None:
    Service.requests.clear()
    post(f"{service}/empty")
    assert Service.requests == [("/empty", {"a": 1})]


@pytest.mark.parametrize(
    ("path", "error"),
    [
        pytest.param("incomplete", BistroIncomplete, id="incomplete"),
        pytest.param("failed", BistroFailed, id="failed"),
        pytest.param("error", BistroHttpError, id="http-500"),
        pytest.param("redirect", BistroHttpError, id="redirect-not-followed"),
        pytest.param("garbage", BistroHttpError, id="not-json"),
    ],
)
def test_rpc_response_raises_status(service: str, path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        post(f"{service}/{path}")


def test_rpc_timeout_is_error(service: str) -> None:
    with pytest.raises(BistroHttpError, match="timed out"):
        post(f"{service}/slow", timeout=0.3)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://example.invalid/task", id="other-host"),
        pytest.param("http://localhost:1/task", id="localhost-not-listed"),
        pytest.param("file:///etc/passwd", id="file-scheme"),
    ],
)
def test_rpc_target_outside_allowed_hosts_fails(url: str) -> None:
    with pytest.raises(BistroFailed):
        check_target(url, {"127.0.0.1"})


def test_rpc_allowed_host_passes_check() -> None:
    check_target("https://tasks.internal:8443/x", {"127.0.0.1", "tasks.internal"})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        pytest.param(
            b'{"status": "incomplete_backoff"}', BistroIncomplete, id="incomplete-backoff"
        ),
        pytest.param(b'{"status": "backoff"}', BistroHttpError, id="backoff-alias"),
        pytest.param(b'{"status": "weird"}', BistroHttpError, id="unknown"),
        pytest.param(b'{"ok": true}', BistroHttpError, id="no-status"),
        pytest.param(b"[1]", BistroHttpError, id="not-object"),
    ],
)
def test_status_from_body_rejects(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        status_from_body(body, "http://127.0.0.1/x")


def test_incomplete_backoff_body_waits() -> None:
    with pytest.raises(BistroIncomplete) as raised:
        status_from_body(b'{"status": "incomplete_backoff"}', "http://127.0.0.1/x")
    assert raised.value.kind == "incomplete_backoff"


def test_rpc_operator_job_templates_url_and_body(service: str) -> None:
    Service.requests.clear()
    task = BistroOperatorTask(
        task_id="run",
        job="nightly",
        node="db1",
        config_file="unused.json",
        operator=BistroHttpOperator,
        operator_kwargs={
            "url": service + "/task/{{ bistro.node }}",
            "body": {"host": "{{ bistro.ancestor('host') }}"},
        },
    )
    ti = FakeTI(make_admission())
    task.execute({"ti": ti})
    assert Service.requests == [("/task/db1", {"host": "host1"})]
    assert ti.pushed["bistro_status"]["result"] == "done"
