"""Admission with several resources and levels, run over many passes of a small event loop.

Each simulation plans a pass, admits what fits, then ends the oldest running tasks and
plans again, until nothing is left to start. A recording ledger keeps a snapshot of every
grant and release, so the limits are checked at every change of the ledger and not only
between passes.
"""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest

from bistro_provider.core.config import parse_config
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import POLICIES, Config
from bistro_provider.core.resources import (
    CapacityFn,
    Holdings,
    Ledger,
    NodeKey,
    level_capacity,
)
from bistro_provider.core.scheduler import PassResult, TaskKey, admit_pass, plan_jobs
from bistro_provider.core.status import TaskStatus
from bistro_provider.nodes import fetch_forest

INSTANCE = ("instance", "instance")


@dataclass(frozen=True)
class LedgerEvent:
    """One grant or release, with the ledger's state right after it."""

    kind: str
    holder: Hashable
    holdings: Holdings
    usage: dict[NodeKey, dict[str, int]]
    holders: frozenset[Hashable]


class RecordingLedger(Ledger):
    """A ledger that records a snapshot after every grant and release."""

    def __init__(self, capacity_of: CapacityFn):
        super().__init__(capacity_of)
        self.events: list[LedgerEvent] = []

    def force_acquire(self, holder: Hashable, holdings: Holdings) -> None:
        super().force_acquire(holder, holdings)
        self._record("grant", holder, holdings)

    def release(self, holder: Hashable) -> Holdings | None:
        holdings = super().release(holder)
        if holdings is not None:
            self._record("release", holder, holdings)
        return holdings

    def _record(self, kind: str, holder: Hashable, holdings: Holdings) -> None:
        snapshot = LedgerEvent(kind, holder, holdings, self.usage(), frozenset(self.holders()))
        self.events.append(snapshot)


@dataclass
class Trace:
    """Everything a simulation did: each pass, and the order tasks started and ended."""

    forest: Forest
    ledger: RecordingLedger
    passes: list[PassResult] = field(default_factory=list)
    started: list[TaskKey] = field(default_factory=list)
    ended: list[TaskKey] = field(default_factory=list)
    holders_after_pass: list[frozenset[Hashable]] = field(default_factory=list)
    running_after_pass: list[frozenset[TaskKey]] = field(default_factory=list)


def simulate(config: Config, *, ends_per_step: int, max_steps: int = 200) -> Trace:
    """Run passes until nothing runs and nothing more starts, ending the oldest tasks
    between passes."""
    forest = fetch_forest(config.settings, now=0)
    ledger = RecordingLedger(level_capacity(config.settings))
    trace = Trace(forest, ledger)
    statuses: dict[TaskKey, TaskStatus] = {}
    running: list[TaskKey] = []
    for step in range(max_steps):
        rng = random.Random(step)
        jobs = plan_jobs(config, forest, statuses, 0.0, rng, "config", running=set(running))
        result = admit_pass(config.settings, jobs, ledger, rng)
        trace.passes.append(result)
        started = [(item.job, item.node) for item in result.started]
        trace.started.extend(started)
        running.extend(started)
        trace.holders_after_pass.append(frozenset(ledger.holders()))
        trace.running_after_pass.append(frozenset(running))
        if not running:
            return trace
        for key in running[:ends_per_step]:
            ledger.release(key)
            statuses[key] = TaskStatus("done", 0.0)
            trace.ended.append(key)
        del running[:ends_per_step]
    raise AssertionError(f"simulation did not finish within {max_steps} passes")


def make_config(
    levels: list[str],
    sources: list[dict[str, Any]],
    resources: dict[str, Any],
    jobs: dict[str, dict[str, Any]],
    policy: str = "roundrobin",
) -> Config:
    data: dict[str, Any] = {
        "bistro_settings": {
            "enabled": True,
            "scheduler": policy,
            "nodes": {"levels": levels, "node_order": "lexicographic", "node_sources": sources},
            "resources": resources,
        }
    }
    for name, job in jobs.items():
        data[f"bistro_job->{name}"] = {"owner": "test", **job}
    return parse_config(data)


def shard_names(first: int, last: int) -> list[str]:
    return [f"shard{i}" for i in range(first, last + 1)]


def two_resource_config(policy: str) -> Config:
    """Forty shards under the instance; A (limit 4) and B (limit 16) live on the instance.

    Shards 10-19 run job `both` (A and B), 20-29 job `a_only`, 30-49 job `b_only`. With the
    priority policies `b_only` goes first, so `both` finds A free and B full.
    """
    prefs = {"parent_level": "instance", "start": 10, "end": 49, "format": "shard{i}"}
    resources = {
        "instance": {"A": {"limit": 4, "default": 0}, "B": {"limit": 16, "default": 0}},
    }
    jobs = {
        "both": {
            "priority": 2,
            "resources": {"A": 1, "B": 1},
            "filters": {"shard": {"whitelist": shard_names(10, 19)}},
        },
        "a_only": {
            "priority": 1,
            "resources": {"A": 1},
            "filters": {"shard": {"whitelist": shard_names(20, 29)}},
        },
        "b_only": {
            "priority": 3,
            "resources": {"B": 1},
            "filters": {"shard": {"whitelist": shard_names(30, 49)}},
        },
    }
    shards = {"source": "range_label", "prefs": prefs}
    return make_config(["shard"], [shards], resources, jobs, policy)


def hosts_config(
    hosts: dict[str, list[str]], host_limit: int, job: dict[str, Any], db_limit: int = 1
) -> Config:
    resources = {
        "host": {"host_slots": {"limit": host_limit, "default": 1}},
        "db": {"db_slots": {"limit": db_limit, "default": 1}},
    }
    source = {"source": "manual", "prefs": hosts}
    return make_config(["host", "db"], [source], resources, {"job": job})


ALL_POLICIES = [pytest.param(policy, id=policy) for policy in POLICIES]


# --- two resources on the instance -----------------------------------------------------


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_two_resources_never_exceed_limits(policy: str) -> None:
    trace = simulate(two_resource_config(policy), ends_per_step=3)
    peak_a = max(event.usage.get(INSTANCE, {}).get("A", 0) for event in trace.ledger.events)
    peak_b = max(event.usage.get(INSTANCE, {}).get("B", 0) for event in trace.ledger.events)
    assert peak_a <= 4
    assert peak_b <= 16
    assert peak_a == 4, "the simulation never filled A, so the limit was not exercised"
    assert peak_b == 16, "the simulation never filled B, so the limit was not exercised"


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_two_resources_every_task_runs_once(policy: str) -> None:
    trace = simulate(two_resource_config(policy), ends_per_step=3)
    jobs = [job for job, _node in trace.started]
    assert len(trace.started) == 40
    assert len(set(trace.started)) == 40
    assert jobs.count("both") == 10
    assert jobs.count("a_only") == 10
    assert jobs.count("b_only") == 20


@pytest.mark.parametrize("policy", ALL_POLICIES)
def test_two_resources_waiting_tasks_hold_nothing(policy: str) -> None:
    trace = simulate(two_resource_config(policy), ends_per_step=3)
    for number, result in enumerate(trace.passes):
        holders = trace.holders_after_pass[number]
        assert holders == trace.running_after_pass[number], f"pass {number}"
        for key in result.waiting:
            assert key not in holders, f"pass {number}: waiting task {key} holds resources"
    for event in trace.ledger.events:
        assert event.holders <= set(trace.started), f"{event.kind} of {event.holder}"


def test_waiting_for_b_holds_no_a() -> None:
    trace = simulate(two_resource_config("ranked_priority"), ends_per_step=3)
    waits_for_b = [
        (number, key)
        for number, result in enumerate(trace.passes)
        for key, blocker in result.blockers.items()
        if key[0] == "both" and blocker.resource == "B"
    ]
    assert waits_for_b, "no task of job 'both' ever waited for B alone"
    for number, key in waits_for_b:
        assert key not in trace.holders_after_pass[number]
        assert "B needs 1, 16/16 in use" in trace.passes[number].waiting[key]


def test_unnamed_resource_takes_zero() -> None:
    trace = simulate(two_resource_config("roundrobin"), ends_per_step=3)
    grants = [event for event in trace.ledger.events if event.kind == "grant"]
    by_job = {event.holder[0]: event.holdings[INSTANCE] for event in grants}
    assert by_job["both"] == {"A": 1, "B": 1}
    assert by_job["a_only"] == {"A": 1, "B": 0}
    assert by_job["b_only"] == {"A": 0, "B": 1}


# --- one host, large tasks -------------------------------------------------------------


def large_tasks_config() -> Config:
    dbs = [f"db{i}" for i in range(1, 10)]
    return hosts_config({"host1": dbs}, 6, {"resources": {"host_slots": 3}})


def test_large_tasks_at_most_two_at_once() -> None:
    trace = simulate(large_tasks_config(), ends_per_step=1)
    peak = max(len(event.holders) for event in trace.ledger.events)
    assert peak == 2
    assert len(set(trace.started)) == 9


def test_large_tasks_free_capacity_never_negative() -> None:
    trace = simulate(large_tasks_config(), ends_per_step=1)
    for event in trace.ledger.events:
        used = event.usage.get(("host", "host1"), {}).get("host_slots", 0)
        assert 6 - used >= 0, f"after {event.kind} of {event.holder}"
        assert used % 3 == 0, f"after {event.kind} of {event.holder}"


# --- three hosts of five databases ------------------------------------------------------


def three_hosts_config() -> Config:
    hosts = {f"host{h}": [f"db{h}{d}" for d in range(1, 6)] for h in range(1, 4)}
    return hosts_config(hosts, 2, {})


def test_three_hosts_never_more_than_two_per_host() -> None:
    trace = simulate(three_hosts_config(), ends_per_step=2)
    for event in trace.ledger.events:
        for host in ("host1", "host2", "host3"):
            used = event.usage.get(("host", host), {}).get("host_slots", 0)
            assert used <= 2, f"{host} after {event.kind} of {event.holder}"


def test_three_hosts_peak_is_six() -> None:
    trace = simulate(three_hosts_config(), ends_per_step=2)
    assert max(len(event.holders) for event in trace.ledger.events) == 6


def test_three_hosts_all_fifteen_run() -> None:
    trace = simulate(three_hosts_config(), ends_per_step=2)
    assert len(trace.started) == 15
    assert len(set(trace.started)) == 15


# --- replicas ---------------------------------------------------------------------------


def replica_config() -> Config:
    return hosts_config({"host1": ["db1", "shared"], "host2": ["shared"]}, 1, {})


def one_pass(config: Config, ledger: Ledger) -> PassResult:
    forest = fetch_forest(config.settings, now=0)
    rng = random.Random(1)
    jobs = plan_jobs(config, forest, {}, 0.0, rng, "config")
    return admit_pass(config.settings, jobs, ledger, rng)


def test_replicas_form_one_task() -> None:
    config = replica_config()
    forest = fetch_forest(config.settings, now=0)
    jobs = plan_jobs(config, forest, {}, 0.0, random.Random(1), "config")
    names = [candidate.node for candidate in jobs[0].candidates]
    assert sorted(names) == ["db1", "shared"]
    shared = next(c for c in jobs[0].candidates if c.node == "shared")
    assert [node.parent.name for node in shared.replicas if node.parent] == ["host1", "host2"]


def test_replica_uses_second_host_when_full() -> None:
    config = replica_config()
    ledger = Ledger(level_capacity(config.settings))
    ledger.force_acquire("busy", {("host", "host1"): {"host_slots": 1}})
    result = one_pass(config, ledger)
    started = [(item.job, item.node, item.path) for item in result.started]
    assert started == [("job", "shared", ("instance", "host2", "shared"))]
    assert ledger.used(("host", "host2")) == {"host_slots": 1}
    assert ledger.used(("host", "host1")) == {"host_slots": 1}


def test_replica_task_starts_once() -> None:
    config = replica_config()
    ledger = Ledger(level_capacity(config.settings))
    result = one_pass(config, ledger)
    shared = [item for item in result.started if item.node == "shared"]
    assert len(shared) == 1
    assert ledger.used(("db", "shared")) == {"db_slots": 1}


# --- the ledger itself ------------------------------------------------------------------


def small_ledger() -> Ledger:
    limits = {("host", "h1"): {"cpu": 4}, ("db", "d1"): {"conn": 1}}
    return Ledger(lambda key: limits.get(key, {}))


def test_try_acquire_is_all_or_nothing() -> None:
    ledger = small_ledger()
    needs = {("host", "h1"): {"cpu": 2}, ("db", "d1"): {"conn": 2}}
    blocker = ledger.try_acquire("t1", needs)
    assert blocker is not None
    assert (blocker.node, blocker.resource, blocker.need, blocker.limit) == ("d1", "conn", 2, 1)
    assert "t1" not in ledger
    assert ledger.usage() == {}


def test_try_acquire_fits_when_need_equals_available() -> None:
    ledger = small_ledger()
    assert ledger.try_acquire("t1", {("host", "h1"): {"cpu": 3}}) is None
    assert ledger.try_acquire("t2", {("host", "h1"): {"cpu": 1}}) is None
    assert ledger.used(("host", "h1")) == {"cpu": 4}
    assert ledger.try_acquire("t3", {("host", "h1"): {"cpu": 1}}) is not None


def test_release_of_unknown_holder_is_noop() -> None:
    ledger = small_ledger()
    ledger.force_acquire("t1", {("host", "h1"): {"cpu": 1}})
    assert ledger.release("nobody") is None
    assert ledger.used(("host", "h1")) == {"cpu": 1}
    assert len(ledger) == 1


def test_acquire_twice_raises() -> None:
    ledger = small_ledger()
    assert ledger.try_acquire("t1", {("host", "h1"): {"cpu": 1}}) is None
    with pytest.raises(ValueError, match="already holds resources"):
        ledger.try_acquire("t1", {("host", "h1"): {"cpu": 1}})
    assert ledger.used(("host", "h1")) == {"cpu": 1}


def test_release_returns_usage_to_zero() -> None:
    ledger = small_ledger()
    ledger.force_acquire("t1", {("host", "h1"): {"cpu": 2}, ("db", "d1"): {"conn": 1}})
    released = ledger.release("t1")
    assert released == {("host", "h1"): {"cpu": 2}, ("db", "d1"): {"conn": 1}}
    assert ledger.usage() == {}
    assert "t1" not in ledger


def test_zero_amounts_release_in_any_order() -> None:
    ledger = small_ledger()
    ledger.force_acquire("takes_none", {("host", "h1"): {"cpu": 0}})
    ledger.force_acquire("takes_one", {("host", "h1"): {"cpu": 1}})
    ledger.release("takes_one")
    assert ledger.release("takes_none") == {("host", "h1"): {"cpu": 0}}
    assert ledger.usage() == {}
