"""Run a Bistro job over real PostgreSQL clusters and check host limits from the servers.

Usage: ``python examples/postgres_fleet/run_example.py [--workdir .pg-example] [--clusters 3]
[--hold-seconds 1.0] [--worker-processes 8] [--timeout 900]``

Steps: start N PostgreSQL clusters on free 127.0.0.1 ports, each with 10 to 20 databases of
real ISO 3166-2 rows. Write a Bistro config whose ``script`` node sources list the hosts and,
from ``pg_database``, their databases, with a limit of 2 tasks per host and 1 per database.
Start Airflow on 127.0.0.1 with the BistroExecutor and trigger ``bistro_pg_maintenance``,
which runs ANALYZE and row counts in every database. Meanwhile a sampler counts the batch
connections in each cluster's ``pg_stat_activity``. Everything started here is stopped at
the end, also on Ctrl-C, and the clusters are deleted.

Progress goes to stderr. The last stdout line is one JSON summary with
``max_batch_connections_per_host`` (the servers' view, sampled) and ``max_running_per_host``
(from the tasks' own timestamps). The exit code is 0 only when every database got a
successful task, neither view exceeds a limit, and no Airflow process was left running.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    # Run as a script: make `demo` and `examples` importable from the repository root.
    sys.path.insert(0, str(REPO_ROOT))

from demo.run_demo import ProgressPrinter, is_mapped, stack_environment  # noqa: E402
from demo.stack import AirflowStack, StackError  # noqa: E402
from demo.timeline import max_concurrency  # noqa: E402
from examples.postgres_fleet.clusters import ClusterError, PgFleet  # noqa: E402
from examples.postgres_fleet.sampler import ActivitySampler  # noqa: E402

EXAMPLE_DIR = Path(__file__).resolve().parent
JOB_NAME = "pg_maintenance"
DAG_ID = f"bistro_{JOB_NAME}"
HOST_LIMIT = 2
DB_LIMIT = 1

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workdir", type=Path, default=Path(".pg-example"), help="output directory"
    )
    parser.add_argument(
        "--cluster-dir",
        type=Path,
        default=None,
        help="missing or empty directory for the clusters, reachable by the postgres OS user"
        " (default: a new directory from tempfile.mkdtemp, deleted at the end)",
    )

    parser.add_argument(
        "--clusters", type=int, default=3, help="PostgreSQL clusters, one per host (default 3)"
    )
    parser.add_argument(
        "--min-dbs", type=int, default=10, help="min databases per cluster (default 10)"
    )
    parser.add_argument(
        "--max-dbs", type=int, default=20, help="max databases per cluster (default 20)"
    )
    parser.add_argument(
        "--hold-seconds",
        type=float,
        default=1.0,
        help="seconds each task keeps its connection open after its work (default 1.0)",
    )

    parser.add_argument(
        "--worker-processes",
        type=int,
        default=8,
        help="task processes the executor runs at once ([bistro] worker_processes, default 8)",
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds to wait for the run (default 900)"
    )

    args = parser.parse_args(argv)
    if args.clusters < 1 or args.worker_processes < 1:
        parser.error("--clusters and --worker-processes must be at least 1")
    if not 1 <= args.min_dbs <= args.max_dbs:
        parser.error(f"--min-dbs {args.min_dbs} --max-dbs {args.max_dbs}: need 1 <= min <= max")
    return args


def bistro_config(ports_file: Path, out: Path, hold_seconds: float) -> dict[str, Any]:
    """Return the example's Bistro config: nodes from list_dbs.py, one maintenance job."""
    script = [sys.executable, str(EXAMPLE_DIR / "list_dbs.py"), str(ports_file)]
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
            "owner": "example",
            "enabled": True,
            "command": [
                sys.executable,
                str(EXAMPLE_DIR / "maintain_pg.py"),
                "--ports",
                str(ports_file),
                "--out",
                str(out),
                "--hold-seconds",
                str(hold_seconds),
            ],
        },
    }


def run_dag(
    stack: AirflowStack, sampler: ActivitySampler, timeout: float
) -> tuple[str, list[dict[str, Any]], float]:
    """Trigger the DAG while the sampler runs; return (run state, mapped instances, wall s)."""
    sampler.start_sampling()
    started = time.monotonic()
    try:
        run_id = stack.trigger(DAG_ID)
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
            log.error("%s", exc)
            state = "timed_out"
    finally:
        sampler.stop()
    wall = time.monotonic() - started
    mapped = [ti for ti in stack.task_instances(DAG_ID, run_id) if is_mapped(ti)]
    return state, mapped, wall


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Return the JSON records of ``directory/*.json``, sorted by file name."""
    if not directory.is_dir():
        return []
    paths = sorted(directory.glob("*.json"))
    return [json.loads(path.read_text(encoding="utf-8")) for path in paths]


def write_report(out: Path) -> Path:
    """Merge ``OUT/report/*.json`` into ``OUT/report.json`` and return its path."""
    reports = read_records(out / "report")
    merged = {"databases": len(reports), "reports": reports}
    path = out / "report.json"
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _as_str_keys(values: dict[Hashable, int]) -> dict[str, int]:
    return {str(key): value for key, value in sorted(values.items(), key=lambda kv: str(kv[0]))}


def summarize(
    mapped: list[dict[str, Any]], sampler: ActivitySampler, out: Path, wall: float
) -> dict[str, Any]:
    """Return the JSON summary of one run."""
    records = read_records(out / "timeline")
    per_db = max_concurrency(records, "node")
    return {
        "tasks": len(mapped),
        "succeeded": sum(1 for ti in mapped if ti["state"] == "success"),
        "failed": sum(1 for ti in mapped if ti["state"] in ("failed", "upstream_failed")),
        "max_batch_connections_per_host": sampler.max_per_host(),
        "max_running_per_host": _as_str_keys(max_concurrency(records, "host")),
        "host_limit": HOST_LIMIT,
        "max_running_per_db": max(per_db.values(), default=0),
        "db_limit": DB_LIMIT,
        "sampler": sampler.summary(),
        "wall_s": round(wall, 1),
        "report": str(write_report(out)),
    }


def failures(result: dict[str, Any], run_state: str, dbs: int, leftovers: list[int]) -> list[str]:
    """Return why the example failed, one sentence per reason; empty when it passed."""
    reasons = []
    if run_state != "success":
        reasons.append(f"the DAG run ended as {run_state}, expected success")
    if result["tasks"] != dbs:
        reasons.append(f"{result['tasks']} mapped tasks ran for {dbs} databases")
    if result["failed"] or result["succeeded"] != result["tasks"]:
        reasons.append(f"{result['succeeded']} of {result['tasks']} mapped tasks succeeded")
    for view in ("max_batch_connections_per_host", "max_running_per_host"):
        over = {host: n for host, n in result[view].items() if n > HOST_LIMIT}
        if over:
            reasons.append(f"{view} exceeds the host limit {HOST_LIMIT}: {over}")
    if result["max_running_per_db"] > DB_LIMIT:
        reasons.append(f"a database ran {result['max_running_per_db']} tasks at once")
    sampler_errors = {host: s["errors"] for host, s in result["sampler"].items() if s["errors"]}
    if sampler_errors:
        reasons.append(f"sampler queries failed, so its view has gaps: {sampler_errors}")
    if leftovers:
        reasons.append(f"Airflow processes still running after stop: {leftovers}")
    return reasons


def run_with_fleet(args: argparse.Namespace, fleet: PgFleet) -> int:
    """Run the job over a started fleet, print the summary and return the exit code."""
    workdir = args.workdir.resolve()
    out = workdir / "out"
    out.mkdir()
    ports_file = workdir / "ports.json"
    ports_file.write_text(json.dumps(fleet.ports, indent=2) + "\n", encoding="utf-8")
    config_path = workdir / "bistro.json"
    config = bistro_config(ports_file, out, args.hold_seconds)
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    log.info("Clusters: %s", json.dumps(fleet.summary()))

    env = stack_environment(config_path, args.worker_processes)
    stack = AirflowStack(workdir / "airflow", REPO_ROOT / "dags", env)
    log.info("Starting Airflow in %s on %s", stack.home, stack.base_url)
    sampler = ActivitySampler(fleet.ports)
    with stack:
        run_state, mapped, wall = run_dag(stack, sampler, args.timeout)
        leftovers = stack.stop()

    result = summarize(mapped, sampler, out, wall)
    reasons = failures(result, run_state, fleet.db_count, leftovers)
    for reason in reasons:
        log.error("FAILED: %s", reason)
    if reasons:
        log.error("Airflow logs: %s", stack.log_dir)
    print(json.dumps(result), flush=True)
    return 1 if reasons else 0


def run(args: argparse.Namespace) -> int:
    workdir = args.workdir.resolve()
    for name in ("out", "airflow"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    made_cluster_dir = args.cluster_dir is None
    cluster_dir = args.cluster_dir
    if cluster_dir is None:
        # A new directory under the system temporary directory, which the postgres OS
        # user can reach once PgFleet hands the directory over to it.
        cluster_dir = Path(tempfile.mkdtemp(prefix="bistro-pg-"))
    fleet = PgFleet(cluster_dir, args.clusters, min_dbs=args.min_dbs, max_dbs=args.max_dbs)
    try:
        fleet.start()
        return run_with_fleet(args, fleet)
    finally:
        fleet.stop()
        if made_cluster_dir:
            shutil.rmtree(cluster_dir, ignore_errors=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals so that a second Ctrl-C cannot cut the shutdown short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"received signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        log.error("Interrupted; Airflow and the clusters were stopped")
        return 130
    except ClusterError as exc:
        log.error("PostgreSQL clusters failed: %s", exc)
        return 1
    except StackError as exc:
        log.error("Airflow failed: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
