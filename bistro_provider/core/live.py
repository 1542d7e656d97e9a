"""The config and node graph a long-running process admits against, kept fresh.

The config source is checked at most every `config_update_interval` seconds: a file when
its modification time changes, a Variable or plugin source when its content's digest
changes (see `bistro_provider.core.config_sources`). Nodes are fetched every
`nodes_update_interval` seconds (sooner, after `nodes_retry_interval`, when the last fetch
failed), in a background thread so that slow node-source scripts never stall the caller. A
config that fails to load, or a fetch that fails, keeps the last good one in use and
records the error.

Jobs that DAG files define (``bistro_job_dag(job_config=...)``) are added with `define_job`
and kept next to the config's jobs after every reload.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bistro_provider.core.config import parse_job_definition
from bistro_provider.core.config_sources import ConfigSource, FileConfigSource
from bistro_provider.core.errors import ConfigError
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import Config, Settings
from bistro_provider.nodes import fetch_forest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefreshIntervals:
    """How often to look at the config file and to fetch nodes, in seconds."""

    config_update: float = 10.0
    nodes_update: float = 60.0
    nodes_retry: float = 15.0
    script_timeout: float = 60.0
    max_deletion_fraction: float = 0.5
    """A fetch that removes more than this fraction of a level's nodes is held back."""


class LiveForest:
    """The last good config and forest, refreshed on `poll()`.

    :param config_path: the Bistro config file (JSON or YAML), or any `ConfigSource`.
    :param background: fetch nodes in a thread; False fetches inline (tests, CLI).
    """

    def __init__(
        self,
        config_path: str | ConfigSource,
        intervals: RefreshIntervals | None = None,
        *,
        background: bool = True,
        clock: Callable[[], float] = time.time,
        fetch: Callable[..., Forest] = fetch_forest,
    ):
        self.source = FileConfigSource(config_path) if isinstance(config_path, str) else config_path
        self.config_path = self.source.location
        """The source's location: a file path, ``variable:NAME`` or ``plugin:NAME``."""
        self.intervals = intervals or RefreshIntervals()
        self.background = background
        self.clock = clock
        self._fetch = fetch
        self.config: Config | None = None
        self.config_error: str | None = None
        self.forest: Forest | None = None
        self.nodes_error: str | None = None
        self.forest_time: float | None = None
        self._config_token: str | None = None
        self._loaded: Config | None = None
        """The config as the source has it, without the jobs of DAG files."""
        self._dag_jobs: dict[str, tuple[str, dict[str, Any], str]] = {}
        self._clashes: set[str] = set()
        self._next_config_check = 0.0
        self._next_fetch = 0.0
        self._fetching: threading.Thread | None = None
        self._forest_sources: tuple[object, object] | None = None
        self._lock = threading.Lock()

    def errors(self) -> dict[str, str]:
        """Return the current config and node-source errors by kind."""
        found = {}
        if self.config_error:
            found["config"] = self.config_error
        if self.nodes_error:
            found["nodes"] = self.nodes_error
        return found

    def poll(self, *, force: bool = False) -> None:
        """Reload the config and start a node fetch if either is due."""
        now = self.clock()
        if force or now >= self._next_config_check:
            self._next_config_check = now + self.intervals.config_update
            self._reload_config(force=force)
        if self.config is not None and (force or now >= self._next_fetch):
            self._start_fetch(self.config.settings, now)

    def wait_for_nodes(self, timeout: float = 120.0) -> None:
        """Block until the running fetch (if any) ends; for tests and one-shot commands."""
        thread = self._fetching
        if thread is not None:
            thread.join(timeout)

    def define_job(self, name: str, definition: dict[str, Any], origin: str) -> None:
        """Add or replace a job that a DAG file defines, checked against the current settings.

        A config job of the same name wins over it, and the clash is logged once.

        :param origin: the DAG file that defines the job, for messages.
        """
        key = json.dumps(definition, sort_keys=True, default=str)
        if name in self._dag_jobs and self._dag_jobs[name][0] == key:
            return
        self._dag_jobs[name] = (key, dict(definition), origin)
        log.info("Job %s is defined by the DAG file %s", name, origin or "(unknown)")
        if self._loaded is not None:
            self.config = self._with_dag_jobs(self._loaded)

    def _with_dag_jobs(self, config: Config) -> Config:
        if not self._dag_jobs:
            return config
        jobs = dict(config.jobs)
        for name, (_key, definition, origin) in self._dag_jobs.items():
            if name in config.jobs:
                if name not in self._clashes:
                    log.error(
                        "Job %s is defined both in the DAG file %s and in the config %s; the "
                        "config's definition is used. Rename or remove one of them",
                        name,
                        origin or "(unknown)",
                        self.config_path,
                    )
                    self._clashes.add(name)
                continue
            job, _warnings = parse_job_definition(config, name, definition)
            jobs[name] = job
        return replace(config, jobs=jobs)

    def _reload_config(self, *, force: bool) -> None:
        try:
            token = self.source.check()
        except ConfigError as exc:
            self._record_config_error(str(exc))
            return
        if not force and token == self._config_token and self.config is not None:
            return
        try:
            loaded = self.source.load()
        except (ConfigError, OSError, ValueError) as exc:
            self._config_token = token
            self._record_config_error(str(exc))
            return
        config = self._with_dag_jobs(loaded)
        changed_settings = self.config is None or config.settings != self.config.settings
        self._loaded = loaded
        self.config = config
        self._config_token = token
        if self.config_error:
            log.info("Bistro config %s is valid again", self.config_path)
        self.config_error = None
        for issue in config.job_errors():
            log.warning("Bistro config %s: job cannot run: %s", self.config_path, issue)
        if changed_settings:
            self._next_fetch = 0.0

    def _record_config_error(self, message: str) -> None:
        if message != self.config_error:
            log.error(
                "Bistro config %s is invalid; keeping the last good config (%s): %s",
                self.config_path,
                "none loaded yet" if self.config is None else "still in use",
                message,
            )
        self.config_error = message

    def _start_fetch(self, settings: Settings, now: float) -> None:
        with self._lock:
            if self._fetching is not None and self._fetching.is_alive():
                return
            self._next_fetch = now + self.intervals.nodes_update
            if not self.background:
                self._fetch_nodes(settings)
                return
            self._fetching = threading.Thread(
                target=self._fetch_nodes, args=(settings,), name="bistro-node-fetch", daemon=True
            )
            self._fetching.start()

    def _fetch_nodes(self, settings: Settings) -> None:
        started = self.clock()
        try:
            forest = self._fetch(
                settings, now=started, script_timeout=self.intervals.script_timeout
            )
        except Exception as exc:  # any source failure keeps the last good forest
            self._next_fetch = self.clock() + self.intervals.nodes_retry
            if str(exc) != self.nodes_error:
                log.error(
                    "Fetching Bistro nodes failed; keeping the last good node list (%s): %s",
                    "none yet" if self.forest is None else f"{len(self.forest)} nodes",
                    exc,
                )
            self.nodes_error = str(exc)
            return
        held = self._deletion_problem(forest, settings)
        if held is not None:
            self._next_fetch = self.clock() + self.intervals.nodes_retry
            if held != self.nodes_error:
                log.error("Bistro node refresh held back: %s", held)
            self.nodes_error = held
            return
        self.forest = forest
        self.forest_time = started
        self._forest_sources = (settings.levels, settings.node_sources)
        if self.nodes_error:
            log.info("Fetching Bistro nodes works again: %d nodes", len(forest))
        self.nodes_error = None
        log.debug("Fetched %d Bistro nodes in %.2f s", len(forest), self.clock() - started)

    def _deletion_problem(self, new: Forest, settings: Settings) -> str | None:
        """Return why `new` must not replace the current forest, or None if it may.

        Only a refresh from the same node sources is compared: after a config edit changes
        the sources or levels, a smaller forest is what the operator asked for.
        """
        old = self.forest
        if old is None or self._forest_sources != (settings.levels, settings.node_sources):
            return None
        limit = self.intervals.max_deletion_fraction
        for index, level in enumerate(settings.levels[1:-1], start=1):
            before = set(old.distinct_names(index))
            if not before:
                continue
            after = set(new.distinct_names(index))
            removed = len(before - after)
            if not after:
                return (
                    f"level {level!r} came back empty (it had {len(before)} nodes); keeping "
                    f"the last good node list, and no task is stopped for it"
                )
            if removed / len(before) > limit:
                return (
                    f"the refresh would remove {removed} of {len(before)} nodes on level "
                    f"{level!r}, more than [bistro] max_node_deletion_fraction = {limit}; keeping "
                    f"the last good node list. Raise the setting (1.0 disables the check) if "
                    f"this many nodes really left"
                )
        return None
