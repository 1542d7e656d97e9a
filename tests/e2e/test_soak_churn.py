"""A continuous job on the seed fleet while hosts keep failing and coming back.

The seed fleet of the main job (50 hosts, 10 to 20 SQLite databases each) is discovered by
a script node source that leaves out the hosts listed as down. For at least five minutes a
fault thread takes a few hosts down and brings them back every few seconds. The job must
process every database exactly once, never run more than two tasks on a host (measured
from the tasks' own timestamps), and never stop a task whose node still exists.

It takes about 7 minutes on two cores. BISTRO_SOAK_SECONDS changes the churn duration
(default 300); BISTRO_SOAK=0 skips the test.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from demo.fleet import build_fleet
from demo.stack import AirflowStack
from demo.timeline import max_concurrency

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.environ.get("BISTRO_SOAK") == "0", reason="soak test skipped by BISTRO_SOAK=0"
    ),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHURN_SECONDS = float(os.environ.get("BISTRO_SOAK_SECONDS", "300"))

NODES_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    fleet, down_file, parent = sys.argv[1], sys.argv[2], sys.argv[3]
    down = set(json.load(open(down_file)))
    hosts = sorted(name for name in os.listdir(fleet) if os.path.isdir(os.path.join(fleet, name)))
    if parent in hosts:
        for path in sorted(os.listdir(os.path.join(fleet, parent))):
            if path.endswith(".sqlite"):
                print(path[: -len(".sqlite")])
    else:
        for host in hosts:
            if host not in down:
                print(host)
    """
)


class Churn(threading.Thread):
    """Takes up to `max_down` random hosts down for 6 to 15 s at a time, logging each change."""

    def __init__(self, hosts: list[str], down_file: Path, seconds: float, max_down: int = 5):
        super().__init__(daemon=True)
        self.hosts = hosts
        self.down_file = down_file
        self.seconds = seconds
        self.max_down = max_down
        self.events: list[tuple[float, str, str]] = []
        self.rng = random.Random(11)

    def _write(self, down: dict[str, float]) -> None:
        tmp = self.down_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(down)))
        os.replace(tmp, self.down_file)

    def run(self) -> None:
        down: dict[str, float] = {}
        end = time.time() + self.seconds
        while time.time() < end:
            now = time.time()
            for host, until in list(down.items()):
                if until <= now:
                    del down[host]
                    self.events.append((now, "up", host))
            if len(down) < self.max_down:
                host = self.rng.choice([h for h in self.hosts if h not in down])
                down[host] = now + self.rng.uniform(6, 15)
                self.events.append((now, "down", host))
            self._write(down)
            time.sleep(self.rng.uniform(2, 5))
        self._write({})
        self.events.append((time.time(), "all-up", ""))


def test_continuous_job_survives_host_churn(tmp_path):
    fleet_root = tmp_path / "fleet"
    info = build_fleet(fleet_root, hosts=50, min_dbs=10, max_dbs=20)
    out = tmp_path / "out"
    down_file = tmp_path / "down.json"
    down_file.write_text("[]")
    nodes_script = tmp_path / "nodes.py"
    nodes_script.write_text(NODES_SCRIPT)
    script = [sys.executable, str(nodes_script), str(fleet_root), str(down_file)]
    config = tmp_path / "bistro.json"
    config.write_text(
        json.dumps(
            {
                "bistro_settings": {
                    "enabled": True,
                    "nodes": {
                        "levels": ["host", "db"],
                        "node_order": "random",
                        "node_sources": [
                            {"source": "script", "prefs": {"parent_level": "instance", "script": script}},
                            {"source": "script", "prefs": {"parent_level": "host", "script": script}},
                        ],
                    },
                    "resources": {
                        "host": {"host_concurrency": {"limit": 2, "default": 1}},
                        "db": {"db_concurrency": {"limit": 1, "default": 1}},
                    },
                },
                "bistro_job->soak": {
                    "owner": "soak-test",
                    "command": [
                        sys.executable,
                        str(REPO_ROOT / "demo" / "maintain_db.py"),
                        "--fleet",
                        str(fleet_root),
                        "--out",
                        str(out),
                        "--hold-seconds",
                        "1.0",
                    ],
                    "airflow": {"continuous": True, "poll_interval": 2},
                },
            }
        )
    )
    env = {
        "AIRFLOW__CORE__EXECUTOR": "bistro_provider.executors.bistro_executor.BistroExecutor",
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config),
        "AIRFLOW__BISTRO__NODES_UPDATE_INTERVAL": "2",
        "AIRFLOW__BISTRO__WORKER_PROCESSES": "8",
        "AIRFLOW__CORE__PARALLELISM": "64",
        "AIRFLOW__CORE__MAX_MAP_LENGTH": "4096",
        "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "256",
        "PYTHONPATH": str(REPO_ROOT),
    }
    hosts = sorted(path.name for path in fleet_root.iterdir() if path.is_dir())
    databases = sorted(path.stem for path in fleet_root.glob("*/*.sqlite"))
    stack = AirflowStack(tmp_path / "airflow", REPO_ROOT / "dags", env, triggerer=True)
    churn = Churn(hosts, down_file, CHURN_SECONDS)
    with stack:
        churn.start()
        deadline = time.time() + CHURN_SECONDS + 900
        while time.time() < deadline:
            processed = {path.name.split(".")[0] for path in (out / "timeline").glob("*.json")}
            sys.stderr.write(
                f"[{time.strftime('%H:%M:%S')}] {len(processed)}/{len(databases)} databases "
                f"processed, churn {'running' if churn.is_alive() else 'done'}\n"
            )
            if not churn.is_alive() and processed >= set(databases):
                break
            time.sleep(15)
        churn.join(timeout=30)
        notes = _notes(stack.home / "airflow.db")
    records = [json.loads(p.read_text()) for p in (out / "timeline").glob("*.json")]
    per_host = max_concurrency(records, key="host")
    per_node: dict[str, int] = {}
    for record in records:
        per_node[record["node"]] = per_node.get(record["node"], 0) + 1
    downs = sum(1 for _t, kind, _h in churn.events if kind == "down")
    sys.stderr.write(
        f"{len(records)} task runs over {len(databases)} databases in {len(info.hosts)} hosts; "
        f"{downs} host outages; peak per host {max(per_host.values())}\n"
    )

    assert downs >= CHURN_SECONDS / 6
    assert max(per_host.values()) <= 2
    assert set(per_node) == set(databases)
    assert max(per_node.values()) == 1
    assert not [note for note in notes if "orphan" in note]


def _notes(database: Path) -> list[str]:
    with sqlite3.connect(database) as db:
        return [row[0] or "" for row in db.execute("SELECT content FROM task_instance_note")]
