"""`airflow bistro` commands that read or change the executor's shared state, and
`import-config`.

They read the same `BistroState` as the REST API and pass it through the same pydantic
models, so ``--json`` prints exactly the API's JSON for the same tables. Actions are
audited as the OS user, prefixed ``cli:``.

Exit status: 0 success, 1 error (unknown name, invalid value, database problem), 2 bad
arguments.
"""

from __future__ import annotations

import getpass
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import yaml
from pydantic import BaseModel

from bistro_provider.core.config import load_config
from bistro_provider.core.errors import ConfigError
from bistro_provider.options import BistroOptions
from bistro_provider.state import CLI_USER_PREFIX, BistroState, StateError, schemas
from bistro_provider.state.explain import format_time
from bistro_provider.state.tasks import PROGRESS_KEYS

EXECUTOR_PATH = "bistro_provider.executors.bistro_executor.BistroExecutor"


# -- plumbing ------------------------------------------------------------------------------


def _fail(message: str, status: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


@contextmanager
def _state() -> Iterator[BistroState]:
    """Yield the state read in one session; commit on success, print errors and exit 1."""
    from airflow.utils.session import create_session
    from sqlalchemy.exc import SQLAlchemyError

    # Airflow's CLI logs to stdout, which would break --json; the command's own output and
    # the audit row already record every action.
    logging.getLogger("bistro_provider.state").setLevel(logging.WARNING)
    try:
        with create_session() as session:
            yield BistroState.load(session)
    except StateError as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(
            f"cannot use the Bistro tables in the metadata database: {exc.__class__.__name__}: "
            f"{exc}; run 'airflow db migrate' if they do not exist"
        )


def _user() -> str:
    return f"{CLI_USER_PREFIX}{getpass.getuser()}"


def _print(
    args: Any, model: type[BaseModel], data: dict[str, Any], text: Callable[[], list[str]]
) -> None:
    """Print `data` as the API's JSON with --json, else as the text lines `text` returns."""
    if args.json:
        print(json.dumps(schemas.dump(model, data), indent=2))
        return
    for line in text():
        print(line)


def _amounts(values: dict[str, int], limits: dict[str, int] | None = None) -> str:
    if limits is None:
        return ", ".join(f"{name}={amount}" for name, amount in values.items()) or "-"
    return (
        ", ".join(f"{name} {values.get(name, 0)}/{limit}" for name, limit in limits.items()) or "-"
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Format rows in columns as wide as their widest cell; the last column is not padded."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return lines


# -- reads ---------------------------------------------------------------------------------


def forest(args: Any) -> None:
    with _state() as state:
        data = state.forest(level=args.level, query=args.query, tag=args.tag, state=args.state)
    _print(args, schemas.ForestResponse, data, lambda: _forest_lines(data))


def _forest_lines(data: dict[str, Any]) -> list[str]:
    levels = data["levels"]
    rows = []
    for node in data["nodes"]:
        depth = levels.index(node["level"]) if node["level"] in levels else 0
        gone = not node["in_forest"] and node["level"] != "worker"
        name = "  " * depth + node["name"] + (" (gone)" if gone else "")
        state = node["fill"] + ("" if node["enabled"] else ", disabled")
        rows.append(
            [
                name,
                node["level"],
                state,
                str(node["running"]),
                _amounts(node["usage"], node["capacity"]),
                _amounts(node["overrides"]) if node["overrides"] else "",
            ]
        )
    header = ["NODE", "LEVEL", "FILL", "TASKS", "USED/LIMIT", "OVERRIDES"]
    fetched = format_time(data["fetched_at"])
    return [*_table(header, rows), f"{data['total']} node(s); nodes fetched at {fetched}"]


def jobs(args: Any) -> None:
    with _state() as state:
        data = state.jobs()
    _print(args, schemas.JobsResponse, data, lambda: _jobs_lines(data))


def _jobs_lines(data: dict[str, Any]) -> list[str]:
    if data["config_problem"]:
        return [f"no config: {data['config_problem']}"]
    keys = [*PROGRESS_KEYS, "total"]
    rows = []
    notes = []
    for job in data["jobs"]:
        if not job["valid"]:
            status = "invalid"
        elif job["enabled"]:
            status = "enabled"
        else:
            status = "disabled"
        progress = job["progress"] or {}
        rows.append([job["name"], status, *(str(progress.get(key, "-")) for key in keys)])
        notes += [f"{job['name']}: {error}" for error in job["errors"]]
    header = ["JOB", "STATE", *(key.upper() for key in keys)]
    return _table(header, rows) + notes


def running(args: Any) -> None:
    with _state() as state:
        data = state.running()
    _print(args, schemas.RunningResponse, data, lambda: _running_lines(data))


def _running_lines(data: dict[str, Any]) -> list[str]:
    rows = []
    for task in data["tasks"]:
        holdings = "; ".join(
            f"{item['node']}: {_amounts(item['resources'])}" for item in task["holdings"]
        )
        rows.append(
            [
                task["job"],
                task["node"],
                task["state"] or "-",
                task["worker"] or "-",
                format_time(task["granted_at"]),
                holdings or "-",
            ]
        )
    header = ["JOB", "NODE", "AIRFLOW STATE", "WORKER", "ADMITTED", "HOLDS"]
    return [*_table(header, rows), f"{len(rows)} running task(s)"]


def waiting(args: Any) -> None:
    with _state() as state:
        data = state.waiting()
    _print(args, schemas.WaitingResponse, data, lambda: _waiting_lines(data))


def _waiting_lines(data: dict[str, Any]) -> list[str]:
    rows = [
        [task["job"], task["node"], format_time(task["since"]), task["reason"]]
        for task in data["tasks"]
    ]
    updated = format_time(data["updated_at"])
    footer = f"{len(rows)} waiting task(s); list published by the executor at {updated}"
    return [*_table(["JOB", "NODE", "SINCE", "REASON"], rows), footer]


def explain(args: Any) -> None:
    with _state() as state:
        data = state.explain(args.job, args.node)
    _print(args, schemas.ExplainResponse, data, lambda: _explain_lines(data))


def _explain_lines(data: dict[str, Any]) -> list[str]:
    lines = [f"{data['job']} on {data['node']}: {data['state']}", f"  {data['reason']}"]
    for key, value in data["details"].items():
        value_text = json.dumps(value) if isinstance(value, dict | list) else value
        lines.append(f"  {key}: {value_text}")
    return lines


# -- actions -------------------------------------------------------------------------------


def kill(args: Any) -> None:
    by_id = args.ti_id is not None
    by_task = args.job is not None or args.node is not None
    if by_id == by_task or (by_task and (args.job is None or args.node is None)):
        _fail("give either --ti-id ID, or both --job JOB and --node NODE", status=2)
    with _state() as state:
        data = state.kill_task(_user(), ti_id=args.ti_id, job=args.job, node=args.node)

    def text() -> list[str]:
        where = f"{data['dag_id']}/{data['run_id']}/{data['task_id']}[{data['map_index']}]"
        line = (
            f"Marked task instance {data['ti_id']} ({where}, {data['job']} on {data['node']}) "
            f"failed; it was {data['previous_state']}. Airflow stops its process."
        )
        return [line]

    _print(args, schemas.KillResponse, data, text)


def forgive(args: Any) -> None:
    with _state() as state:
        data = state.forgive_job(_user(), args.job)

    def text() -> list[str]:
        line = (
            f"Forgave job {data['job']}: {data['forgiven_failed']} failed and "
            f"{data['forgiven_backoff']} backoff status(es) reset; "
            f"{len(data['cleared_task_instances'])} task instance(s) of {data['dag_id']} cleared"
        )
        return [line]

    _print(args, schemas.ForgiveResponse, data, text)


def capacity_set(args: Any) -> None:
    with _state() as state:
        data = state.set_capacity(_user(), args.level, args.node, args.resource, args.amount)

    def text() -> list[str]:
        before = data["previous_capacity"]
        line = (
            f"{data['level']} {data['node']}: {data['resource']} limit "
            f"{'-' if before is None else before} -> {data['amount']} (override)"
        )
        return [line]

    _print(args, schemas.CapacityResponse, data, text)


def capacity_clear(args: Any) -> None:
    with _state() as state:
        data = state.clear_capacity(_user(), args.level, args.node, args.resource)

    def text() -> list[str]:
        return [f"{data['level']} {data['node']}: cleared overrides {_amounts(data['cleared'])}"]

    _print(args, schemas.ClearCapacityResponse, data, text)


def job_save(args: Any) -> None:
    body = _read_job_file(Path(args.file))
    with _state() as state:
        data = state.save_job(_user(), args.job, body, args.expected_version)
    _print(args, schemas.JobEditResponse, data, lambda: [_job_edit_line(data)])


def job_delete(args: Any) -> None:
    with _state() as state:
        data = state.delete_job(_user(), args.job, args.expected_version)
    _print(args, schemas.JobEditResponse, data, lambda: [_job_edit_line(data)])


def _read_job_file(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot read the job file {path}: {exc.strerror or exc}")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            return yaml.safe_load(text)
        return json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        _fail(f"the job file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}")


def _job_edit_line(data: dict[str, Any]) -> str:
    if data["action"] == "deleted":
        change = f"deleted (was version {data['previous_version']})"
    else:
        change = f"{data['action']}: version {data['previous_version']} -> {data['version_id']}"
    return f"Job {data['job']} {change} in {data['config_source']}"


# -- import-config -------------------------------------------------------------------------


def import_config(args: Any) -> None:
    path = str(Path(args.config).resolve())
    errors, warnings, job_names = _check_config(path)
    prefix = BistroOptions.from_airflow().dag_id_prefix
    payload: dict[str, Any] = {
        "config": path,
        "valid": not errors,
        "errors": errors,
        "warnings": warnings,
        "dag_ids": [f"{prefix}{name}" for name in job_names],
        "airflow_cfg": airflow_cfg_text(path),
        "dag_file": dag_file_text(path),
        "written": None,
    }
    if not errors and args.write_dag_file:
        payload["written"] = _write_dag_file(Path(args.write_dag_file), payload["dag_file"])
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        _print_import_text(payload)
    for item in errors:
        print(f"error: {item['path']}: {item['message']}", file=sys.stderr)
    if errors:
        message = f"error: fix the {len(errors)} error(s) above, then run import-config again"
        print(message, file=sys.stderr)
        sys.exit(1)


def _check_config(path: str) -> tuple[list[dict[str, str]], list[dict[str, str]], list[str]]:
    try:
        config = load_config(path)
    except ConfigError as exc:
        return [{"path": issue.path, "message": issue.message} for issue in exc.issues], [], []
    errors = [{"path": issue.path, "message": issue.message} for issue in config.job_errors()]
    warnings = [{"path": issue.path, "message": issue.message} for issue in config.warnings]
    return errors, warnings, list(config.jobs)


def airflow_cfg_text(config_path: str) -> str:
    """Return the airflow.cfg lines that run the jobs of `config_path` with BistroExecutor."""
    return (
        "[core]\n"
        f"executor = {EXECUTOR_PATH}\n"
        "# max_map_length (default 1024) must be at least the number of nodes on the\n"
        "# largest task level of any job.\n"
        "\n"
        "[bistro]\n"
        f"config_file = {config_path}\n"
    )


def dag_file_text(config_path: str) -> str:
    """Return a DAG file that builds one DAG per job of `config_path`."""
    return (
        f'"""One Airflow DAG per job of the Bistro config {config_path}."""\n'
        "\n"
        "from __future__ import annotations\n"
        "\n"
        "from bistro_provider.dag_factory import dags_from_config\n"
        "\n"
        f"globals().update(dags_from_config({config_path!r}))\n"
    )


def _write_dag_file(target: Path, text: str) -> str:
    """Write the DAG file; an existing file with other content is kept and reported."""
    if target.exists() and target.read_text(encoding="utf-8") != text:
        _fail(f"{target} already exists with other content; remove it or pass another path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write the DAG file {target}: {exc.strerror or exc}")
    return str(target.resolve())


def _print_import_text(payload: dict[str, Any]) -> None:
    for item in payload["warnings"]:
        print(f"warning: {item['path']}: {item['message']}")
    if payload["errors"]:
        print(f"{payload['config']}: {len(payload['errors'])} error(s)")
        return
    print(f"{payload['config']}: valid; DAGs: {', '.join(payload['dag_ids']) or 'none'}")
    print(
        "\nAdd to airflow.cfg (or set AIRFLOW__CORE__EXECUTOR and AIRFLOW__BISTRO__CONFIG_FILE):\n"
    )
    print(payload["airflow_cfg"])
    if payload["written"]:
        print(f"Wrote the DAG file {payload['written']}")
        return
    print("Save this as a .py file in your dags folder ([core] dags_folder):\n")
    print(payload["dag_file"], end="")
