"""The fleet simulator: it finishes every task, its throughput bound holds, and its modes
agree; `airflow bistro simulate` runs it through the real CLI once."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bistro_provider.cli import simulate_command
from bistro_provider.core.config import parse_config
from bistro_provider.core.model import Config
from bistro_provider.nodes import fetch_forest
from bistro_provider.simulator import (
    DISTRIBUTIONS,
    ConcurrencyBound,
    SimulationOptions,
    simulate,
)

AIRFLOW = Path(sys.executable).with_name("airflow")


def fleet_data(hosts: int = 6, dbs: int = 3, jobs: int = 3, **settings: Any) -> dict[str, Any]:
    """Return the database-iterator shape: host limit 2, database limit 1, jobs 1..n."""
    host_prefs = {"parent_level": "instance", "start": 1, "end": hosts, "format": "host{i}"}
    db_prefs = {"parent_level": "host", "start": 1, "end": dbs, "format": "{parent}.db{i}"}
    data: dict[str, Any] = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": "ranked_priority",
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [
                    {"source": "range_label", "prefs": host_prefs},
                    {"source": "range_label", "prefs": db_prefs},
                ],
            },
            "resources": {
                "host": {"host_concurrency": {"limit": 2, "default": 1}},
                "db": {"db_concurrency": {"limit": 1, "default": 1}},
            },
            **settings,
        }
    }
    for index in range(jobs):
        data[f"bistro_job->job{index}"] = {"owner": "test", "priority": index + 1}
    return data


def fleet(**kwargs: Any) -> Config:
    return parse_config(fleet_data(**kwargs))


@pytest.mark.parametrize("mode", ["incremental", "full", "reference"])
@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_simulation_completes_every_task(mode: str, distribution: str) -> None:
    options = SimulationOptions(duration_mean=10, distribution=distribution, mode=mode)  # type: ignore[arg-type]
    report = simulate(fleet(), options)
    assert report.tasks_completed == 6 * 3 * 3
    assert report.tasks_open_at_end == 0
    assert report.makespan > 0


def test_modes_agree_on_makespan_for_ranked_priority() -> None:
    """Same candidates, same order: all three engines start the same tasks at the same
    times, and durations are drawn in start order from one seed."""
    makespans = {
        mode: simulate(fleet(), SimulationOptions(duration_mean=10, seed=4, mode=mode)).makespan
        for mode in ("incremental", "full", "reference")
    }
    assert makespans["incremental"] == makespans["full"]
    assert makespans["incremental"] == makespans["reference"]


def test_normalized_throughput_never_exceeds_one() -> None:
    report = simulate(fleet(hosts=10, dbs=4), SimulationOptions(duration_mean=10, seed=2))
    ratios = [ratio for _at, ratio in report.ratios]
    assert ratios, "no samples were taken"
    assert max(ratios) <= 1.0
    assert min(ratios) > 0.0


def test_fixed_durations_finish_in_whole_rounds() -> None:
    """Two hosts, two slots each, one job on four databases per host: two rounds of d."""
    options = SimulationOptions(duration_mean=7, distribution="fixed")
    report = simulate(fleet(hosts=2, dbs=4, jobs=1), options)
    assert report.makespan == 14


def test_churn_removes_hosts_and_still_finishes() -> None:
    options = SimulationOptions(duration_mean=600, churn=2.0, seed=5)
    report = simulate(fleet(hosts=8, dbs=3), options)
    assert report.churn_removals > 0
    assert report.tasks_completed == 8 * 3 * 3


def test_bound_caps_hosts_at_limit() -> None:
    config = fleet(hosts=3, dbs=3, jobs=1)
    forest = fetch_forest(config.settings, now=0)
    bound = ConcurrencyBound(config, forest)
    bound.change(2, "host1.db1", 1)
    bound.change(2, "host2.db1", 2)
    bound.change(2, "host2.db2", 1)
    bound.change(2, "host3.db1", 1)
    bound.change(2, "host3.db2", 1)
    bound.change(2, "host3.db3", 1)
    assert bound.allowed(set()) == 1 + 2 + 2
    assert bound.allowed({"host3"}) == 1 + 2


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"duration_mean": 0}, id="zero-duration"),
        pytest.param({"distribution": "normal"}, id="unknown-distribution"),
        pytest.param({"churn": -1}, id="negative-churn"),
        pytest.param({"mode": "fast"}, id="unknown-mode"),
    ],
)
def test_invalid_options_are_rejected(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SimulationOptions(**options)


def test_cli_distribution_choices_match_simulator() -> None:
    assert simulate_command.DISTRIBUTION_CHOICES == DISTRIBUTIONS


def simulate_args(config: str, **values: Any) -> argparse.Namespace:
    defaults = {
        "config": config,
        "duration_mean": 10.0,
        "distribution": "uniform",
        "churn": 0.0,
        "seed": 0,
        "full_pass": False,
        "charge_pass_time": False,
        "json": True,
    }
    return argparse.Namespace(**{**defaults, **values})


def test_simulate_command_prints_report_json(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(fleet_data()))
    simulate_command.simulate(simulate_args(str(path), full_pass=True))
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "full"
    assert report["tasks_completed"] == 54


def test_simulate_command_rejects_bad_duration(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(fleet_data()))
    with pytest.raises(SystemExit) as exit_info:
        simulate_command.simulate(simulate_args(str(path), duration_mean=-1.0))
    assert exit_info.value.code == 2
    assert "duration_mean must be > 0" in capsys.readouterr().err


def test_simulate_command_reports_invalid_config(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"bistro_settings": {"nodes": {"levels": 5}}}))
    with pytest.raises(SystemExit) as exit_info:
        simulate_command.simulate(simulate_args(str(path)))
    assert exit_info.value.code == 1


def test_cli_simulate_runs_through_airflow(tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps(fleet_data(hosts=2, dbs=2, jobs=1)))
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW__")}
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    command = [str(AIRFLOW), "bistro", "simulate", "--config", str(path), "--seed", "3"]
    result = subprocess.run(
        [*command, "--distribution", "fixed", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tasks_completed"] == 4
