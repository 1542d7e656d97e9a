"""Per-task views of a job: the state of each task, progress counts and Bistro's histograms.

A task is one job on one node of the job's `level_for_tasks`. What it shows comes, in this
order, from the ledger (an admitted task is running), the job's filters and disabled nodes,
the executor's list of queued tasks that wait for resources, and the last stored status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bistro_provider.core import status as bits
from bistro_provider.core.filters import task_eligibility
from bistro_provider.core.forest import Node
from bistro_provider.core.model import Job
from bistro_provider.state.snapshot import StateSnapshot
from bistro_provider.store.repository import GrantRecord, StoredStatus

PROGRESS_KEYS = (
    "done",
    "running",
    "waiting",
    "backoff",
    "incomplete",
    "failed",
    "filtered",
    "disabled",
    "unstarted",
)
"""Progress categories. ``incomplete``: ran before and may run again (an ``incomplete``
status, or a backoff that has ended); ``unstarted``: never ran and is not queued."""

# Bistro's monitor writes a histogram key as these characters: the low 6 bits of the status
# bit set, then the higher bits as a second character when any is set.
HISTOGRAM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True)
class TaskInfo:
    """Known facts about one task.

    :param eligibility: ``yes``, ``avoided`` (a filter rejects the node or an ancestor),
        ``disabled`` (the node or an ancestor is disabled) or ``missing`` (the node is not
        in the forest, but an admitted task still runs there).
    """

    job: str
    node: str
    replicas: tuple[Node, ...]
    eligibility: str
    grant: GrantRecord | None
    status: StoredStatus | None
    waiting: dict[str, Any] | None


def encode_histogram_bits(value: int) -> str:
    """Return Bistro's histogram key for a status bit set, for example ``E`` for DONE (4)."""
    if value < 0 or value >= 64 * 64:
        raise ValueError(f"status bits must be in 0..4095, got {value}")
    encoded = HISTOGRAM_ALPHABET[value & 63]
    if value >> 6:
        encoded += HISTOGRAM_ALPHABET[value >> 6]
    return encoded


def backoff_until(status: StoredStatus | None) -> float | None:
    """Return when the status's backoff ends, or None when it has none."""
    if status is None or status.kind not in bits.BACKOFF_KINDS or status.backoff <= 0:
        return None
    return status.time + status.backoff


def in_backoff(status: StoredStatus | None, now: float) -> bool:
    """Return True while the backoff runs; at exactly its end the task may start, as in Bistro."""
    until = backoff_until(status)
    return until is not None and until > now


def task_infos(state: StateSnapshot, job: Job) -> list[TaskInfo]:
    """Return every task of `job`: its level's nodes in fetch order, then admitted tasks on
    nodes that have left the forest."""
    settings = state.require_config().settings
    level = state.task_level(job)
    grants = state.grants_by_task()
    waiting = state.waiting_by_task()
    infos = []
    seen = set()
    if state.fetched_forest is not None and level < len(settings.levels) - 1:
        for name in state.fetched_forest.distinct_names(level):
            replicas = tuple(state.fetched_forest.replicas(level, name))
            infos.append(
                TaskInfo(
                    job.name,
                    name,
                    replicas,
                    _eligibility(job, replicas, settings.levels),
                    grants.get((job.name, name)),
                    state.statuses.get((job.name, name)),
                    waiting.get((job.name, name)),
                )
            )
            seen.add(name)
    for (job_name, node), grant in sorted(grants.items()):
        if job_name == job.name and node not in seen:
            status = state.statuses.get((job_name, node))
            infos.append(TaskInfo(job_name, node, (), "missing", grant, status, None))
    return infos


def _eligibility(job: Job, replicas: tuple[Node, ...], levels: tuple[str, ...]) -> str:
    results = [task_eligibility(job, node, levels) for node in replicas]
    return "yes" if "yes" in results else results[0]


def task_category(info: TaskInfo, now: float) -> str:
    """Return the progress category of one task (one of `PROGRESS_KEYS`)."""
    if info.grant is not None:
        return "running"
    if info.eligibility == "avoided":
        return "filtered"
    if info.eligibility == "disabled":
        return "disabled"
    if info.waiting is not None:
        return "waiting"
    status = info.status
    if status is None:
        return "unstarted"
    if status.kind in ("done", "failed", "running"):
        return status.kind
    return "backoff" if in_backoff(status, now) else "incomplete"


def job_progress(state: StateSnapshot, job: Job) -> dict[str, int]:
    """Count the job's tasks per category, plus ``total``."""
    counts = dict.fromkeys(PROGRESS_KEYS, 0)
    for info in task_infos(state, job):
        counts[task_category(info, state.now)] += 1
    counts["total"] = sum(counts.values())
    return counts


def status_bits(info: TaskInfo, now: float) -> int:
    """Return the bit set Bistro's monitor shows for a task.

    The bits are AVOIDED or DISABLED when the node cannot run the job, OR-ed with the
    status bits. The backoff bit is kept only while the backoff runs, and a runnable task
    with no status is UNSTARTED.
    """
    value = 0
    if info.eligibility == "avoided":
        value = bits.AVOIDED
    elif info.eligibility == "disabled":
        value = bits.DISABLED
    if info.grant is not None:
        return value | bits.RUNNING
    if info.status is None:
        return value if value else bits.UNSTARTED
    status_value = bits.KIND_BITS.get(info.status.kind, 0)
    if not in_backoff(info.status, now):
        status_value &= ~bits.USES_BACKOFF
    return value | status_value


def job_histogram(
    state: StateSnapshot, job: Job, num_samples: int = 0
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, list[str]]]]:
    """Return Bistro's histogram of `job`: per level, node counts by OR-ed status bits.

    Each task's bits are OR-ed into its node and every ancestor, so a host with one done
    and one running database counts once, under DONE|RUNNING. Samples list up to
    `num_samples` node names per bit set, in fetch order.
    """
    levels = state.require_config().settings.levels
    node_bits: dict[tuple[int, str], int] = {}
    for info in task_infos(state, job):
        value = status_bits(info, state.now)
        for replica in info.replicas:
            for node in replica.path_to_root():
                key = (node.level, node.name)
                node_bits[key] = node_bits.get(key, 0) | value
    histograms: dict[str, dict[str, int]] = {}
    samples: dict[str, dict[str, list[str]]] = {}
    for (level, name), value in node_bits.items():
        encoded = encode_histogram_bits(value)
        by_level = histograms.setdefault(levels[level], {})
        by_level[encoded] = by_level.get(encoded, 0) + 1
        names = samples.setdefault(levels[level], {}).setdefault(encoded, [])
        if len(names) < num_samples:
            names.append(name)
    return histograms, samples


def histogram(
    state: StateSnapshot, jobs: list[str] | None = None, num_samples: int = 0
) -> dict[str, Any]:
    """Return the ``histogram`` response of Bistro's monitor for `jobs` (all when empty).

    Unknown job names are ignored and jobs with config errors are left out, as in Bistro.
    ``samples`` is present only when `num_samples` is above 0.
    """
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}")
    config = state.require_config()
    names = [name for name in jobs if name in config.jobs] if jobs else list(config.jobs)
    result: dict[str, Any] = {"histograms": {}}
    all_samples: dict[str, Any] = {}
    for name in names:
        job = config.jobs[name]
        if job.errors:
            continue
        result["histograms"][name], all_samples[name] = job_histogram(state, job, num_samples)
    if num_samples > 0:
        result["samples"] = all_samples
    return result
