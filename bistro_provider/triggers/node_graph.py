"""Triggers that watch a Bistro node graph and fire when it changes.

Both triggers poll the config's node sources every `poll_interval` seconds and compare a
fingerprint of the graph (`graph_fingerprint`). Loading the config and running the node
sources block (files, scripts), so each poll runs in a worker thread and the triggerer's
event loop stays free. A poll that fails is logged and changes nothing: the trigger keeps
the last good fingerprint, so a broken script never looks like "every node left".

- `NodeGraphTrigger` is for an `AssetWatcher`. It never returns, because the triggerer
  re-creates a watcher trigger that returns and the new instance would fire again. It fires
  once per change and stores the fingerprint in the asset's state store (Airflow 3.3+), so a
  restarted triggerer does not fire again for a graph it already reported.
- `NodeGraphChangeTrigger` is for a deferred task: it fires once, when the graph differs from
  a given fingerprint, and returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from bistro_provider.core.config import load_config
from bistro_provider.core.errors import ConfigError, NodeSourceError
from bistro_provider.core.forest import Forest, Node
from bistro_provider.nodes import fetch_forest

# The failures of one poll: a config that does not load, a node source that fails, a level
# name the config does not define. They are logged and retried at the next poll.
GRAPH_ERRORS: tuple[type[Exception], ...] = (ConfigError, NodeSourceError, KeyError, OSError)
STATE_KEY = "bistro_node_graph"
MAX_LISTED_NAMES = 1000
"""Names listed under ``added`` and ``removed`` in one event; the counts are always exact."""
MAX_STORED_NAMES = 10000
"""Graphs with more node names store only their fingerprint, so the next event after a
triggerer restart cannot list what was added or removed."""


@dataclass(frozen=True)
class GraphSnapshot:
    """The fingerprint of a node graph, with the sorted names it covers and its node count."""

    fingerprint: str
    names: tuple[str, ...]
    nodes: int


def _selected_nodes(forest: Forest, level: str | None) -> list[Node]:
    return list(forest) if level is None else forest.nodes(level)


def _node_record(forest: Forest, node: Node) -> str:
    parent = node.parent.name if node.parent is not None else None
    fields = [forest.levels[node.level], node.name, parent, node.enabled, sorted(node.tags)]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


def _fingerprint(records: list[str]) -> str:
    digest = hashlib.sha256()
    # JSON escapes newlines inside strings, so a newline separates records unambiguously.
    for record in sorted(records):
        digest.update(record.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def graph_fingerprint(forest: Forest, level: str | None = None) -> str:
    """Return a sha256 hex digest of the nodes' level, name, parent, enabled flag and tags.

    The digest ignores fetch order and per-node capacity, so it changes only when nodes come,
    go, move to another parent, or change their enabled flag or tags.

    :param level: covers only the nodes of this level; None covers every level.
    :raises KeyError: when `level` is not a level of the forest.
    """
    return _fingerprint([_node_record(forest, node) for node in _selected_nodes(forest, level)])


def snapshot_graph(forest: Forest, level: str | None = None) -> GraphSnapshot:
    """Return the fingerprint, names and node count of `forest` (or of one level).

    Names are the node names when `level` is given, else ``LEVEL/NAME`` so that equal names
    on two levels stay apart. Replicas count once in `names` but each in `nodes`.
    """
    nodes = _selected_nodes(forest, level)
    records = [_node_record(forest, node) for node in nodes]
    if level is None:
        names = {f"{forest.levels[node.level]}/{node.name}" for node in nodes}
    else:
        names = {node.name for node in nodes}
    return GraphSnapshot(_fingerprint(records), tuple(sorted(names)), len(nodes))


def read_graph(config_file: str, level: str | None, script_timeout: float) -> GraphSnapshot:
    """Load the config, run its node sources and return the snapshot; this blocks.

    :raises ConfigError: when the config cannot be loaded.
    :raises NodeSourceError: when a node source fails.
    :raises KeyError: when `level` is not a level of the config.
    """
    config = load_config(config_file)
    forest = fetch_forest(config.settings, script_timeout=script_timeout)
    return snapshot_graph(forest, level)


def change_payload(
    current: GraphSnapshot,
    previous: str | None,
    previous_names: Sequence[str] | None,
    level: str | None,
) -> dict[str, Any]:
    """Return the event payload for a change from fingerprint `previous` to `current`.

    ``added`` and ``removed`` list at most 1000 names each; ``added_count`` and
    ``removed_count`` give the full numbers. All four are None when `previous_names` is
    unknown. A first observation (`previous` None) reports every name as added.
    """
    payload: dict[str, Any] = {
        "fingerprint": current.fingerprint,
        "previous": previous,
        "level": level,
        "nodes": current.nodes,
        "added": None,
        "removed": None,
        "added_count": None,
        "removed_count": None,
    }
    if previous is None:
        previous_names = ()
    if previous_names is not None:
        before, after = set(previous_names), set(current.names)
        added, removed = sorted(after - before), sorted(before - after)
        payload["added"] = added[:MAX_LISTED_NAMES]
        payload["removed"] = removed[:MAX_LISTED_NAMES]
        payload["added_count"] = len(added)
        payload["removed_count"] = len(removed)
    return payload


class _GraphPoller:
    """Poller that runs `read_graph` in a worker thread and logs each distinct failure once."""

    def __init__(
        self,
        config_file: str,
        level: str | None,
        script_timeout: float,
        logger: logging.Logger,
        label: str,
    ) -> None:
        self.config_file = config_file
        self.level = level
        self.script_timeout = script_timeout
        self.log = logger
        self.label = label
        self._last_error: str | None = None

    async def poll(self) -> GraphSnapshot | None:
        """Return the current snapshot, or None after logging why the poll failed.

        NOTE: cancelling the caller does not stop the worker thread; it ends when the node
        sources return, after at most `script_timeout` seconds per script run.
        """
        try:
            snapshot = await asyncio.to_thread(
                read_graph, self.config_file, self.level, self.script_timeout
            )
        except GRAPH_ERRORS as exc:
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_error:
                self.log.error(
                    "%s: polling the node graph of %s failed; keeping the last good "
                    "fingerprint and retrying at the next poll: %s",
                    self.label,
                    self.config_file,
                    message,
                )
            self._last_error = message
            return None
        if self._last_error is not None:
            self.log.info("%s: polling the node graph works again", self.label)
            self._last_error = None
        self.log.debug(
            "%s: %d nodes, fingerprint %s", self.label, snapshot.nodes, snapshot.fingerprint
        )
        return snapshot


@dataclass(frozen=True)
class _Reported:
    """The last graph a watcher reported: its fingerprint, and its names when known."""

    fingerprint: str
    names: tuple[str, ...] | None


class _GraphStateStore:
    """Access to the last reported graph in the asset's state store, when there is one.

    Airflow 3.3 injects ``asset_state_store`` into a watcher trigger before `run()`. It is
    None for a trigger that runs for a deferred task or outside the triggerer. The store only
    prevents a repeated event after a restart, so a failing store is logged and ignored.
    """

    def __init__(self, accessors: Any, logger: logging.Logger, label: str) -> None:
        self.accessors = accessors
        self.log = logger
        self.label = label

    async def load(self) -> _Reported | None:
        if self.accessors is None:
            return None
        try:
            value = await self.accessors.aget(STATE_KEY)
        except ValueError as exc:
            self._disable("reading", exc)
            return None
        # Any other failure is logged too: a watcher that raises is re-created from its
        # kwargs, and the new instance would report the current graph again.
        except Exception as exc:  # noqa: BLE001
            self.log.warning("%s: reading the stored fingerprint failed: %s", self.label, exc)
            return None
        return self._decode(value)

    async def save(self, snapshot: GraphSnapshot) -> None:
        if self.accessors is None:
            return
        names = list(snapshot.names) if len(snapshot.names) <= MAX_STORED_NAMES else None
        try:
            await self.accessors.aset(
                STATE_KEY, {"fingerprint": snapshot.fingerprint, "names": names}
            )
        except ValueError as exc:
            self._disable("writing", exc)
        except Exception as exc:  # noqa: BLE001 - as in load()
            self.log.warning("%s: storing the fingerprint failed: %s", self.label, exc)

    def _disable(self, action: str, exc: ValueError) -> None:
        # Airflow raises ValueError when one trigger watches several assets, because the
        # store then needs an asset to pick the row. Distinct `job` kwargs avoid that.
        self.log.warning(
            "%s: %s the asset state store failed (%s); the fingerprint is kept in memory only, "
            "so a triggerer restart reports the current graph again",
            self.label,
            action,
            exc,
        )
        self.accessors = None

    def _decode(self, value: Any) -> _Reported | None:
        if value is None:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("fingerprint"), str):
            self.log.warning("%s: ignoring an invalid stored value %r", self.label, value)
            return None
        names = value.get("names")
        valid_names = isinstance(names, list) and all(isinstance(name, str) for name in names)
        return _Reported(value["fingerprint"], tuple(names) if valid_names else None)


def _check_interval(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class NodeGraphTrigger(BaseEventTrigger):
    """Fire once per change of a Bistro node graph, forever; for an `AssetWatcher`.

    The first poll compares with the fingerprint stored for the asset. When nothing is
    stored (a new watcher, or no store), the first good poll fires, so a new continuous job
    runs once on its current nodes.

    :param config_file: the Bistro config whose node sources are polled.
    :param level: watch only the nodes of this level; None watches every level.
    :param poll_interval: seconds between polls.
    :param script_timeout: seconds each node-source script may run.
    :param job: the Bistro job whose asset this trigger feeds. It appears in logs, and it
        keeps the triggers of two jobs apart, so that each asset stores its own fingerprint.
    """

    def __init__(
        self,
        *,
        config_file: str,
        level: str | None = None,
        poll_interval: float = 60.0,
        script_timeout: float = 60.0,
        job: str | None = None,
    ) -> None:
        super().__init__()
        self.config_file = config_file
        self.level = level
        self.poll_interval = _check_interval("poll_interval", poll_interval)
        self.script_timeout = _check_interval("script_timeout", script_timeout)
        self.job = job

    @property
    def label(self) -> str:
        return f"node graph watcher (job={self.job}, level={self.level})"

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "config_file": self.config_file,
            "level": self.level,
            "poll_interval": self.poll_interval,
            "script_timeout": self.script_timeout,
            "job": self.job,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        poller = _GraphPoller(
            self.config_file, self.level, self.script_timeout, self.log, self.label
        )
        store = _GraphStateStore(self.asset_state_store, self.log, self.label)
        reported = await store.load()
        while True:
            current = await poller.poll()
            if current is not None and (
                reported is None or current.fingerprint != reported.fingerprint
            ):
                previous = reported.fingerprint if reported is not None else None
                names = reported.names if reported is not None else None
                payload = change_payload(current, previous, names, self.level)
                self.log.info(
                    "%s: node graph changed from %s to %s: %d nodes, %s added, %s removed",
                    self.label,
                    previous,
                    current.fingerprint,
                    current.nodes,
                    payload["added_count"],
                    payload["removed_count"],
                )
                # Store only after the event is handed over: a crash in between repeats the
                # event after the restart instead of losing it.
                yield TriggerEvent(payload)
                reported = _Reported(current.fingerprint, current.names)
                await store.save(current)
            await asyncio.sleep(self.poll_interval)


class NodeGraphChangeTrigger(BaseTrigger):
    """Fire once when a Bistro node graph no longer has fingerprint `since`, then return.

    ``added`` and ``removed`` are None when the first poll already differs, because only
    a graph that this trigger saw at `since` itself has known names.

    :param since: the fingerprint to wait away from (`graph_fingerprint`).
    :param config_file: the Bistro config whose node sources are polled.
    :param level: watch only the nodes of this level; None watches every level.
    :param poll_interval: seconds between polls.
    :param script_timeout: seconds each node-source script may run.
    """

    def __init__(
        self,
        *,
        config_file: str,
        since: str,
        level: str | None = None,
        poll_interval: float = 60.0,
        script_timeout: float = 60.0,
    ) -> None:
        super().__init__()
        self.config_file = config_file
        self.since = since
        self.level = level
        self.poll_interval = _check_interval("poll_interval", poll_interval)
        self.script_timeout = _check_interval("script_timeout", script_timeout)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {
            "config_file": self.config_file,
            "since": self.since,
            "level": self.level,
            "poll_interval": self.poll_interval,
            "script_timeout": self.script_timeout,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        label = f"node graph change (level={self.level})"
        poller = _GraphPoller(self.config_file, self.level, self.script_timeout, self.log, label)
        baseline: GraphSnapshot | None = None
        while True:
            current = await poller.poll()
            if current is not None and current.fingerprint != self.since:
                names = baseline.names if baseline is not None else None
                yield TriggerEvent(change_payload(current, self.since, names, self.level))
                return
            if current is not None:
                baseline = current
            await asyncio.sleep(self.poll_interval)
