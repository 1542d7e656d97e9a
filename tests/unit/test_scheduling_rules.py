"""Admission rules taken from Bistro's own behaviour, on the two-host, four-database forest."""

from __future__ import annotations

import random
from typing import Any

import pytest

from bistro_provider.core.config import parse_config
from bistro_provider.core.model import Config
from bistro_provider.core.resources import Ledger, level_capacity
from bistro_provider.core.scheduler import admit_pass, plan_jobs
from bistro_provider.core.status import TaskStatus
from bistro_provider.nodes import fetch_forest

JOB1 = {"owner": "test", "priority": 10}
JOB2 = {"owner": "test", "priority": 1}
JOB3 = {"owner": "test", "priority": 100, "filters": {"db": {"whitelist": ["db12"]}}}


def make_config(policy: str, jobs: dict[str, dict[str, Any]]) -> Config:
    data: dict[str, Any] = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": policy,
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [
                    {
                        "source": "manual",
                        "prefs": {"host1": ["db11", "db12"], "host2": ["db21", "db22"]},
                    }
                ],
            },
            "resources": {
                "host": {"host_concurrency": {"limit": 2, "default": 1}},
                "db": {"db_concurrency": {"limit": 1, "default": 1}},
            },
        }
    }
    for name, job in jobs.items():
        data[f"bistro_job->{name}"] = job
    return parse_config(data)


def run_pass(
    config: Config,
    statuses: dict[tuple[str, str], TaskStatus] | None = None,
    ledger: Ledger | None = None,
    running: set[tuple[str, str]] | None = None,
) -> list[tuple[str, str]]:
    forest = fetch_forest(config.settings, now=0)
    ledger = ledger or Ledger(level_capacity(config.settings))
    rng = random.Random(1)
    jobs = plan_jobs(config, forest, statuses or {}, 0.0, rng, "config", running=running or set())
    result = admit_pass(config.settings, jobs, ledger, rng)
    return [(item.job, item.node) for item in result.started]


def test_round_robin_alternates_jobs():
    config = make_config("roundrobin", {"job1": JOB1, "job2": JOB2})
    assert run_pass(config) == [
        ("job1", "db22"),
        ("job2", "db21"),
        ("job1", "db12"),
        ("job2", "db11"),
    ]


def test_ranked_priority_fills_highest_first():
    config = make_config("ranked_priority", {"job1": JOB1, "job2": JOB2, "job3": JOB3})
    assert run_pass(config) == [
        ("job3", "db12"),
        ("job1", "db22"),
        ("job1", "db21"),
        ("job1", "db11"),
    ]


def test_long_tail_starts_shortest_job_first():
    config = make_config("long_tail", {"job1": JOB1, "job2": JOB2, "job3": JOB3})
    started = run_pass(config)
    assert started[0] == ("job3", "db12")
    rest = started[1:]
    assert [node for _job, node in rest] == ["db22", "db21", "db11"]
    assert len({job for job, _node in rest}) == 1


def test_dependent_job_waits_for_dependency():
    config = make_config(
        "ranked_priority", {"job1": {**JOB1, "depends_on": ["job2"]}, "job2": JOB2}
    )
    first = run_pass(config)
    assert sorted(first) == [("job2", "db11"), ("job2", "db12"), ("job2", "db21"), ("job2", "db22")]


def test_dependent_job_starts_where_dependency_done():
    config = make_config(
        "ranked_priority", {"job1": {**JOB1, "depends_on": ["job2"]}, "job2": JOB2}
    )
    ledger = Ledger(level_capacity(config.settings))
    ledger.force_acquire(
        ("job2", "db12"),
        {("host", "host1"): {"host_concurrency": 1}, ("db", "db12"): {"db_concurrency": 1}},
    )
    statuses = {("job2", "db11"): TaskStatus("done", 0.0)}
    started = run_pass(config, statuses, ledger, running={("job2", "db12")})
    assert sorted(started) == [("job1", "db11"), ("job2", "db21"), ("job2", "db22")]


def test_dependency_on_undefined_job_yields_no_task():
    config = make_config("roundrobin", {"job1": {**JOB1, "depends_on": ["nope"]}})
    assert run_pass(config) == []


def test_running_tasks_keep_what_they_hold_after_config_change():
    before = make_config("roundrobin", {"job1": JOB1})
    ledger = Ledger(level_capacity(before.settings))
    ledger.force_acquire(
        "t1", {("host", "host1"): {"host_concurrency": 2}, ("db", "db11"): {"db_concurrency": 1}}
    )
    after = make_config("roundrobin", {"job1": {**JOB1, "resources": {"host_concurrency": 1}}})
    ledger.capacity_of = level_capacity(after.settings)
    assert ledger.used(("host", "host1")) == {"host_concurrency": 2}
    started = run_pass(after, ledger=ledger)
    assert {node for _job, node in started} == {"db21", "db22"}


def test_lowered_limit_kills_nothing_and_admits_nothing_until_usage_drops():
    config = make_config("roundrobin", {"job1": JOB1})
    ledger = Ledger(level_capacity(config.settings))
    ledger.force_acquire("a", {("host", "host1"): {"host_concurrency": 1}})
    ledger.force_acquire("b", {("host", "host1"): {"host_concurrency": 1}})
    ledger.capacity_of = level_capacity(
        config.settings, overrides={("host", "host1"): {"host_concurrency": 1}}
    )
    blocker = ledger.first_blocker({("host", "host1"): {"host_concurrency": 0}})
    assert blocker is not None
    assert len(ledger) == 2
    ledger.release("a")
    assert ledger.first_blocker({("host", "host1"): {"host_concurrency": 1}}) is not None
    ledger.release("b")
    assert ledger.first_blocker({("host", "host1"): {"host_concurrency": 1}}) is None


@pytest.mark.parametrize("policy", ["roundrobin", "randomized_priority", "ranked_priority", "long_tail"])
def test_every_policy_respects_host_limit(policy):
    config = make_config(policy, {"job1": JOB1, "job2": JOB2, "job3": JOB3})
    started = run_pass(config)
    hosts = {"db11": "host1", "db12": "host1", "db21": "host2", "db22": "host2"}
    per_host = {"host1": 0, "host2": 0}
    per_db: dict[str, int] = {}
    for _job, node in started:
        per_host[hosts[node]] += 1
        per_db[node] = per_db.get(node, 0) + 1
    assert max(per_host.values()) <= 2
    assert max(per_db.values()) <= 1
    assert len(started) == 4
