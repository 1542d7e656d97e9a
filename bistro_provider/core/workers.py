"""Workers as nodes of the ``worker`` level, their capacity, and choosing one for a task.

A worker's capacity starts from the ``worker`` level's limits, is then replaced per
resource by `worker_resources_override` (keyed by ``host:port``, then ``host``, then the
worker id, the first key found wins), and finally, for resources named in
`physical_resources`, by what the machine really has: ``(physical - reserve) / multiplier``
rounded down, never below zero. A physical amount of 0 means unknown and keeps the value
from the previous steps.

Selection follows Bistro: the task first passes the job's ``worker`` filter and placement
(`host_placement`, else the task's ancestor at `level_for_host_placement`); then
``roundrobin`` takes the first worker with room, starting after the last one chosen, and
``busiest`` takes the worker that would be left with the least weighted free capacity.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bistro_provider.core.filters import level_filter_accepts
from bistro_provider.core.forest import Node
from bistro_provider.core.model import WORKER_LEVEL, Job, Settings
from bistro_provider.core.resources import Holdings, Ledger

PHYSICAL_KINDS = ("cpu_core", "ram_mb", "gpu_card")


@dataclass(frozen=True, eq=True)
class WorkerInfo:
    """A worker as reported by the process that runs tasks.

    :param name: the worker id (a Celery worker's hostname, or the local machine's name).
    :param host: the machine's host name, for overrides and placement.
    :param port: the worker's port when it has one, for ``host:port`` overrides.
    :param queue: where tasks for this worker alone are sent (one queue per worker).
    :param physical: detected amounts by kind: ``cpu_core``, ``ram_mb``, ``gpu_card``.
    """

    name: str
    host: str
    port: int | None = None
    queue: str = ""
    physical: Mapping[str, float] = field(default_factory=dict)


def worker_capacity(settings: Settings, worker: WorkerInfo) -> dict[str, int]:
    """Return the limits of `worker` for every resource of the ``worker`` level."""
    specs = settings.resources.get(WORKER_LEVEL, {})
    capacity = {name: spec.limit for name, spec in specs.items()}
    keys = [f"{worker.host}:{worker.port}"] if worker.port is not None else []
    keys += [worker.host, worker.name]
    for key in keys:
        override = settings.worker_resources_override.get(key)
        if override:
            capacity.update({name: int(amount) for name, amount in override.items()})
            break
    for kind, rule in (settings.physical_resources or {}).items():
        amount = _physical_amount(worker, kind, rule)
        resource = rule.get("logical_resource") if isinstance(rule, Mapping) else None
        if amount is not None and resource in capacity:
            capacity[resource] = amount
    return capacity


def _physical_amount(worker: WorkerInfo, kind: str, rule: Any) -> int | None:
    physical = float(worker.physical.get(kind, 0) or 0)
    if physical <= 0 or not isinstance(rule, Mapping):
        return None
    multiplier = float(rule.get("multiply_logical_by", 1.0) or 1.0)
    reserve = float(rule.get("physical_reserve_amount", 0.0) or 0.0)
    return max(0, int((physical - reserve) / multiplier))


def detect_physical() -> dict[str, float]:
    """Return this machine's CPU cores and RAM in MiB (0 where unknown)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram_mb = 0.0
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    ram_mb = int(line.split()[1]) / 1024
                    break
    except OSError:
        pass
    return {"cpu_core": float(cores or 0), "ram_mb": ram_mb, "gpu_card": 0.0}


def worker_needs(settings: Settings, job: Job) -> dict[str, int]:
    """Return what a task of `job` needs on its worker, per worker-level resource."""
    specs = settings.resources.get(WORKER_LEVEL, {})
    return {name: job.resources.get(name, spec.default) for name, spec in specs.items()}


def required_host(job: Job, node: Node, settings: Settings) -> str | None:
    """Return the worker host a task must run on, or None if any worker will do."""
    if job.host_placement:
        return job.host_placement
    if job.level_for_host_placement:
        level = settings.level_index(job.level_for_host_placement)
        for ancestor in node.path_to_root():
            if ancestor.level == level:
                return ancestor.name
    return None


class WorkerPool:
    """The live workers and the choice of one per task.

    :param settings: current settings; replace with `update_settings` after a reload.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.workers: dict[str, WorkerInfo] = {}
        self.capacities: dict[str, dict[str, int]] = {}
        self._cursor = 0

    def update_settings(self, settings: Settings) -> None:
        self.settings = settings
        self.capacities = {name: worker_capacity(settings, w) for name, w in self.workers.items()}

    def set_workers(self, workers: Iterable[WorkerInfo]) -> None:
        """Replace the set of live workers."""
        self.workers = {worker.name: worker for worker in workers}
        self.capacities = {
            name: worker_capacity(self.settings, worker) for name, worker in self.workers.items()
        }

    def capacity_of(self, name: str) -> dict[str, int]:
        return dict(self.capacities.get(name, {}))

    def choose(self, job: Job, node: Node, ledger: Ledger) -> tuple[WorkerInfo, Holdings] | None:
        """Pick a worker with room for a task of `job` on `node`, or None if none has room."""
        needs = worker_needs(self.settings, job)
        names = sorted(self.workers)
        eligible = [name for name in names if self._allows(job, node, self.workers[name])]
        fitting = [
            name for name in eligible if ledger.first_blocker(self._holding(name, needs)) is None
        ]
        if not fitting:
            return None
        if self.settings.remote_worker_selector == "busiest":
            chosen = min(fitting, key=lambda name: (self._weighted_free(name, needs, ledger), name))
        else:
            chosen = self._next_round_robin(names, fitting)
        return self.workers[chosen], self._holding(chosen, needs)

    def _holding(self, name: str, needs: dict[str, int]) -> Holdings:
        return {(WORKER_LEVEL, name): dict(needs)} if needs else {}

    def _allows(self, job: Job, node: Node, worker: WorkerInfo) -> bool:
        host = required_host(job, node, self.settings)
        if host is not None and host not in (worker.host, worker.name):
            return False
        worker_filter = job.filters.get(WORKER_LEVEL)
        if worker_filter is None:
            return True
        pseudo = Node(worker.host, len(self.settings.levels) - 1)
        return level_filter_accepts(worker_filter, pseudo, job.name)

    def _weighted_free(self, name: str, needs: dict[str, int], ledger: Ledger) -> float:
        specs = self.settings.resources.get(WORKER_LEVEL, {})
        used = ledger.used((WORKER_LEVEL, name))
        capacity = self.capacities.get(name, {})
        return sum(
            (capacity.get(res, 0) - used.get(res, 0) - needs.get(res, 0)) * spec.weight
            for res, spec in specs.items()
        )

    def _next_round_robin(self, names: list[str], fitting: list[str]) -> str:
        start = self._cursor % len(names)
        ordered = names[start:] + names[:start]
        chosen = next(name for name in ordered if name in fitting)
        self._cursor = names.index(chosen) + 1
        return chosen
