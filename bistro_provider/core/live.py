"""The config and node graph a long-running process admits against, kept fresh.

The config file is re-read when its modification time changes, at most every
`config_update_interval` seconds. Nodes are fetched every `nodes_update_interval` seconds
(sooner, after `nodes_retry_interval`, when the last fetch failed), in a background thread
so that slow node-source scripts never stall the caller. A config that fails to load, or a
fetch that fails, keeps the last good one in use and records the error.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bistro_provider.core.config import load_config
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

    :param config_path: the Bistro config file (JSON or YAML).
    :param background: fetch nodes in a thread; False fetches inline (tests, CLI).
    """

    def __init__(
        self,
        config_path: str,
        intervals: RefreshIntervals | None = None,
        *,
        background: bool = True,
        clock: Callable[[], float] = time.time,
        fetch: Callable[..., Forest] = fetch_forest,
    ):
        self.config_path = config_path
        self.intervals = intervals or RefreshIntervals()
        self.background = background
        self.clock = clock
        self._fetch = fetch
        self.config: Config | None = None
        self.config_error: str | None = None
        self.forest: Forest | None = None
        self.nodes_error: str | None = None
        self.forest_time: float | None = None
        self._config_mtime: float | None = None
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

    def _reload_config(self, *, force: bool) -> None:
        try:
            mtime = os.stat(self.config_path).st_mtime
        except OSError as exc:
            self._record_config_error(f"cannot read config file {self.config_path!r}: {exc}")
            return
        if not force and mtime == self._config_mtime and self.config is not None:
            return
        try:
            config = load_config(self.config_path)
        except (ConfigError, OSError, ValueError) as exc:
            self._config_mtime = mtime
            self._record_config_error(str(exc))
            return
        changed_settings = self.config is None or config.settings != self.config.settings
        self.config = config
        self._config_mtime = mtime
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
