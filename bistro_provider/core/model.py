"""Typed form of a Bistro configuration after parsing and validation.

`bistro_provider.core.config.parse_config` builds these objects from Bistro's JSON (or the
same keys in YAML). Everything here is immutable after parsing, so a running scheduler can
keep the last good `Config` while a newer file is being checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from bistro_provider.core.errors import ConfigIssue

INSTANCE_LEVEL = "instance"
WORKER_LEVEL = "worker"

NODE_ORDERS = ("random", "lexicographic", "original")
POLICIES = ("roundrobin", "randomized_priority", "ranked_priority", "long_tail")
WORKER_SELECTORS = ("roundrobin", "busiest")

DEFAULT_BACKOFF: tuple[Any, ...] = (15, 30, 60, 300, 900, 3600, 7200, 21600, 86400, "repeat")


@dataclass(frozen=True)
class ResourceSpec:
    """A resource declared on a level: every node of `level` starts with `limit` of it, and
    every task takes `default` of it on such a node unless its job names another amount."""

    name: str
    level: str
    limit: int
    default: int
    weight: int = 0


@dataclass(frozen=True)
class Backoff:
    """Retry delays in seconds, strictly increasing, then what happens after the last one.

    :param delays: the configured delays, each a positive number of seconds.
    :param repeat: True when the list ends in ``"repeat"`` (keep waiting the last delay);
        False when it ends in ``"fail"`` or nothing (the task fails after the last delay).
    """

    delays: tuple[int, ...]
    repeat: bool = False

    def next_delay(self, current: int) -> int | None:
        """Return the delay that follows `current` seconds, or None when retries are used up.

        `current` is 0 for a task that has not backed off since its last non-error status.
        """
        for delay in self.delays:
            if delay > current:
                return delay
        if self.repeat and self.delays:
            return self.delays[-1]
        return None

    def to_json(self) -> list[Any]:
        return [*self.delays, "repeat" if self.repeat else "fail"]


@dataclass(frozen=True)
class LevelFilter:
    """A job's node filter for one level; a node passes only if every non-empty rule passes."""

    whitelist: frozenset[str] = frozenset()
    whitelist_regex: re.Pattern[str] | None = None
    blacklist: frozenset[str] = frozenset()
    blacklist_regex: re.Pattern[str] | None = None
    fraction_of_nodes: float = 1.0
    tag_whitelist: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NodeSourceSpec:
    """One entry of `bistro_settings.nodes.node_sources`."""

    source: str
    prefs: dict[str, Any] = field(default_factory=dict)
    index: int = 0


@dataclass(frozen=True)
class Job:
    """A parsed `bistro_job->NAME` entry.

    A job with `errors` never gets tasks, but other jobs are unaffected.
    """

    name: str
    owner: str = ""
    enabled: bool = True
    priority: float = 1.0
    resources: dict[str, int] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    filters: dict[str, LevelFilter] = field(default_factory=dict)
    level_for_tasks: str = ""
    depends_on: tuple[str, ...] = ()
    backoff: Backoff = Backoff(tuple(d for d in DEFAULT_BACKOFF if isinstance(d, int)), True)
    command: tuple[str, ...] = ()
    kill_orphan_tasks_after_sec: float | None = None
    host_placement: str | None = None
    level_for_host_placement: str | None = None
    kill_subprocess: dict[str, Any] = field(default_factory=dict)
    task_subprocess: dict[str, Any] = field(default_factory=dict)
    continuous: bool = False
    """Set by ``airflow.continuous``: the job's DAG runs again whenever its nodes change."""
    poll_interval: float = 60.0
    """Seconds between node-graph checks of a continuous job (``airflow.poll_interval``)."""
    task_timeout_sec: float | None = None
    """Seconds after which a task's command is killed (``airflow.task_timeout_sec``); None
    lets it run until it exits."""
    errors: tuple[ConfigIssue, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def can_run(self) -> bool:
        return self.enabled and not self.errors


@dataclass(frozen=True)
class Settings:
    """Parsed `bistro_settings`.

    `levels` always starts with ``instance`` and ends with ``worker``; `resources` maps a
    level name to its resources by name and has an entry (maybe empty) for every level.
    """

    levels: tuple[str, ...]
    resources: dict[str, dict[str, ResourceSpec]]
    node_sources: tuple[NodeSourceSpec, ...] = ()
    node_order: Literal["random", "lexicographic", "original"] = "random"
    level_for_tasks: str = ""
    enabled: bool = False
    scheduler: str = "roundrobin"
    remote_worker_selector: str = "roundrobin"
    backoff: Backoff = Backoff(tuple(d for d in DEFAULT_BACKOFF if isinstance(d, int)), True)
    kill_orphan_tasks_after_sec: float | None = None
    working_wait: float = 0.5
    idle_wait: float = 5.0
    worker_resources_override: dict[str, dict[str, int]] = field(default_factory=dict)
    physical_resources: dict[str, Any] = field(default_factory=dict)
    kill_subprocess: dict[str, Any] = field(default_factory=dict)
    task_subprocess: dict[str, Any] = field(default_factory=dict)
    instance_node_name: str = "instance"
    config_dir: str | None = field(default=None, compare=False)
    """Directory of the config file; relative paths in node-source prefs resolve there."""

    def level_index(self, level: str) -> int:
        return self.levels.index(level)

    @property
    def configured_levels(self) -> tuple[str, ...]:
        """The levels named in the config, without ``instance`` and ``worker``."""
        return self.levels[1:-1]

    def resource_names(self) -> list[str]:
        return sorted({name for specs in self.resources.values() for name in specs})


@dataclass(frozen=True)
class Config:
    """A whole Bistro configuration: valid settings plus jobs (each possibly with errors)."""

    settings: Settings
    jobs: dict[str, Job]
    warnings: tuple[ConfigIssue, ...] = ()

    def job_errors(self) -> list[ConfigIssue]:
        return [issue for job in self.jobs.values() for issue in job.errors]
