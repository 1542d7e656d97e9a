"""`airflow bistro validate|nodes|plan`: through the real CLI, and through the functions.

Each subprocess call starts Airflow (a few seconds), so only the exit codes and the
argument parsing go through `airflow`; output details are checked by calling
`bistro_provider.cli.commands` directly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bistro_provider.cli import commands

AIRFLOW = Path(sys.executable).with_name("airflow")

HOSTS = {"host1": ["db11", "db12"], "host2": ["db21", "db22"]}
ROUND_ROBIN_ORDER = [
    ["job1", "db22"],
    ["job2", "db21"],
    ["job1", "db12"],
    ["job2", "db11"],
]


def two_host_config(**extra_jobs: Any) -> dict[str, Any]:
    """Return two hosts of two databases (host limit 2, database limit 1) and two jobs."""
    config: dict[str, Any] = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": "roundrobin",
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [{"source": "manual", "prefs": HOSTS}],
            },
            "resources": {
                "host": {"host_concurrency": {"limit": 2, "default": 1}},
                "db": {"db_concurrency": {"limit": 1, "default": 1}},
            },
        },
        "bistro_job->job1": {"owner": "test", "priority": 10},
        "bistro_job->job2": {"owner": "test", "priority": 1},
    }
    for name, job in extra_jobs.items():
        config[f"bistro_job->{name}"] = job
    return config


def write_json(path: Path, data: Any) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def valid_config(tmp_path: Path) -> str:
    return write_json(tmp_path / "bistro.json", two_host_config())


@pytest.fixture
def invalid_config(tmp_path: Path) -> str:
    bad_job = {"priority": "high", "resources": {"nope": 1}}
    return write_json(tmp_path / "bad.json", two_host_config(broken=bad_job))


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("airflow")


def run_cli(airflow_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__BISTRO__")}
    env["AIRFLOW_HOME"] = str(airflow_home)
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    return subprocess.run(
        [str(AIRFLOW), "bistro", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def namespace(**values: Any) -> argparse.Namespace:
    defaults = {
        "config": None,
        "json": False,
        "now": 0.0,
        "running": None,
        "job_order": "config",
        "seed": 1,
    }
    return argparse.Namespace(**{**defaults, **values})


def call(command: Any, capsys: pytest.CaptureFixture[str], **values: Any) -> tuple[int, str, str]:
    """Run a command function and return its exit code, stdout and stderr."""
    code = 0
    try:
        command(namespace(**values))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# --- through the real CLI ---------------------------------------------------------------


def test_cli_validate_valid_exits_zero(airflow_home: Path, valid_config: str) -> None:
    result = run_cli(airflow_home, "validate", "--config", valid_config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"{valid_config}: valid")


def test_cli_validate_lists_errors_with_key_paths(airflow_home: Path, invalid_config: str) -> None:
    result = run_cli(airflow_home, "validate", "--config", invalid_config)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("error: bistro_job->broken.owner: missing") for line in lines)
    assert any(line.startswith("error: bistro_job->broken.priority: ") for line in lines)
    assert any(line.startswith("error: bistro_job->broken.resources.nope: ") for line in lines)
    assert lines[-1] == f"{invalid_config}: 3 error(s)"


def test_cli_nodes_json_lists_forest(airflow_home: Path, valid_config: str) -> None:
    result = run_cli(airflow_home, "nodes", "--config", valid_config, "--json")
    assert result.returncode == 0, result.stderr
    items = json.loads(result.stdout)
    assert items[0] == {
        "name": "instance",
        "level": "instance",
        "parent": None,
        "enabled": True,
        "tags": [],
    }
    assert [(item["name"], item["level"], item["parent"]) for item in items[1:]] == [
        ("host1", "host", "instance"),
        ("host2", "host", "instance"),
        ("db11", "db", "host1"),
        ("db12", "db", "host1"),
        ("db21", "db", "host2"),
        ("db22", "db", "host2"),
    ]


def test_cli_plan_gives_round_robin_order(airflow_home: Path, valid_config: str) -> None:
    args = ["plan", "--config", valid_config, "--job-order", "config", "--seed", "1", "--json"]
    result = run_cli(airflow_home, *args)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [[s["job"], s["node"]] for s in payload["starts"]] == ROUND_ROBIN_ORDER
    host1 = payload["availability_before"]["host"]["host1"]
    assert host1 == {"host_concurrency": {"limit": 2, "used": 0, "available": 2}}


def test_cli_plan_running_reduces_starts(
    airflow_home: Path, valid_config: str, tmp_path: Path
) -> None:
    running = write_json(tmp_path / "running.json", [{"job": "job1", "node": "db22"}])
    args = ["plan", "--config", valid_config, "--job-order", "config", "--seed", "1"]
    result = run_cli(airflow_home, *args, "--running", running, "--json")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert [[s["job"], s["node"]] for s in payload["starts"]] == [
        ["job1", "db21"],
        ["job2", "db12"],
        ["job1", "db11"],
    ]
    host2 = payload["availability_before"]["host"]["host2"]["host_concurrency"]
    assert host2 == {"limit": 2, "used": 1, "available": 1}


def test_cli_plan_rejects_unknown_job_order(airflow_home: Path, valid_config: str) -> None:
    result = run_cli(airflow_home, "plan", "--config", valid_config, "--job-order", "random")
    assert result.returncode == 2
    assert "--job-order" in result.stderr


def test_cli_plan_missing_running_file_fails_cleanly(
    airflow_home: Path, valid_config: str, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing.json")
    result = run_cli(airflow_home, "plan", "--config", valid_config, "--running", missing)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert missing in result.stderr


# --- through the command functions ------------------------------------------------------


def test_validate_json_reports_errors_and_jobs(invalid_config: str, capsys) -> None:
    code, out, _err = call(commands.validate, capsys, config=invalid_config, json=True)
    payload = json.loads(out)
    assert code == 1
    assert payload["valid"] is False
    paths = sorted(item["path"] for item in payload["errors"])
    assert paths == [
        "bistro_job->broken.owner",
        "bistro_job->broken.priority",
        "bistro_job->broken.resources.nope",
    ]
    assert payload["jobs"]["broken"] == {"can_run": False, "enabled": True}
    assert payload["jobs"]["job1"] == {"can_run": True, "enabled": True}


def test_validate_settings_error_names_key_path(tmp_path: Path, capsys) -> None:
    config = two_host_config()
    config["bistro_settings"]["resources"]["host"]["host_concurrency"]["limit"] = "two"
    path = write_json(tmp_path / "bistro.json", config)
    code, out, _err = call(commands.validate, capsys, config=path)
    assert code == 1
    assert "error: bistro_settings.resources.host.host_concurrency.limit: " in out


def test_validate_unreadable_file_is_an_error(tmp_path: Path, capsys) -> None:
    missing = str(tmp_path / "missing.json")
    code, out, _err = call(commands.validate, capsys, config=missing)
    assert code == 1
    assert out.startswith(f"error: {missing}: ")


def test_validate_valid_json_payload(valid_config: str, capsys) -> None:
    code, out, _err = call(commands.validate, capsys, config=valid_config, json=True)
    payload = json.loads(out)
    assert code == 0
    assert payload["valid"] is True
    assert payload["errors"] == []


def test_missing_config_option_exits_two(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("AIRFLOW__BISTRO__CONFIG_FILE", raising=False)
    code, _out, err = call(commands.validate, capsys, config=None)
    assert code == 2
    assert "--config" in err


def test_nodes_text_lists_each_node(valid_config: str, capsys) -> None:
    code, out, _err = call(commands.nodes, capsys, config=valid_config)
    lines = out.splitlines()
    assert code == 0
    assert len(lines) == 7
    assert lines[3].split() == ["db", "db11", "parent=host1", "enabled=true", "tags=-"]


def test_nodes_failed_source_exits_one(tmp_path: Path, capsys) -> None:
    config = two_host_config()
    script = {"parent_level": "db", "script": str(tmp_path / "no-such-script")}
    config["bistro_settings"]["nodes"]["levels"].append("table")
    config["bistro_settings"]["nodes"]["node_sources"].append({"source": "script", "prefs": script})
    path = write_json(tmp_path / "bistro.json", config)
    code, _out, err = call(commands.nodes, capsys, config=path)
    assert code == 1
    assert "no-such-script" in err


def test_plan_text_numbers_each_start(valid_config: str, capsys) -> None:
    code, out, _err = call(commands.plan, capsys, config=valid_config)
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split()[:4] == ["1.", "job1", "on", "db22"]
    assert lines[-1] == "4 task(s) would start"


def test_plan_running_with_explicit_holdings(valid_config: str, tmp_path: Path, capsys) -> None:
    holdings = [{"level": "host", "node": "host1", "resources": {"host_concurrency": 2}}]
    running = write_json(
        tmp_path / "running.json", [{"job": "job2", "node": "db11", "holdings": holdings}]
    )
    code, out, _err = call(commands.plan, capsys, config=valid_config, running=running, json=True)
    payload = json.loads(out)
    assert code == 0
    assert {start["node"] for start in payload["starts"]} == {"db21", "db22"}
    assert payload["availability_before"]["host"]["host1"]["host_concurrency"]["available"] == 0


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        pytest.param({"job": "job1"}, "expected a JSON list", id="not-a-list"),
        pytest.param(
            [{"job": "job1"}], "[0]: expected an object with 'job' and 'node'", id="no-node"
        ),
        pytest.param(
            [{"job": "nope", "node": "db11"}], "[0].job: unknown job 'nope'", id="unknown-job"
        ),
        pytest.param(
            [{"job": "job1", "node": "host1"}],
            "[0].node: node 'host1' is not on level db",
            id="wrong-level",
        ),
    ],
)
def test_plan_invalid_running_file_exits_one(
    valid_config: str, tmp_path: Path, capsys, entries: Any, expected: str
) -> None:
    running = write_json(tmp_path / "running.json", entries)
    code, _out, err = call(commands.plan, capsys, config=valid_config, running=running)
    assert code == 1
    assert expected in err


def test_plan_malformed_running_file_fails_cleanly(
    valid_config: str, tmp_path: Path, capsys
) -> None:
    running = tmp_path / "running.json"
    running.write_text("[{not json")
    code, _out, err = call(commands.plan, capsys, config=valid_config, running=str(running))
    assert code == 2
    assert str(running) in err


def test_plan_malformed_holdings_fail_cleanly(valid_config: str, tmp_path: Path, capsys) -> None:
    entries = [{"job": "job1", "node": "db11", "holdings": [{"level": "host"}]}]
    running = write_json(tmp_path / "running.json", entries)
    code, _out, err = call(commands.plan, capsys, config=valid_config, running=running)
    assert code == 1
    assert "[0].holdings" in err
