"""Bistro's four scheduling policies.

Each policy receives, per job, the list of candidate tasks for this pass and consumes it
from the end: a candidate is removed whether or not it started, so within one pass every
(job, node) pair is tried at most once. With `node_order: lexicographic` the last name is
therefore tried first. The policies only order the attempts; whether a task fits is decided
by the `try_start` callback, which also takes the resources.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from bistro_provider.core.model import POLICIES, Job

C = TypeVar("C")


class StartResult(enum.Enum):
    """What happened when a policy tried to start one task."""

    RAN = "ran"
    DID_NOT_RUN = "did_not_run"
    STOP = "stop"
    """Start nothing more in this pass (for example, no worker is free at all)."""


@dataclass
class JobCandidates(Generic[C]):
    """A job and its candidate tasks for one pass, in the level's node order."""

    job: Job
    candidates: list[C] = field(default_factory=list)


TryStart = Callable[[Job, C], StartResult]


class _Stop(Exception):
    pass


def _start_one(entry: JobCandidates[C], try_start: TryStart[C]) -> bool:
    """Pop candidates from the end until one starts; return True if one did."""
    while entry.candidates:
        result = try_start(entry.job, entry.candidates.pop())
        if result is StartResult.STOP:
            raise _Stop
        if result is StartResult.RAN:
            return True
    return False


def _start_all(entry: JobCandidates[C], try_start: TryStart[C]) -> int:
    started = 0
    while entry.candidates:
        result = try_start(entry.job, entry.candidates.pop())
        if result is StartResult.STOP:
            raise _Stop
        started += result is StartResult.RAN
    return started


def round_robin(jobs: list[JobCandidates[C]], try_start: TryStart[C], rng: random.Random) -> int:
    """Start at most one task per job per sweep, sweeping until every list is used up.

    The caller decides the job order (Bistro shuffles jobs once per pass, then keeps that
    order for every sweep).
    """
    started = 0
    remaining = [entry for entry in jobs if entry.candidates]
    while remaining:
        for entry in remaining:
            started += _start_one(entry, try_start)
        remaining = [entry for entry in remaining if entry.candidates]
    return started


def randomized_priority(
    jobs: list[JobCandidates[C]], try_start: TryStart[C], rng: random.Random
) -> int:
    """Repeatedly draw a job with probability proportional to its priority; start one task."""
    started = 0
    remaining = [entry for entry in jobs if entry.candidates]
    while remaining:
        weights = [max(entry.job.priority, 0.0) for entry in remaining]
        if sum(weights) > 0:
            entry = rng.choices(remaining, weights=weights)[0]
        else:
            entry = rng.choice(remaining)
        started += _start_one(entry, try_start)
        remaining = [item for item in remaining if item.candidates]
    return started


def _ranked(jobs: Sequence[JobCandidates[C]], try_start: TryStart[C]) -> int:
    started = 0
    for entry in jobs:
        started += _start_all(entry, try_start)
    return started


def ranked_priority(
    jobs: list[JobCandidates[C]], try_start: TryStart[C], rng: random.Random
) -> int:
    """Start every task that fits, highest priority job first.

    The sort is stable, so jobs of equal priority keep the caller's order.
    """
    return _ranked(sorted(jobs, key=lambda entry: -entry.job.priority), try_start)


def long_tail(jobs: list[JobCandidates[C]], try_start: TryStart[C], rng: random.Random) -> int:
    """Like ranked priority, but the job with the fewest candidates in this pass goes first."""
    return _ranked(sorted(jobs, key=lambda entry: len(entry.candidates)), try_start)


_POLICIES = {
    "roundrobin": round_robin,
    "randomized_priority": randomized_priority,
    "ranked_priority": ranked_priority,
    "long_tail": long_tail,
}


def run_policy(
    name: str, jobs: list[JobCandidates[C]], try_start: TryStart[C], rng: random.Random
) -> bool:
    """Run the named policy; return False if `try_start` stopped the pass early.

    The caller learns what started from its own `try_start` callback.

    :raises ValueError: for an unknown policy name.
    """
    try:
        policy = _POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown scheduler policy {name!r}; choose one of {', '.join(POLICIES)}"
        ) from None
    try:
        policy(jobs, try_start, rng)
    except _Stop:
        return False
    return True
