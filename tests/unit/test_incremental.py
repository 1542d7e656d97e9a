"""IncrementalAdmitter decides as plan_jobs + admit_pass do, over random scenarios.

Each scenario builds a random forest, resources and jobs, then alternates passes with
rounds that end random running tasks (done, failed, retried), and sometimes disable or
enable a host. The reference side plans and admits from scratch each round; the
incremental side reports the same events to one admitter. Both sides share the forest, so
a disabled node is disabled for both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from bistro_provider.core.config import parse_config
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.incremental import IncrementalAdmitter
from bistro_provider.core.model import Config
from bistro_provider.core.policies import StartResult
from bistro_provider.core.resources import Ledger, PathCheck, level_capacity
from bistro_provider.core.scheduler import Admission, Candidate, TaskKey, admit_pass, plan_jobs
from bistro_provider.core.status import TaskStatus
from bistro_provider.nodes import fetch_forest

EXACT_POLICIES = ("ranked_priority", "long_tail", "roundrobin")
SEEDS = range(12)
OUTCOMES = ("done", "done", "incomplete", "failed", "error_backoff")


# --- scenarios ------------------------------------------------------------------------------


def random_nodes(rng: random.Random, racks: bool) -> tuple[dict[str, Any], list[str]]:
    """Return manual-source prefs and the host names: hosts with databases, maybe replicas."""
    prefs: dict[str, Any] = {}
    hosts = [f"h{index}" for index in range(rng.randint(2, 5))]
    for host in hosts:
        children = [f"{host}.d{index}" for index in range(rng.randint(1, 4))]
        if rng.random() < 0.15:
            prefs[host] = {"children": children, "disabled": True}
        else:
            prefs[host] = children
    if rng.random() < 0.3:
        # A replica: one database name under two hosts.
        for host in rng.sample(hosts, 2):
            entry = prefs[host]
            (entry["children"] if isinstance(entry, dict) else entry).append("shared")
    if racks:
        middle = len(hosts) // 2
        prefs = {"r1": hosts[:middle], "r2": hosts[middle:], **prefs}
    return prefs, hosts


def random_resources(rng: random.Random, racks: bool) -> dict[str, Any]:
    resources: dict[str, Any] = {
        "host": {"host_concurrency": {"limit": rng.randint(1, 3), "default": 1}},
        "db": {"db_concurrency": {"limit": 1, "default": 1}},
    }
    if rng.random() < 0.4:
        resources["host"]["memory"] = {"limit": 4, "default": rng.randint(1, 2)}
    if rng.random() < 0.4:
        resources["instance"] = {"global": {"limit": rng.randint(1, 3), "default": 0}}
    if racks and rng.random() < 0.6:
        resources["rack"] = {"rack_slots": {"limit": rng.randint(1, 2), "default": 1}}
    return resources


def random_job(rng: random.Random, index: int, hosts: list[str], global_: bool) -> dict[str, Any]:
    job: dict[str, Any] = {"owner": "test", "priority": rng.randint(1, 3)}
    if global_ and rng.random() < 0.5:
        job["resources"] = {"global": 1}
    elif rng.random() < 0.2:
        job["resources"] = {"host_concurrency": rng.choice([0, 2])}
    if rng.random() < 0.25:
        job["filters"] = {"host": {"blacklist": [rng.choice(hosts)]}}
    elif rng.random() < 0.2:
        job["filters"] = {"db": {"whitelist_regex": "d[01]$"}}
    if index and rng.random() < 0.25:
        job["depends_on"] = [f"job{rng.randrange(index)}"]
    if rng.random() < 0.1:
        job["level_for_tasks"] = "host"
    return job


def random_config(seed: int, policy: str, node_order: str) -> Config:
    rng = random.Random(seed)
    racks = rng.random() < 0.4
    prefs, hosts = random_nodes(rng, racks)
    resources = random_resources(rng, racks)
    levels = ["rack", "host", "db"] if racks else ["host", "db"]
    data: dict[str, Any] = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": policy,
            "nodes": {
                "levels": levels,
                "node_order": node_order,
                "node_sources": [{"source": "manual", "prefs": prefs}],
            },
            "resources": resources,
        }
    }
    for index in range(rng.randint(2, 4)):
        data[f"bistro_job->job{index}"] = random_job(rng, index, hosts, "instance" in resources)
    return parse_config(data)


# --- the two sides --------------------------------------------------------------------------


@dataclass
class Side:
    """One admission history: its ledger, statuses and running tasks."""

    config: Config
    forest: Forest
    ledger: Ledger
    statuses: dict[TaskKey, TaskStatus] = field(default_factory=dict)
    running: set[TaskKey] = field(default_factory=set)

    def record(self, started: list[Admission]) -> list[TaskKey]:
        keys = [(item.job, item.node) for item in started]
        for key in keys:
            self.running.add(key)
            self.statuses[key] = TaskStatus("running", 0.0)
        return keys

    def end(self, key: TaskKey, outcome: str) -> None:
        self.running.discard(key)
        self.statuses[key] = TaskStatus(outcome, 0.0)


def new_side(config: Config, forest: Forest) -> Side:
    return Side(config, forest, Ledger(level_capacity(config.settings)))


def reference_pass(side: Side, seed: int, **kwargs: Any) -> list[TaskKey]:
    rng = random.Random(seed)
    jobs = plan_jobs(
        side.config, side.forest, side.statuses, 0.0, rng, "config", running=set(side.running)
    )
    result = admit_pass(side.config.settings, jobs, side.ledger, rng, **kwargs)
    return side.record(result.started)


def end_some(side: Side, rng: random.Random, admitter: IncrementalAdmitter | None) -> None:
    """End 0-3 running tasks with random outcomes; report them to `admitter` if given."""
    ending = rng.sample(sorted(side.running), min(len(side.running), rng.randint(0, 3)))
    for key in ending:
        side.end(key, rng.choice(OUTCOMES))
        if admitter is None:
            side.ledger.release(key)
    for key in ending:
        if admitter is not None:
            admitter.task_ended(key[0], key[1], side.statuses, 0.0)


def toggle_host(forest: Forest, rng: random.Random, admitter: IncrementalAdmitter) -> None:
    """Sometimes flip one host's enabled flag, through the admitter (which sets it)."""
    if rng.random() < 0.3:
        host: Node = rng.choice(forest.nodes("host"))
        admitter.set_enabled(host, not host.enabled)


def fitting_candidates(side: Side) -> list[TaskKey]:
    """Return every candidate by Bistro's rules whose path has room now (should be none)."""
    jobs = plan_jobs(
        side.config, side.forest, side.statuses, 0.0, random.Random(0), "config", set(side.running)
    )
    check = PathCheck(side.config.settings, side.ledger)
    return [
        (entry.job.name, candidate.node)
        for entry in jobs
        for candidate in entry.candidates
        if any(check.blocker(entry.job, node) is None for node in candidate.replicas)
    ]


def candidate_mismatches(side: Side, admitter: IncrementalAdmitter) -> list[TaskKey]:
    """Return tasks where the admitter's candidate set differs from plan_jobs'."""
    jobs = plan_jobs(
        side.config, side.forest, side.statuses, 0.0, random.Random(0), "config", set(side.running)
    )
    expected = {(entry.job.name, c.node) for entry in jobs for c in entry.candidates}
    settings = side.config.settings
    mismatches = []
    for job in side.config.jobs.values():
        level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
        for name in side.forest.distinct_names(level):
            if admitter.is_candidate(job.name, name) != ((job.name, name) in expected):
                mismatches.append((job.name, name))
    return mismatches


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("node_order", ["lexicographic", "original"])
@pytest.mark.parametrize("policy", EXACT_POLICIES)
@pytest.mark.parametrize("seed", SEEDS)
def test_incremental_starts_match_full_pass(seed: int, policy: str, node_order: str) -> None:
    config = random_config(seed, policy, node_order)
    forest = fetch_forest(config.settings, now=0)
    reference, incremental = new_side(config, forest), new_side(config, forest)
    admitter = IncrementalAdmitter(
        config, forest, incremental.ledger, random.Random(seed), job_order="config"
    )
    events = random.Random(seed + 1000)
    for round_number in range(10):
        expected = reference_pass(reference, round_number)
        started = admitter.admit_all() if round_number == 0 else admitter.admit_affected()
        assert incremental.record(started) == expected, f"round {round_number}"
        assert candidate_mismatches(incremental, admitter) == [], f"round {round_number}"
        state = events.getstate()
        end_some(reference, events, None)
        events.setstate(state)
        end_some(incremental, events, admitter)
        toggle_host(forest, events, admitter)


@pytest.mark.parametrize("policy", [*EXACT_POLICIES, "randomized_priority"])
@pytest.mark.parametrize("seed", SEEDS)
def test_incremental_pass_leaves_no_fitting_candidate(seed: int, policy: str) -> None:
    config = random_config(seed, policy, "lexicographic")
    forest = fetch_forest(config.settings, now=0)
    side = new_side(config, forest)
    admitter = IncrementalAdmitter(config, forest, side.ledger, random.Random(seed))
    events = random.Random(seed)
    for round_number in range(10):
        started = admitter.admit_all() if round_number == 0 else admitter.admit_affected()
        side.record(started)
        assert fitting_candidates(side) == [], f"round {round_number}"
        assert candidate_mismatches(side, admitter) == [], f"round {round_number}"
        end_some(side, events, admitter)
        toggle_host(forest, events, admitter)


@pytest.mark.parametrize("seed", SEEDS)
def test_randomized_priority_starts_only_candidates_that_fit(seed: int) -> None:
    config = random_config(seed, "randomized_priority", "lexicographic")
    forest = fetch_forest(config.settings, now=0)
    reference, incremental = new_side(config, forest), new_side(config, forest)
    admitter = IncrementalAdmitter(config, forest, incremental.ledger, random.Random(seed))
    reference_events, incremental_events = random.Random(seed), random.Random(seed)
    for round_number in range(10):
        reference_pass(reference, round_number)
        started = admitter.admit_all() if round_number == 0 else admitter.admit_affected()
        keys = incremental.record(started)
        assert len(keys) == len(set(keys)), f"round {round_number}: a task started twice"
        assert fitting_candidates(reference) == [], f"round {round_number}: reference"
        assert fitting_candidates(incremental) == [], f"round {round_number}: incremental"
        end_some(reference, reference_events, None)
        end_some(incremental, incremental_events, admitter)


def test_randomized_first_pass_matches_reference() -> None:
    """With nothing running yet, both passes see every job and draw the same jobs."""
    for seed in SEEDS:
        config = random_config(seed, "randomized_priority", "lexicographic")
        forest = fetch_forest(config.settings, now=0)
        reference, incremental = new_side(config, forest), new_side(config, forest)
        expected = reference_pass(reference, seed)
        admitter = IncrementalAdmitter(
            config, forest, incremental.ledger, random.Random(seed), job_order="config"
        )
        assert incremental.record(admitter.admit_all()) == expected, f"seed {seed}"


def budget_hook(slots: list[int]) -> Any:
    """Return a start hook that runs tasks while `slots[0]` is positive, then stops."""

    def hook(job: Any, candidate: Candidate, node: Node, needs: Any) -> StartResult:
        if slots[0] <= 0:
            return StartResult.STOP
        slots[0] -= 1
        return StartResult.RAN

    return hook


@pytest.mark.parametrize("seed", SEEDS)
def test_stopped_pass_resumes_like_full_pass(seed: int) -> None:
    config = random_config(seed, "ranked_priority", "lexicographic")
    forest = fetch_forest(config.settings, now=0)
    reference, incremental = new_side(config, forest), new_side(config, forest)
    slots = [0]
    admitter = IncrementalAdmitter(
        config,
        forest,
        incremental.ledger,
        random.Random(seed),
        job_order="config",
        start_hook=budget_hook(slots),
    )
    for round_number in range(4):
        slots[0] = 2
        expected = reference_pass(reference, round_number, start_hook=budget_hook([2]))
        started = admitter.admit_all() if round_number == 0 else admitter.admit_affected()
        assert incremental.record(started) == expected, f"round {round_number}"


def test_disabled_host_parks_its_candidates() -> None:
    config = random_config(3, "ranked_priority", "lexicographic")
    forest = fetch_forest(config.settings, now=0)
    side = new_side(config, forest)
    admitter = IncrementalAdmitter(config, forest, side.ledger, random.Random(0))
    host = next(node for node in forest.nodes("host") if node.enabled)
    db = next(node for node in forest.nodes("db") if node.parent is host and node.name != "shared")
    job = next(name for name in config.jobs if admitter.is_candidate(name, db.name))
    admitter.set_enabled(host, False)
    assert not admitter.is_candidate(job, db.name)
    admitter.set_enabled(host, True)
    assert admitter.is_candidate(job, db.name)


def test_released_task_unblocks_waiting_candidate_on_its_host() -> None:
    data = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": "ranked_priority",
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [{"source": "manual", "prefs": {"h1": ["d1", "d2"]}}],
            },
            "resources": {"host": {"slots": {"limit": 1, "default": 1}}},
        },
        "bistro_job->a": {"owner": "test"},
    }
    config = parse_config(data)
    forest = fetch_forest(config.settings, now=0)
    side = new_side(config, forest)
    admitter = IncrementalAdmitter(config, forest, side.ledger, random.Random(0))
    first = side.record(admitter.admit_all())
    assert first == [("a", "d2")]
    assert admitter.waiting_reason("a", "d1") == "waiting for host 'h1': slots needs 1, 1/1 in use"
    side.end(("a", "d2"), "done")
    admitter.task_ended("a", "d2", side.statuses, 0.0)
    assert side.record(admitter.admit_affected()) == [("a", "d1")]


def worker_config() -> Config:
    """Three hosts of two databases, and one worker slot that every task also needs."""
    prefs = {f"h{host}": [f"h{host}.d{db}" for db in range(2)] for host in range(3)}
    data = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": "ranked_priority",
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [{"source": "manual", "prefs": prefs}],
            },
            "resources": {
                "host": {"host_concurrency": {"limit": 1, "default": 1}},
                "worker": {"slots": {"limit": 2, "default": 1}},
            },
        },
        "bistro_job->a": {"owner": "test", "priority": 2},
        "bistro_job->b": {"owner": "test", "priority": 1},
    }
    return parse_config(data)


def one_worker(job: Any, candidate: Candidate, node: Node) -> dict[tuple[str, str], Any]:
    return {("worker", "w1"): {"slots": 1}}


def test_released_worker_slot_rescans_every_host() -> None:
    config = worker_config()
    forest = fetch_forest(config.settings, now=0)
    reference, incremental = new_side(config, forest), new_side(config, forest)
    admitter = IncrementalAdmitter(
        config,
        forest,
        incremental.ledger,
        random.Random(0),
        job_order="config",
        extra_needs=one_worker,
    )
    events = random.Random(7)
    for round_number in range(8):
        expected = reference_pass(reference, round_number, extra_needs=one_worker)
        started = admitter.admit_all() if round_number == 0 else admitter.admit_affected()
        assert incremental.record(started) == expected, f"round {round_number}"
        assert len(incremental.running) <= 2, f"round {round_number}: worker over its limit"
        state = events.getstate()
        end_some(reference, events, None)
        events.setstate(state)
        end_some(incremental, events, admitter)
