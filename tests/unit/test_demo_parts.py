"""Tests for the demo's fleet builder, node source script, maintenance task and timeline."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pycountry
import pytest

from demo import fleet, timeline
from demo import stack as stack_module
from demo.maintain_db import maintain
from demo.processes import is_loopback

DEMO = Path(__file__).resolve().parents[2] / "demo"


def _fleet_files(root: Path) -> dict[str, list[Path]]:
    return {host.name: sorted(host.glob("*.sqlite")) for host in sorted(root.iterdir())}


def _rows(path: Path, query: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def small_fleet(tmp_path_factory: pytest.TempPathFactory) -> fleet.FleetInfo:
    return fleet.build_fleet(
        tmp_path_factory.mktemp("fleet") / "root", hosts=5, min_dbs=2, max_dbs=4
    )


@pytest.fixture(scope="module")
def full_host(tmp_path_factory: pytest.TempPathFactory) -> fleet.FleetInfo:
    """One host with a database for every country, so known rows are present."""
    countries = len(fleet.load_iso_data().subdivisions)
    root = tmp_path_factory.mktemp("full") / "root"
    return fleet.build_fleet(root, hosts=1, min_dbs=countries, max_dbs=countries)


# -- fleet ------------------------------------------------------------------------------------


def test_fleet_hosts_are_numbered(small_fleet: fleet.FleetInfo) -> None:
    assert small_fleet.hosts == ["h01", "h02", "h03", "h04", "h05"]
    assert sorted(_fleet_files(small_fleet.root)) == small_fleet.hosts


def test_fleet_db_count_per_host_within_bounds(small_fleet: fleet.FleetInfo) -> None:
    for host, files in _fleet_files(small_fleet.root).items():
        assert 2 <= len(files) <= 4, host


def test_fleet_node_names_are_host_and_country(small_fleet: fleet.FleetInfo) -> None:
    for host, files in _fleet_files(small_fleet.root).items():
        assert [path.stem for path in files] == small_fleet.dbs_by_host[host]
        for path in files:
            [(alpha_2, _name)] = _rows(path, "SELECT alpha_2, name FROM country")
            assert path.stem == f"{host}-{alpha_2.lower()}"


def test_fleet_rows_equal_pycountry(small_fleet: fleet.FleetInfo) -> None:
    checked = 0
    for files in _fleet_files(small_fleet.root).values():
        for path in files:
            query = "SELECT code, name, type, parent_code, country_code FROM subdivisions"
            for code, name, kind, parent_code, country_code in _rows(path, query):
                real = pycountry.subdivisions.get(code=code)
                assert real is not None, code
                assert (name, kind, parent_code, country_code) == (
                    real.name,
                    real.type,
                    real.parent_code,
                    real.country_code,
                )
                checked += 1
    assert checked == small_fleet.rows


def test_fleet_db_contains_whole_country(small_fleet: fleet.FleetInfo) -> None:
    path = next(iter(_fleet_files(small_fleet.root).values()))[0]
    [(alpha_2, name)] = _rows(path, "SELECT alpha_2, name FROM country")
    codes = {code for (code,) in _rows(path, "SELECT code FROM subdivisions")}
    assert name == pycountry.countries.get(alpha_2=alpha_2).name
    assert codes == {sub.code for sub in pycountry.subdivisions.get(country_code=alpha_2)}


@pytest.mark.parametrize(
    ("node", "code", "name"),
    [
        pytest.param("h01-us", "US-CA", "California", id="us-california"),
        pytest.param("h01-de", "DE-BY", "Bayern", id="de-bavaria"),
        pytest.param("h01-jp", "JP-13", "Tokyo", id="jp-tokyo"),
    ],
)
def test_fleet_contains_known_subdivision(
    full_host: fleet.FleetInfo, node: str, code: str, name: str
) -> None:
    path = full_host.root / "h01" / f"{node}.sqlite"
    rows = _rows(path, f"SELECT name FROM subdivisions WHERE code = '{code}'")
    assert rows == [(name,)]


def test_fleet_is_deterministic_for_seed(tmp_path: Path) -> None:
    first = fleet.build_fleet(tmp_path / "a", hosts=4, min_dbs=1, max_dbs=5, seed=11)
    again = fleet.build_fleet(tmp_path / "b", hosts=4, min_dbs=1, max_dbs=5, seed=11)
    other = fleet.build_fleet(tmp_path / "c", hosts=4, min_dbs=1, max_dbs=5, seed=12)
    assert first.dbs_by_host == again.dbs_by_host
    assert first.dbs_by_host != other.dbs_by_host


def test_fleet_rejects_non_empty_root(tmp_path: Path) -> None:
    (tmp_path / "stale").mkdir()
    with pytest.raises(FileExistsError, match="not empty"):
        fleet.build_fleet(tmp_path, hosts=1, min_dbs=1, max_dbs=1)


@pytest.mark.parametrize(
    ("hosts", "min_dbs", "max_dbs", "message"),
    [
        pytest.param(0, 1, 1, "hosts=0", id="no-hosts"),
        pytest.param(1, 0, 1, "min_dbs=0", id="no-dbs"),
        pytest.param(1, 5, 4, "below min_dbs", id="max-below-min"),
        pytest.param(1, 1, 10_000, "exceeds", id="more-dbs-than-countries"),
    ],
)
def test_fleet_rejects_invalid_sizes(
    tmp_path: Path, hosts: int, min_dbs: int, max_dbs: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fleet.build_fleet(tmp_path / "root", hosts=hosts, min_dbs=min_dbs, max_dbs=max_dbs)


@pytest.mark.skipif(
    not (fleet.ISO_CODES_DIR / "iso_3166-2.json").is_file(), reason="Debian iso-codes missing"
)
def test_iso_codes_fallback_reads_real_rows() -> None:
    data = fleet._load_from_iso_codes(fleet.ISO_CODES_DIR)
    california = {sub.code: sub for sub in data.subdivisions["US"]}["US-CA"]
    babek = {sub.code: sub for sub in data.subdivisions["AZ"]}["AZ-BAB"]
    assert california.name == "California"
    assert babek.parent_code == "AZ-NX"
    assert data.country_names["FR"] == "France"


def test_fleet_cli_prints_summary(tmp_path: Path) -> None:
    argv = [sys.executable, str(DEMO / "fleet.py"), str(tmp_path / "root"), "--hosts", "2"]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    summary = json.loads(result.stdout)
    assert summary["hosts"] == 2
    assert 20 <= summary["dbs"] <= 40
    assert len(result.stdout.strip().splitlines()) == 1


# -- discover.py ------------------------------------------------------------------------------


def _discover(*args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(DEMO / "discover.py"), *args]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("parent", ["instance", "anything-else"])
def test_discover_lists_hosts_for_root(small_fleet: fleet.FleetInfo, parent: str) -> None:
    result = _discover(str(small_fleet.root), parent)
    assert result.returncode == 0
    assert result.stdout.splitlines() == small_fleet.hosts


def test_discover_lists_dbs_for_host(small_fleet: fleet.FleetInfo) -> None:
    result = _discover(str(small_fleet.root), "h03")
    assert result.returncode == 0
    assert result.stdout.splitlines() == sorted(small_fleet.dbs_by_host["h03"])


def test_discover_fails_for_missing_root(tmp_path: Path) -> None:
    result = _discover(str(tmp_path / "missing"), "instance")
    assert result.returncode != 0
    assert "not found" in result.stderr
    assert result.stdout == ""


# -- maintain_db.py ---------------------------------------------------------------------------


def _run_task(
    fleet_root: Path, out: Path, node: str, path_to_node: list[str]
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Run maintain_db.py as Bistro would and return (status line, process result)."""
    read_fd, write_fd = os.pipe()
    task_arg = {
        "id": "db_maintenance",
        "path_to_node": path_to_node,
        "config": {},
        "resources_by_node": {},
        "worker_node": "instance",
        "worker_host": "localhost",
    }
    argv = [
        sys.executable,
        str(DEMO / "maintain_db.py"),
        "--fleet",
        str(fleet_root),
        "--out",
        str(out),
        "--hold-seconds",
        "0",
        node,
        f"/dev/fd/{write_fd}",
        json.dumps(task_arg),
    ]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, pass_fds=(write_fd,), check=False, timeout=60
        )
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, encoding="utf-8") as pipe:
        status = pipe.read()
    return status, result


def _first_db(info: fleet.FleetInfo) -> tuple[str, str]:
    host = info.hosts[0]
    return host, info.dbs_by_host[host][0]


def test_maintain_reports_done_and_results(small_fleet: fleet.FleetInfo, tmp_path: Path) -> None:
    host, node = _first_db(small_fleet)
    status, result = _run_task(small_fleet.root, tmp_path, node, ["instance", host, node])
    assert status == "done\n", result.stderr
    report = json.loads((tmp_path / "report" / f"{node}.json").read_text())
    path = small_fleet.root / host / f"{node}.sqlite"
    [(rows,)] = _rows(path, "SELECT count(*) FROM subdivisions")
    assert report["integrity"] == "ok"
    assert report["host"] == host
    assert report["tables"] == {"country": 1, "subdivisions": rows}
    assert len(report["checksum"]) == 64


def test_maintain_writes_timeline(small_fleet: fleet.FleetInfo, tmp_path: Path) -> None:
    host, node = _first_db(small_fleet)
    _run_task(small_fleet.root, tmp_path, node, ["instance", host, node])
    [path] = (tmp_path / "timeline").glob(f"{node}.*.json")
    record = json.loads(path.read_text())
    assert (record["node"], record["host"]) == (node, host)
    assert record["start"] <= record["end"]
    assert isinstance(record["pid"], int)


def test_maintain_runs_analyze(small_fleet: fleet.FleetInfo, tmp_path: Path) -> None:
    host, node = _first_db(small_fleet)
    _run_task(small_fleet.root, tmp_path, node, ["instance", host, node])
    path = small_fleet.root / host / f"{node}.sqlite"
    tables = _rows(path, "SELECT name FROM sqlite_master WHERE name = 'sqlite_stat1'")
    assert tables == [("sqlite_stat1",)]


def test_maintain_fails_damaged_database(tmp_path: Path) -> None:
    fleet_root = tmp_path / "fleet"
    (fleet_root / "h01").mkdir(parents=True)
    (fleet_root / "h01" / "h01-xx.sqlite").write_bytes(b"this is not an sqlite file" * 200)
    status, _ = _run_task(fleet_root, tmp_path / "out", "h01-xx", ["instance", "h01", "h01-xx"])
    report = json.loads((tmp_path / "out" / "report" / "h01-xx.json").read_text())
    assert status == "failed\n"
    assert report["integrity"] != "ok"


def test_maintain_missing_database_is_error_backoff(tmp_path: Path) -> None:
    (tmp_path / "fleet").mkdir()
    status, result = _run_task(
        tmp_path / "fleet", tmp_path / "out", "h01-zz", ["instance", "h01", "h01-zz"]
    )
    assert status == "error_backoff\n"
    assert "Traceback" in result.stderr
    assert "not found" in result.stderr


def test_maintain_rejects_path_for_other_node(small_fleet: fleet.FleetInfo, tmp_path: Path) -> None:
    host, node = _first_db(small_fleet)
    status, result = _run_task(small_fleet.root, tmp_path, node, ["instance", host, "other"])
    assert status == "error_backoff\n"
    assert "path_to_node" in result.stderr


def test_checksum_follows_data(tmp_path: Path) -> None:
    info = fleet.build_fleet(tmp_path / "root", hosts=1, min_dbs=1, max_dbs=1)
    path = info.root / "h01" / f"{info.dbs_by_host['h01'][0]}.sqlite"
    before = maintain(path).checksum
    again = maintain(path).checksum
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("UPDATE country SET name = name || ' (edited)'")
    connection.close()
    assert before == again
    assert maintain(path).checksum != before


def test_maintain_hashes_blobs_without_key(tmp_path: Path) -> None:
    path = tmp_path / "odd #dir%" / "blobs.sqlite"
    path.parent.mkdir()
    connection = sqlite3.connect(path)
    with connection:
        connection.execute("CREATE TABLE blobs (data BLOB)")
        connection.executemany("INSERT INTO blobs VALUES (?)", [(b"\x00\x01",), (b"\xff",)])
    before = maintain(path)
    with connection:
        connection.execute("UPDATE blobs SET data = x'fe' WHERE data = x'ff'")
    connection.close()
    assert before.tables == {"blobs": 2}
    assert maintain(path).checksum != before.checksum


# -- timeline ---------------------------------------------------------------------------------


def _interval(start: float, end: float, host: str = "h01", node: str = "h01-fr") -> dict:
    return {"start": start, "end": end, "host": host, "node": node}


@pytest.mark.parametrize(
    ("intervals", "expected"),
    [
        pytest.param([_interval(0, 1), _interval(1, 2)], 1, id="touching-do-not-overlap"),
        pytest.param([_interval(0, 10), _interval(2, 3)], 2, id="nested"),
        pytest.param([_interval(0, 2), _interval(1, 3), _interval(2.5, 4)], 2, id="chain"),
        pytest.param([_interval(0, 1), _interval(0, 1), _interval(0, 1)], 3, id="identical"),
        pytest.param([_interval(5, 5), _interval(5, 5)], 0, id="zero-length"),
        pytest.param([_interval(0, 4), _interval(1, 3), _interval(2, 2.5)], 3, id="three-deep"),
    ],
)
def test_max_concurrency_single_key(intervals: list[dict], expected: int) -> None:
    assert timeline.max_concurrency(intervals, "host") == {"h01": expected}


def test_max_concurrency_counts_each_key_apart() -> None:
    intervals = [_interval(0, 2, "h01"), _interval(1, 3, "h02"), _interval(1, 3, "h01")]
    assert timeline.max_concurrency(intervals, "host") == {"h01": 2, "h02": 1}


def test_max_concurrency_accepts_key_function() -> None:
    intervals = [_interval(0, 2, "h01"), _interval(1, 3, "h02")]
    assert timeline.max_concurrency(intervals, lambda interval: "all") == {"all": 2}


def test_max_concurrency_rejects_reversed_interval() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        timeline.max_concurrency([_interval(2, 1)], "host")


def _write(directory: Path, name: str, record: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(record) + "\n")


def test_summarize_reads_timeline_files(tmp_path: Path) -> None:
    _write(tmp_path / "timeline", "h01-fr", _interval(0, 2, "h01", "h01-fr"))
    _write(tmp_path / "timeline", "h01-de", _interval(1, 3, "h01", "h01-de"))
    _write(tmp_path / "timeline", "h02-fr", _interval(1, 3, "h02", "h02-fr"))
    assert timeline.summarize(tmp_path) == {
        "max_running_per_host": 2,
        "max_running_per_db": 1,
        "tasks": 3,
    }


def test_summarize_without_timeline_is_zero(tmp_path: Path) -> None:
    assert timeline.summarize(tmp_path) == {
        "max_running_per_host": 0,
        "max_running_per_db": 0,
        "tasks": 0,
    }


def test_write_report_merges_sorted(tmp_path: Path) -> None:
    for node in ("h02-fr", "h01-de", "h01-fr"):
        _write(tmp_path / "report", node, {"node": node, "integrity": "ok"})
    _write(tmp_path / "report", "h01-xx", {"node": "h01-xx", "integrity": ["malformed"]})
    merged = json.loads(timeline.write_report(tmp_path).read_text())
    assert [report["node"] for report in merged["reports"]] == [
        "h01-de",
        "h01-fr",
        "h01-xx",
        "h02-fr",
    ]
    assert merged["databases"] == 4
    assert merged["integrity_failures"] == ["h01-xx"]


# -- stack process handling -------------------------------------------------------------------

STUBBORN_SERVICE = """#!{python}
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# A child in a process group of its own, like the task processes of Airflow's supervisor.
child = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
     " print('ready', flush=True); time.sleep(600)"],
    process_group=0, stdout=subprocess.PIPE, text=True,
)
child.stdout.readline()
print("ready", flush=True)
time.sleep(600)
"""


def test_stack_stop_kills_processes_ignoring_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_airflow = tmp_path / "airflow"
    fake_airflow.write_text(STUBBORN_SERVICE.format(python=sys.executable))
    fake_airflow.chmod(0o755)
    monkeypatch.setattr(stack_module, "STOP_GRACE_SECONDS", 0.5)
    stack = stack_module.AirflowStack(tmp_path / "home", tmp_path, {}, port=1)
    stack.airflow = fake_airflow
    stack.log_dir.mkdir(parents=True)
    stack._spawn("stubborn", ["service"])
    log_path = stack.log_dir / "stubborn.log"
    for _ in range(200):
        if "ready" in log_path.read_text():
            break
        time.sleep(0.05)
    assert len(stack.pids()) == 2
    assert stack.stop() == []


def test_stack_refuses_second_start(tmp_path: Path) -> None:
    """A second start would run a second scheduler and triggerer on the same database."""
    fake_airflow = tmp_path / "airflow"
    fake_airflow.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(600)\n")
    fake_airflow.chmod(0o755)
    stack = stack_module.AirflowStack(tmp_path / "home", tmp_path, {}, port=1)
    stack.airflow = fake_airflow
    stack.log_dir.mkdir(parents=True)
    stack._spawn("scheduler", ["scheduler"])
    try:
        with pytest.raises(stack_module.StackError, match="already started"):
            stack.start()
        assert len(stack._processes) == 1
    finally:
        assert stack.stop() == []


def test_stack_environment_ignores_inherited_airflow_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "CeleryExecutor")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "99")
    extra = {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
    env = stack_module.AirflowStack(tmp_path, tmp_path, extra, port=8123).environment()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert "AIRFLOW__CORE__PARALLELISM" not in env
    assert env["AIRFLOW__API__BASE_URL"] == "http://127.0.0.1:8123"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8123/execution/"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        pytest.param("127.0.0.1:8080", True, id="ipv4-loopback"),
        pytest.param("[::1]:8080", True, id="ipv6-loopback"),
        pytest.param("0.0.0.0:8793", False, id="ipv4-any"),
        pytest.param("*:8793", False, id="any-interface"),
        pytest.param("[::]:8080", False, id="ipv6-any"),
        pytest.param("10.1.2.3:8080", False, id="private-address"),
    ],
)
def test_is_loopback(address: str, expected: bool) -> None:
    assert is_loopback(address) is expected
