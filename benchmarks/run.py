"""Admission benchmarks at Bistro scale; prints a table and writes benchmarks/results.json.

Run from the repository root with the project's virtualenv:

    .venv/bin/python benchmarks/run.py            # 1,000,000 leaves, several minutes
    .venv/bin/python benchmarks/run.py --quick    # 100,000 leaves, under a minute

Figures (full scale; --quick divides the hosts by ten):

* P1: one full admission pass (`IncrementalAdmitter.admit_all`) over 10,000 hosts x 100
  databases with 5 jobs, median of 3 runs, beside the brute-force reference pass
  (`plan_jobs` + `admit_pass`) on the same forest.
* P2: re-admission after one task ends (`task_ended` + `admit_affected`), median over
  1,000 endings, in the state that P1's pass left.
* P3: normalized throughput of the simulator for 10,000 hosts x 10 databases, host limit
  2, 5 jobs, durations uniform in [0, 2d], with the scheduler's CPU time charged to the
  simulated clock.
* P6: peak RSS (VmHWM) of a fresh process that builds the 1,000,000-leaf forest, a ledger
  and the admitter, and runs one full pass.

Both wall-clock and CPU (process) seconds are recorded, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bistro_provider.core.config import parse_config
from bistro_provider.core.forest import Forest
from bistro_provider.core.incremental import IncrementalAdmitter
from bistro_provider.core.model import Config
from bistro_provider.core.resources import Ledger, level_capacity
from bistro_provider.core.scheduler import TaskKey, admit_pass, plan_jobs
from bistro_provider.core.status import TaskStatus
from bistro_provider.nodes import fetch_forest
from bistro_provider.simulator import Mode, SimulationOptions, simulate

# The table lives next to this script, which runs as a file rather than as a package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_table import format_table  # noqa: E402

RESULTS_PATH = Path(__file__).with_name("results.json")
# Bistro's paper (USENIX ATC 2015, section 4), measured on 16-core 2.2 GHz Xeon hosts.
BISTRO_BRUTE_FORCE_1M_SECONDS = 10.0
BISTRO_300K_5_JOBS_SECONDS = 5.0
STRESS_MODES: tuple[Mode, ...] = ("incremental", "full")
_RUNNING = TaskStatus("running", 0.0)
_DONE = TaskStatus("done", 0.0)


@dataclass(frozen=True)
class Scale:
    """The sizes of one benchmark run."""

    hosts: int = 10_000
    dbs: int = 100
    jobs: int = 5
    runs: int = 3
    reference_runs: int = 1
    endings: int = 1_000
    mid_hosts: int = 3_000
    sim_hosts: int = 10_000
    sim_dbs: int = 10
    sim_duration: float = 300.0
    stress_duration: float = 5.0

    @classmethod
    def quick(cls) -> Scale:
        return cls(hosts=1_000, mid_hosts=300, sim_hosts=1_000, endings=300, stress_duration=0.5)


def db_iterator_config(hosts: int, dbs: int, jobs: int, host_limit: int = 2) -> Config:
    """Return the database-iterator shape: hosts under the instance, databases under hosts.

    Each host admits `host_limit` tasks and each database one; jobs have priorities 1..n.
    """
    host_format = {"parent_level": "instance", "start": 1, "end": hosts, "format": "host{i}"}
    db_format = {"parent_level": "host", "start": 1, "end": dbs, "format": "{parent}.db{i}"}
    data: dict[str, Any] = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": "ranked_priority",
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "random",
                "node_sources": [
                    {"source": "range_label", "prefs": host_format},
                    {"source": "range_label", "prefs": db_format},
                ],
            },
            "resources": {
                "host": {"host_concurrency": {"limit": host_limit, "default": 1}},
                "db": {"db_concurrency": {"limit": 1, "default": 1}},
            },
        }
    }
    for index in range(jobs):
        data[f"bistro_job->job{index}"] = {"owner": "benchmark", "priority": index + 1}
    return parse_config(data)


class Clock:
    """Wall and CPU seconds of the block it times."""

    def __enter__(self) -> Clock:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def median_of(samples: list[Clock]) -> dict[str, float]:
    return {
        "wall_seconds": statistics.median(sample.wall for sample in samples),
        "cpu_seconds": statistics.median(sample.cpu for sample in samples),
    }


# -- P1: full passes ----------------------------------------------------------------------------


def full_pass(config: Config, forest: Forest, runs: int) -> dict[str, Any]:
    """Build a fresh admitter `runs` times and time its first full pass (P1)."""
    builds, passes = [], []
    started = 0
    for run in range(runs):
        ledger = Ledger(level_capacity(config.settings))
        with Clock() as build:
            admitter = IncrementalAdmitter(config, forest, ledger, random.Random(run))
        with Clock() as one_pass:
            started = len(admitter.admit_all())
        builds.append(build)
        passes.append(one_pass)
        del admitter, ledger
        gc.collect()
    return {"pass": median_of(passes), "build": median_of(builds), "started": started}


def reference_pass(config: Config, forest: Forest, runs: int) -> dict[str, Any]:
    """Time `plan_jobs` + `admit_pass`, the brute-force pass, on a fresh ledger."""
    plans, admits = [], []
    for run in range(runs):
        ledger = Ledger(level_capacity(config.settings))
        rng = random.Random(run)
        with Clock() as plan:
            jobs = plan_jobs(config, forest, {}, 0.0, rng)
        with Clock() as admit:
            result = admit_pass(config.settings, jobs, ledger, rng)
        plans.append(plan)
        admits.append(admit)
        del jobs, result, ledger
        gc.collect()
    plan_time, admit_time = median_of(plans), median_of(admits)
    total = {key: plan_time[key] + admit_time[key] for key in plan_time}
    return {"pass": total, "plan": plan_time, "admit": admit_time}


# -- P2: incremental re-admission ---------------------------------------------------------------


def incremental(config: Config, forest: Forest, endings: int, seed: int = 0) -> dict[str, Any]:
    """End random running tasks one at a time and time each re-admission (P2).

    Also times full passes in the same state after an ending, for a like-for-like ratio.
    """
    ledger = Ledger(level_capacity(config.settings))
    admitter = IncrementalAdmitter(config, forest, ledger, random.Random(seed))
    statuses: dict[TaskKey, TaskStatus] = {}
    running = _record(admitter.admit_all(), statuses, [])
    rng = random.Random(seed)
    samples = [_end_one(admitter, statuses, running, rng) for _ in range(endings)]
    full_after_end = []
    for _ in range(3):
        _end_one(admitter, statuses, running, rng, admit=False)
        with Clock() as clock:
            _record(admitter.admit_all(), statuses, running)
        full_after_end.append(clock)
    walls = sorted(sample.wall for sample in samples)
    return {
        "median": median_of(samples),
        "p95_wall_seconds": walls[int(0.95 * (len(walls) - 1))],
        "max_wall_seconds": walls[-1],
        "endings": len(samples),
        "full_pass_after_one_ending": median_of(full_after_end),
    }


def _record(
    started: list[Any], statuses: dict[TaskKey, TaskStatus], running: list[TaskKey]
) -> list[TaskKey]:
    for admission in started:
        key = (admission.job, admission.node)
        statuses[key] = _RUNNING
        running.append(key)
    return running


def _end_one(
    admitter: IncrementalAdmitter,
    statuses: dict[TaskKey, TaskStatus],
    running: list[TaskKey],
    rng: random.Random,
    admit: bool = True,
) -> Clock:
    """End one random running task as done; return the time its handling took."""
    index = rng.randrange(len(running))
    key = running[index]
    running[index] = running[-1]
    running.pop()
    statuses[key] = _DONE
    with Clock() as clock:
        admitter.task_ended(key[0], key[1], statuses, 0.0)
        started = admitter.admit_affected() if admit else []
    _record(started, statuses, running)
    return clock


# -- P3: simulated throughput -------------------------------------------------------------------


def throughput(scale: Scale, duration: float, mode: Mode = "incremental") -> dict[str, Any]:
    """Simulate the database-iterator shape with the scheduler's time charged (P3)."""
    config = db_iterator_config(scale.sim_hosts, scale.sim_dbs, scale.jobs)
    options = SimulationOptions(
        duration_mean=duration,
        seed=1,
        mode=mode,
        charge_pass_time=True,
    )
    report = simulate(config, options).to_json()
    report["duration_mean"] = duration
    return report


# -- P6: memory -----------------------------------------------------------------------------------


def memory(hosts: int, dbs: int, jobs: int) -> dict[str, Any]:
    """Run the memory probe in a fresh interpreter and return what it measured (P6)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-probe"]
    command += [str(hosts), str(dbs), str(jobs)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(output.stdout)


def proc_status_kib(field: str) -> int:
    """Return a `VmHWM`-style field of /proc/self/status in KiB (0 where it is missing)."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def memory_probe(hosts: int, dbs: int, jobs: int) -> dict[str, Any]:
    """Build forest, ledger and admitter, run one pass, and report peak memory."""
    config = db_iterator_config(hosts, dbs, jobs)
    baseline = proc_status_kib("VmHWM")
    forest = fetch_forest(config.settings, now=0)
    after_forest = proc_status_kib("VmRSS")
    ledger = Ledger(level_capacity(config.settings))
    admitter = IncrementalAdmitter(config, forest, ledger, random.Random(0))
    started = len(admitter.admit_all())
    peak = proc_status_kib("VmHWM")
    return {
        "nodes": len(forest),
        "started": started,
        "baseline_kib": baseline,
        "forest_rss_kib": after_forest,
        "peak_kib": peak,
        "peak_bytes_per_node": (peak - baseline) * 1024 / len(forest),
    }


def traced_bytes_per_node(hosts: int, dbs: int, jobs: int) -> dict[str, float]:
    """Measure with tracemalloc what the forest and the admitter allocate per node."""
    config = db_iterator_config(hosts, dbs, jobs)
    tracemalloc.start()
    forest = fetch_forest(config.settings, now=0)
    forest_bytes = tracemalloc.get_traced_memory()[0]
    ledger = Ledger(level_capacity(config.settings))
    admitter = IncrementalAdmitter(config, forest, ledger, random.Random(0))
    total_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    nodes = len(forest)
    estimate = sizeof_estimate(forest)
    del admitter
    return {
        "nodes": nodes,
        "forest_bytes_per_node": forest_bytes / nodes,
        "admitter_bytes_per_node": (total_bytes - forest_bytes) / nodes,
        "sizeof_forest_bytes_per_node": estimate,
    }


def sizeof_estimate(forest: Forest) -> float:
    """Estimate a leaf's bytes from sys.getsizeof: its node, its name, and its share of the
    level list and the name index."""
    level = len(forest.levels) - 2
    nodes = forest.nodes(level)
    sample = nodes[len(nodes) // 2]
    index_share = sys.getsizeof(forest._by_name[level]) / len(nodes)
    return sys.getsizeof(sample) + sys.getsizeof(sample.name) + 8 + index_share


# -- the whole run --------------------------------------------------------------------------------


def run_all(scale: Scale, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every figure at `scale` and return them with the machine description."""
    results: dict[str, Any] = {"scale": asdict(scale), "machine": machine()}
    results["bistro_paper_seconds"] = {
        "brute_force_pass_1m_nodes": BISTRO_BRUTE_FORCE_1M_SECONDS,
        "pass_300k_nodes_5_jobs": BISTRO_300K_5_JOBS_SECONDS,
    }
    config = db_iterator_config(scale.hosts, scale.dbs, scale.jobs)
    progress(f"building {scale.hosts} x {scale.dbs} forest")
    forest = fetch_forest(config.settings, now=0)
    # The forest lives for the whole run; freezing it keeps the garbage collector from
    # walking a million nodes during the timed passes.
    gc.freeze()
    progress("P1 full pass")
    results["p1_full_pass"] = full_pass(config, forest, scale.runs)
    progress("P1 reference brute-force pass")
    results["p1_reference_pass"] = reference_pass(config, forest, scale.reference_runs)
    progress("P2 incremental re-admission")
    results["p2_incremental"] = incremental(config, forest, scale.endings)
    del forest
    gc.unfreeze()
    gc.collect()
    results["p1_mid_scale"] = mid_scale(scale, progress)
    progress("P3 simulator throughput")
    results["p3_throughput"] = throughput(scale, scale.sim_duration)
    results["p3_stress"] = {
        mode: throughput(scale, scale.stress_duration, mode) for mode in STRESS_MODES
    }
    progress("P6 memory")
    results["p6_memory"] = memory(scale.hosts, scale.dbs, scale.jobs)
    results["memory_per_node"] = traced_bytes_per_node(max(scale.hosts // 10, 10), scale.dbs, 1)
    results["machine"]["load_average_after"] = os.getloadavg()
    return results


def mid_scale(scale: Scale, progress: Callable[[str], None]) -> dict[str, Any]:
    """Full and reference passes at 300,000 leaves and 5 jobs, Bistro's second figure."""
    progress(f"P1 at {scale.mid_hosts * scale.dbs} leaves")
    config = db_iterator_config(scale.mid_hosts, scale.dbs, scale.jobs)
    forest = fetch_forest(config.settings, now=0)
    return {
        "leaves": scale.mid_hosts * scale.dbs,
        "full_pass": full_pass(config, forest, 1),
        "reference_pass": reference_pass(config, forest, 1),
    }


def machine() -> dict[str, Any]:
    """Describe the machine: CPU model, cores, memory and load when the run starts."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    free = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "free_h": free.strip(),
        "python": platform.python_version(),
        "load_average_before": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 leaves instead of 1,000,000")
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON results file; default benchmarks/results.json (results-quick.json with --quick)",
    )
    parser.add_argument(
        "--memory-probe",
        nargs=3,
        type=int,
        metavar=("HOSTS", "DBS", "JOBS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args(argv)
    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe)))
        return 0
    scale = Scale.quick() if args.quick else Scale()
    results = run_all(scale, progress=lambda message: print(f"... {message}", file=sys.stderr))
    output = args.output or RESULTS_PATH.with_name(
        "results-quick.json" if args.quick else "results.json"
    )
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"\nresults written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
