"""Run the ``make demo`` scenario: database maintenance over a fleet under Bistro limits.

Usage: ``python demo/run_demo.py [--workdir .demo] [--hosts 50] [--hold-seconds 1.0]
[--worker-processes 8] [--timeout 1800]``

Steps: build a fleet of SQLite databases (real ISO 3166-2 data) in WORKDIR/fleet. Write a
Bistro config whose script node sources list hosts and databases. Start Airflow on 127.0.0.1
with the BistroExecutor and trigger the ``bistro_db_maintenance`` DAG, which has one mapped
task per database. Wait, stop Airflow, and check from the tasks' own timestamps that no host
ran more than 2 tasks and no database more than 1 at once. The last stdout line is one JSON summary;
progress goes to stderr. The exit code is 0 only when every mapped task succeeded, each fleet
database got one, no limit was exceeded and no Airflow process was left running.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):
    # Run as a script: make `demo` importable as a package from the repository root.
    sys.path.insert(0, str(REPO_ROOT))

from demo import timeline  # noqa: E402
from demo.fleet import FleetInfo, build_fleet  # noqa: E402
from demo.stack import AirflowStack, StackError  # noqa: E402

DEMO_DIR = Path(__file__).resolve().parent
DAG_ID = "bistro_db_maintenance"
JOB_NAME = "db_maintenance"
HOST_LIMIT = 2
DB_LIMIT = 1
EXECUTOR = "bistro_provider.executors.bistro_executor.BistroExecutor"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".demo"), help="output directory")
    parser.add_argument("--hosts", type=int, default=50, help="hosts in the fleet (default 50)")
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=1.0,
        help="seconds each task sleeps after its checks (default 1.0). The sleep models a longer"
        " maintenance window, so that host limits are exercised.",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        default=8,
        help="task processes the executor runs at once ([bistro] worker_processes, default 8)",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds to wait for the run (default 1800)"
    )
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.worker_processes < 1:
        parser.error("--hosts and --worker-processes must be at least 1")
    return args


def bistro_config(fleet_root: Path, out: Path, hold_seconds: float) -> dict[str, Any]:
    """Return the demo's Bistro config: hosts and databases from discover.py, one job."""
    script = [sys.executable, str(DEMO_DIR / "discover.py"), str(fleet_root)]
    return {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [
                    {"source": "script", "prefs": {"parent_level": "instance", "script": script}},
                    {"source": "script", "prefs": {"parent_level": "host", "script": script}},
                ],
            },
            "resources": {
                "host": {"host_concurrency": {"limit": HOST_LIMIT, "default": 1}},
                "db": {"db_concurrency": {"limit": DB_LIMIT, "default": 1}},
            },
            "scheduler": "roundrobin",
        },
        f"bistro_job->{JOB_NAME}": {
            "owner": "demo",
            "enabled": True,
            "command": [
                sys.executable,
                str(DEMO_DIR / "maintain_db.py"),
                "--fleet",
                str(fleet_root),
                "--out",
                str(out),
                "--hold-seconds",
                str(hold_seconds),
            ],
        },
    }


def stack_environment(config_path: Path, worker_processes: int) -> dict[str, str]:
    """Return the Airflow settings that select the BistroExecutor and size the run."""
    python_path = [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config_path),
        "AIRFLOW__BISTRO__WORKER_PROCESSES": str(worker_processes),
        # Waiting tasks count against parallelism, so it must exceed the worker processes.
        "AIRFLOW__CORE__PARALLELISM": str(max(32, worker_processes * 2)),
        "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "256",
        "AIRFLOW__CORE__MAX_MAP_LENGTH": "4096",
        # The provider need not be installed: the repository root is importable instead.
        "PYTHONPATH": os.pathsep.join(part for part in python_path if part),
    }


def prepare_workdir(workdir: Path, hosts: int) -> tuple[FleetInfo, Path, Path]:
    """Recreate the fleet, output folder and Airflow home; return (fleet, out, config path)."""
    for name in ("fleet", "out", "airflow"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    info = build_fleet(workdir / "fleet", hosts=hosts)
    out = workdir / "out"
    out.mkdir()
    return info, out, workdir / "bistro.json"


def is_mapped(task_instance: dict[str, Any]) -> bool:
    """Tell whether a task instance is one of the mapped per-database tasks."""
    return int(task_instance.get("map_index", -1)) >= 0


class ProgressPrinter:
    """Print one progress line to stderr per call, with the seconds since the trigger."""

    def __init__(self, started: float) -> None:
        self.started = started

    def __call__(self, counts: dict[str, int]) -> None:
        total = sum(counts.values())
        waiting = total - sum(counts.get(s, 0) for s in ("success", "running", "failed"))
        print(
            f"[{time.monotonic() - self.started:7.1f} s] {counts.get('success', 0)}/{total}"
            f" succeeded, {counts.get('running', 0)} running, {waiting} queued or waiting,"
            f" {counts.get('failed', 0)} failed",
            file=sys.stderr,
            flush=True,
        )


def run_dag(stack: AirflowStack, timeout: float) -> tuple[str, list[dict[str, Any]], float]:
    """Trigger the DAG, wait for it, and return (run state, mapped task instances, wall s)."""
    started = time.monotonic()
    run_id = stack.trigger(DAG_ID)
    print(f"Triggered {DAG_ID} run {run_id}", file=sys.stderr, flush=True)
    try:
        state = stack.wait_for_run(
            DAG_ID,
            run_id,
            timeout,
            ProgressPrinter(started),
            include=is_mapped,
            progress_interval=5.0,
        )
    except TimeoutError as exc:
        print(f"run_demo.py: {exc}", file=sys.stderr)
        state = "timed_out"
    wall = time.monotonic() - started
    mapped = [ti for ti in stack.task_instances(DAG_ID, run_id) if is_mapped(ti)]
    return state, mapped, wall


def failures(result: dict[str, Any], run_state: str, dbs: int, leftovers: list[int]) -> list[str]:
    """Return why the demo failed, one sentence per reason; empty when it passed."""
    reasons = []
    if run_state != "success":
        reasons.append(f"the DAG run ended as {run_state}, expected success")
    if result["tasks"] != dbs:
        reasons.append(f"{result['tasks']} mapped tasks ran for {dbs} fleet databases")
    if result["failed"] or result["succeeded"] != result["tasks"]:
        reasons.append(f"{result['succeeded']} of {result['tasks']} mapped tasks succeeded")
    if result["max_running_per_host"] > HOST_LIMIT:
        reasons.append(f"a host ran {result['max_running_per_host']} tasks at once")
    if result["max_running_per_db"] > DB_LIMIT:
        reasons.append(f"a database ran {result['max_running_per_db']} tasks at once")
    if leftovers:
        reasons.append(f"Airflow processes still running after stop: {leftovers}")
    return reasons


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals so that a second Ctrl-C cannot cut the shutdown short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"received signal {signum}")


def run(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    info, out, config_path = prepare_workdir(workdir, args.hosts)
    config = bistro_config(info.root, out, args.hold_seconds)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    print(f"Fleet: {json.dumps(info.summary())}", file=sys.stderr, flush=True)

    env = stack_environment(config_path, args.worker_processes)
    stack = AirflowStack(workdir / "airflow", REPO_ROOT / "dags", env)
    print(f"Starting Airflow in {stack.home} on {stack.base_url}", file=sys.stderr, flush=True)
    with stack:
        run_state, mapped, wall = run_dag(stack, args.timeout)
        leftovers = stack.stop()

    summary = timeline.summarize(out)
    result = {
        "tasks": len(mapped),
        "succeeded": sum(1 for ti in mapped if ti["state"] == "success"),
        "failed": sum(1 for ti in mapped if ti["state"] in ("failed", "upstream_failed")),
        "max_running_per_host": summary["max_running_per_host"],
        "host_limit": HOST_LIMIT,
        "max_running_per_db": summary["max_running_per_db"],
        "wall_s": round(wall, 1),
        "report": str(timeline.write_report(out)),
    }
    reasons = failures(result, run_state, info.db_count, leftovers)
    for reason in reasons:
        print(f"run_demo.py: FAILED: {reason}", file=sys.stderr)
    if reasons:
        print(f"Airflow logs: {stack.log_dir}", file=sys.stderr)
    print(json.dumps(result), flush=True)
    return 1 if reasons else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("run_demo.py: interrupted; Airflow was stopped", file=sys.stderr)
        return 130
    except StackError as exc:
        print(f"run_demo.py: Airflow failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
