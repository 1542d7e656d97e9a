"""The main job end to end: the real scheduler and api-server run BistroExecutor on SQLite.

Host and database concurrency are measured from timestamps that the tasks record
themselves, so this checks what really ran at once, not the executor's bookkeeping.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    workdir = tmp_path_factory.mktemp("main-job")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "demo" / "run_demo.py"),
            "--workdir",
            str(workdir),
            "--hosts",
            "3",
            "--hold-seconds",
            "1.0",
            "--worker-processes",
            "8",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    sys.stderr.write(result.stderr[-4000:])
    lines = result.stdout.strip().splitlines()
    assert lines, f"the demo printed nothing; stderr:\n{result.stderr[-4000:]}"
    summary = json.loads(lines[-1])
    summary["returncode"] = result.returncode
    summary["workdir"] = str(workdir)
    return summary


def test_every_database_task_succeeds(demo_summary):
    assert demo_summary["failed"] == 0
    assert demo_summary["tasks"] >= 30
    assert demo_summary["succeeded"] == demo_summary["tasks"]


def test_no_host_ever_exceeds_its_limit(demo_summary):
    assert demo_summary["max_running_per_host"] <= demo_summary["host_limit"]


def test_host_limit_is_reached(demo_summary):
    # With eight worker processes and three hosts, admission must fill each host to its
    # limit at some point; 1 would mean tasks were serialized.
    assert demo_summary["max_running_per_host"] == demo_summary["host_limit"]


def test_no_database_runs_two_tasks_at_once(demo_summary):
    assert demo_summary["max_running_per_db"] == 1


def test_report_covers_every_database(demo_summary):
    report = json.loads(Path(demo_summary["report"]).read_text())
    assert report["databases"] == demo_summary["tasks"]
    assert len(report["reports"]) == demo_summary["tasks"]
    assert report["integrity_failures"] == []


def test_demo_exits_zero(demo_summary):
    assert demo_summary["returncode"] == 0
