"""Rules for watching a node graph: fingerprints, both triggers, the sensor, continuous DAGs.

The triggers run in-process on asyncio against a real `script` node source that prints the
names in a file the tests rewrite. Each script run appends to a call log, so "several polls
without an event" is counted in polls, not in seconds. Asyncio timeouts here only stop a
hung test; no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from airflow.sdk import PokeReturnValue
from airflow.triggers.base import BaseTrigger

from bistro_provider.core.config import load_config
from bistro_provider.core.forest import Forest, Node
from bistro_provider.dag_factory import bistro_job_dag, dags_from_config
from bistro_provider.get_provider_info import get_provider_info
from bistro_provider.options import BistroOptions
from bistro_provider.sensors.node_graph import NodeGraphSensor
from bistro_provider.triggers.node_graph import (
    MAX_LISTED_NAMES,
    STATE_KEY,
    NodeGraphChangeTrigger,
    NodeGraphTrigger,
    change_payload,
    graph_fingerprint,
    read_graph,
    snapshot_graph,
)

POLL = 0.05
TRIGGER_MODULE = "bistro_provider.triggers.node_graph"
GUARD_SECONDS = 30.0

NODE_SCRIPT = """\
#!{python}
import pathlib
import sys

folder = pathlib.Path(__file__).parent
with open(folder / "calls.log", "a") as calls:
    calls.write("call\\n")
if (folder / "fail").exists():
    print("node list unavailable", file=sys.stderr)
    sys.exit(1)
sys.stdout.write((folder / "nodes.txt").read_text())
"""


@dataclass
class GraphFiles:
    """A config whose only node source is a script listing the names in nodes.txt."""

    root: Path

    @property
    def config_file(self) -> str:
        return str(self.root / "bistro.json")

    def write_nodes(self, *names: str) -> None:
        # Replace atomically, so a poll never reads a half-written list.
        partial = self.root / "nodes.txt.partial"
        partial.write_text("".join(f"{name}\n" for name in names))
        os.replace(partial, self.root / "nodes.txt")

    def set_failing(self, failing: bool) -> None:
        flag = self.root / "fail"
        if failing:
            flag.write_text("")
        else:
            flag.unlink(missing_ok=True)

    def calls(self) -> int:
        log = self.root / "calls.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    def fingerprint(self) -> str:
        return read_graph(self.config_file, "host", 10.0).fingerprint


@pytest.fixture
def graph(tmp_path: Path) -> GraphFiles:
    script = tmp_path / "list_nodes.py"
    script.write_text(NODE_SCRIPT.format(python=sys.executable))
    script.chmod(0o755)
    config = {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": ["host"],
                "node_sources": [
                    {
                        "source": "script",
                        "prefs": {"parent_level": "instance", "script": str(script)},
                    }
                ],
            },
            "resources": {},
        },
        "bistro_job->watch": {
            "owner": "tests",
            "command": ["/bin/true"],
            "airflow": {"continuous": True, "poll_interval": 7},
        },
        "bistro_job->plain": {"owner": "tests", "command": ["/bin/true"]},
    }
    (tmp_path / "bistro.json").write_text(json.dumps(config))
    files = GraphFiles(tmp_path)
    files.write_nodes("a", "b")
    return files


class FakeAssetStateStore:
    """Stands in for Airflow 3.3's AssetStateStoreAccessors of a single watched asset.

    Values go through JSON like the real store's database column.
    """

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    async def aset(self, key: str, value: Any) -> None:
        if value is None:
            raise ValueError("the asset state store does not accept None")
        self.values[key] = json.dumps(value)


class SeveralAssetsStore(FakeAssetStateStore):
    """Fails like the real accessors do when one trigger watches two assets."""

    async def aget(self, key: str, default: Any = None) -> Any:
        raise ValueError("Task has 2 concrete inlets and outlets")

    async def aset(self, key: str, value: Any) -> None:
        raise ValueError("Task has 2 concrete inlets and outlets")


class EventCollector:
    """Consumes a trigger's events in a background task."""

    def __init__(self, trigger: BaseTrigger) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.finished = False
        self.task = asyncio.create_task(self._consume(trigger))

    async def _consume(self, trigger: BaseTrigger) -> None:
        async for event in trigger.run():
            self.payloads.append(event.payload)
        self.finished = True

    async def stop(self) -> None:
        self.task.cancel()
        with suppress(asyncio.CancelledError):
            await self.task


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait until `condition()` holds; fail with `what` if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GUARD_SECONDS
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


async def wait_for_polls(graph: GraphFiles, count: int) -> None:
    # One more script run than `count` has started, so `count` polls have finished.
    target = graph.calls() + count + 1
    await wait_until(lambda: graph.calls() >= target, f"{count} more polls")


def make_trigger(graph: GraphFiles, store: Any = None) -> NodeGraphTrigger:
    trigger = NodeGraphTrigger(
        config_file=graph.config_file, level="host", poll_interval=POLL, job="watch"
    )
    trigger.asset_state_store = store
    return trigger


# --- fingerprints ---------------------------------------------------------------------


def make_forest(
    hosts: list[tuple[str, bool, frozenset[str]]], dbs: list[tuple[str, str]]
) -> Forest:
    forest = Forest(("instance", "host", "db", "worker"))
    by_name = {}
    for name, enabled, tags in hosts:
        by_name[name] = forest.add(
            Node(name, 1, parent=forest.instance, enabled=enabled, tags=tags)
        )
    for name, parent in dbs:
        forest.add(Node(name, 2, parent=by_name[parent]))
    return forest


BASE_HOSTS = [("h1", True, frozenset()), ("h2", True, frozenset({"ssd"}))]
BASE_DBS = [("d1", "h1"), ("d2", "h2")]


def test_fingerprint_ignores_fetch_order() -> None:
    forward = make_forest(BASE_HOSTS, BASE_DBS)
    backward = make_forest(BASE_HOSTS[::-1], BASE_DBS[::-1])
    assert graph_fingerprint(forward) == graph_fingerprint(backward)


def test_fingerprint_is_sha256_hex() -> None:
    fingerprint = graph_fingerprint(make_forest(BASE_HOSTS, BASE_DBS))
    assert len(fingerprint) == 64
    assert int(fingerprint, 16) >= 0


@pytest.mark.parametrize(
    ("hosts", "dbs"),
    [
        pytest.param(BASE_HOSTS + [("h3", True, frozenset())], BASE_DBS, id="node-added"),
        pytest.param(BASE_HOSTS, BASE_DBS[:1], id="node-removed"),
        pytest.param([("h1", False, frozenset()), BASE_HOSTS[1]], BASE_DBS, id="node-disabled"),
        pytest.param(
            [BASE_HOSTS[0], ("h2", True, frozenset({"hdd"}))], BASE_DBS, id="tags-changed"
        ),
        pytest.param(BASE_HOSTS, [("d1", "h2"), ("d2", "h2")], id="parent-changed"),
    ],
)
def test_fingerprint_changes_with_graph(
    hosts: list[tuple[str, bool, frozenset[str]]], dbs: list[tuple[str, str]]
) -> None:
    before = graph_fingerprint(make_forest(BASE_HOSTS, BASE_DBS))
    assert graph_fingerprint(make_forest(hosts, dbs)) != before


def test_level_fingerprint_ignores_other_levels() -> None:
    before = make_forest(BASE_HOSTS, BASE_DBS)
    after = make_forest(BASE_HOSTS, BASE_DBS + [("d3", "h1")])
    assert graph_fingerprint(after, "host") == graph_fingerprint(before, "host")
    assert graph_fingerprint(after, "db") != graph_fingerprint(before, "db")


def test_fingerprint_of_unknown_level_raises() -> None:
    with pytest.raises(KeyError, match="unknown level 'rack'"):
        graph_fingerprint(make_forest(BASE_HOSTS, BASE_DBS), "rack")


def test_unfiltered_snapshot_qualifies_names() -> None:
    snapshot = snapshot_graph(make_forest(BASE_HOSTS, BASE_DBS))
    assert "host/h1" in snapshot.names
    assert "db/d2" in snapshot.names
    assert snapshot.nodes == 5


def test_payload_caps_listed_names() -> None:
    names = tuple(f"n{index:05d}" for index in range(MAX_LISTED_NAMES + 5))
    current = snapshot_graph(make_forest([(name, True, frozenset()) for name in names], []), "host")
    payload = change_payload(current, "old", (), "host")
    assert len(payload["added"]) == MAX_LISTED_NAMES
    assert payload["added_count"] == MAX_LISTED_NAMES + 5


def test_payload_without_previous_names() -> None:
    current = snapshot_graph(make_forest(BASE_HOSTS, BASE_DBS), "host")
    payload = change_payload(current, "old", None, "host")
    assert payload["added"] is None
    assert payload["removed_count"] is None


# --- NodeGraphTrigger -----------------------------------------------------------------


def test_trigger_serializes_classpath_and_kwargs() -> None:
    trigger = NodeGraphTrigger(config_file="/c.json", level="host", poll_interval=5, job="j")
    classpath, kwargs = trigger.serialize()
    assert classpath == "bistro_provider.triggers.node_graph.NodeGraphTrigger"
    assert NodeGraphTrigger(**kwargs).serialize() == (classpath, kwargs)


@pytest.mark.parametrize("interval", [pytest.param(0, id="zero"), pytest.param(-1, id="negative")])
def test_trigger_rejects_non_positive_interval(interval: float) -> None:
    with pytest.raises(ValueError, match="poll_interval must be a positive number"):
        NodeGraphTrigger(config_file="/c.json", poll_interval=interval)


def test_trigger_fires_without_stored_state(graph: GraphFiles) -> None:
    async def scenario() -> dict[str, Any]:
        collector = EventCollector(make_trigger(graph))
        await wait_until(lambda: len(collector.payloads) == 1, "the first event")
        await collector.stop()
        return collector.payloads[0]

    payload = asyncio.run(scenario())
    assert payload["previous"] is None
    assert payload["added"] == ["a", "b"]
    assert payload["nodes"] == 2
    assert payload["fingerprint"] == graph.fingerprint()


def test_trigger_fires_once_per_change(graph: GraphFiles) -> None:
    async def scenario() -> tuple[list[int], list[dict[str, Any]]]:
        collector = EventCollector(make_trigger(graph))
        counts = []
        await wait_until(lambda: len(collector.payloads) == 1, "the first event")
        await wait_for_polls(graph, 3)
        counts.append(len(collector.payloads))
        graph.write_nodes("a", "b", "c")
        await wait_until(lambda: len(collector.payloads) == 2, "the event for c")
        await wait_for_polls(graph, 3)
        counts.append(len(collector.payloads))
        graph.write_nodes("b", "c")
        await wait_until(lambda: len(collector.payloads) == 3, "the event without a")
        await wait_for_polls(graph, 3)
        counts.append(len(collector.payloads))
        await collector.stop()
        return counts, collector.payloads

    counts, payloads = asyncio.run(scenario())
    assert counts == [1, 2, 3]
    assert payloads[1]["added"] == ["c"]
    assert payloads[1]["removed"] == []
    assert payloads[1]["previous"] == payloads[0]["fingerprint"]
    assert payloads[2]["added"] == []
    assert payloads[2]["removed"] == ["a"]
    assert payloads[2]["nodes"] == 2


def test_trigger_survives_failing_script(graph: GraphFiles) -> None:
    async def scenario() -> tuple[list[int], list[dict[str, Any]], bool]:
        collector = EventCollector(make_trigger(graph))
        counts = []
        await wait_until(lambda: len(collector.payloads) == 1, "the first event")
        graph.set_failing(True)
        await wait_for_polls(graph, 3)
        counts.append(len(collector.payloads))
        graph.set_failing(False)
        await wait_for_polls(graph, 3)
        counts.append(len(collector.payloads))
        graph.write_nodes("a", "b", "d")
        await wait_until(lambda: len(collector.payloads) == 2, "the event for d")
        running = not collector.task.done()
        await collector.stop()
        return counts, collector.payloads, running

    counts, payloads, running = asyncio.run(scenario())
    assert counts == [1, 1]
    assert payloads[1]["previous"] == payloads[0]["fingerprint"]
    assert payloads[1]["added"] == ["d"]
    assert running


def test_trigger_skips_event_while_config_invalid(graph: GraphFiles) -> None:
    good_config = Path(graph.config_file).read_text()

    async def scenario(loads: mock.MagicMock) -> tuple[int, int]:
        collector = EventCollector(make_trigger(graph))
        await wait_until(lambda: len(collector.payloads) == 1, "the first event")
        Path(graph.config_file).write_text("{not json")
        graph.write_nodes("z")
        calls = graph.calls()
        target = loads.call_count + 4
        await wait_until(lambda: loads.call_count >= target, "3 polls of the broken config")
        result = (len(collector.payloads), graph.calls() - calls)
        Path(graph.config_file).write_text(good_config)
        await wait_until(lambda: len(collector.payloads) == 2, "the event after the fix")
        await collector.stop()
        return result

    with mock.patch(f"{TRIGGER_MODULE}.load_config", wraps=load_config) as loads:
        events, script_runs = asyncio.run(scenario(loads))
    assert events == 1
    assert script_runs <= 1  # at most the run that was under way when the config broke


def test_trigger_stores_fingerprint_after_event(graph: GraphFiles) -> None:
    store = FakeAssetStateStore()

    async def scenario() -> None:
        collector = EventCollector(make_trigger(graph, store))
        await wait_until(lambda: STATE_KEY in store.values, "the stored fingerprint")
        await collector.stop()

    asyncio.run(scenario())
    stored = json.loads(store.values[STATE_KEY])
    assert stored["fingerprint"] == graph.fingerprint()
    assert stored["names"] == ["a", "b"]


def test_stored_state_survives_new_trigger(graph: GraphFiles) -> None:
    store = FakeAssetStateStore()

    async def scenario() -> tuple[int, list[dict[str, Any]]]:
        first = EventCollector(make_trigger(graph, store))
        await wait_until(lambda: STATE_KEY in store.values, "the stored fingerprint")
        await first.stop()
        second = EventCollector(make_trigger(graph, store))
        await wait_for_polls(graph, 3)
        quiet = len(second.payloads)
        graph.write_nodes("a", "b", "c")
        await wait_until(lambda: len(second.payloads) == 1, "the event for c")
        await second.stop()
        return quiet, first.payloads + second.payloads

    quiet, payloads = asyncio.run(scenario())
    assert quiet == 0
    assert payloads[1]["previous"] == payloads[0]["fingerprint"]
    assert payloads[1]["added"] == ["c"]
    assert payloads[1]["removed"] == []


def test_trigger_works_when_store_rejects_access(graph: GraphFiles) -> None:
    async def scenario() -> list[dict[str, Any]]:
        collector = EventCollector(make_trigger(graph, SeveralAssetsStore()))
        await wait_until(lambda: len(collector.payloads) == 1, "the first event")
        graph.write_nodes("a")
        await wait_until(lambda: len(collector.payloads) == 2, "the event without b")
        await collector.stop()
        return collector.payloads

    payloads = asyncio.run(scenario())
    assert payloads[1]["removed"] == ["b"]


def test_trigger_ignores_invalid_stored_value(graph: GraphFiles) -> None:
    store = FakeAssetStateStore()
    store.values[STATE_KEY] = json.dumps("not an object")

    async def scenario() -> dict[str, Any]:
        collector = EventCollector(make_trigger(graph, store))
        await wait_until(lambda: len(collector.payloads) == 1, "the first event")
        await collector.stop()
        return collector.payloads[0]

    assert asyncio.run(scenario())["previous"] is None


# --- NodeGraphChangeTrigger -----------------------------------------------------------


def make_change_trigger(graph: GraphFiles, since: str) -> NodeGraphChangeTrigger:
    return NodeGraphChangeTrigger(
        config_file=graph.config_file, since=since, level="host", poll_interval=POLL
    )


def test_change_trigger_fires_once_and_returns(graph: GraphFiles) -> None:
    since = graph.fingerprint()

    async def scenario() -> tuple[int, EventCollector]:
        collector = EventCollector(make_change_trigger(graph, since))
        await wait_for_polls(graph, 3)
        quiet = len(collector.payloads)
        graph.write_nodes("a", "b", "c")
        await wait_until(lambda: collector.finished, "the trigger to return")
        return quiet, collector

    quiet, collector = asyncio.run(scenario())
    assert quiet == 0
    assert len(collector.payloads) == 1
    assert collector.payloads[0]["previous"] == since
    assert collector.payloads[0]["added"] == ["c"]


def test_change_trigger_fires_for_stale_since(graph: GraphFiles) -> None:
    async def scenario() -> EventCollector:
        collector = EventCollector(make_change_trigger(graph, "0" * 64))
        await wait_until(lambda: collector.finished, "the trigger to return")
        return collector

    payload = asyncio.run(scenario()).payloads[0]
    assert payload["fingerprint"] == graph.fingerprint()
    assert payload["added"] is None


def test_change_trigger_serializes_since() -> None:
    trigger = NodeGraphChangeTrigger(config_file="/c.json", since="abc", level=None)
    classpath, kwargs = trigger.serialize()
    assert classpath == "bistro_provider.triggers.node_graph.NodeGraphChangeTrigger"
    assert kwargs["since"] == "abc"
    assert NodeGraphChangeTrigger(**kwargs).serialize() == (classpath, kwargs)


# --- NodeGraphSensor ------------------------------------------------------------------


def make_sensor(graph: GraphFiles, **kwargs: Any) -> NodeGraphSensor:
    return NodeGraphSensor(
        task_id="wait_for_nodes", config_file=graph.config_file, level="host", **kwargs
    )


def test_sensor_poke_false_while_unchanged(graph: GraphFiles) -> None:
    sensor = make_sensor(graph, since=graph.fingerprint(), deferrable=False)
    assert sensor.poke({}) is False


def test_sensor_poke_returns_payload_after_change(graph: GraphFiles) -> None:
    since = graph.fingerprint()
    sensor = make_sensor(graph, since=since, deferrable=False)
    graph.write_nodes("a")
    result = sensor.poke({})
    assert isinstance(result, PokeReturnValue)
    assert result.is_done is True
    assert result.xcom_value["previous"] == since
    assert result.xcom_value["fingerprint"] == graph.fingerprint()


def test_sensor_poke_counts_failure_as_no_change(graph: GraphFiles) -> None:
    sensor = make_sensor(graph, since="0" * 64, deferrable=False)
    graph.set_failing(True)
    assert sensor.poke({}) is False


def test_sensor_defers_with_start_fingerprint(graph: GraphFiles) -> None:
    sensor = make_sensor(graph, poke_interval=5, timeout=600)
    with mock.patch.object(sensor, "defer") as defer:
        sensor.execute({})
    defer.assert_called_once()
    trigger = defer.call_args.kwargs["trigger"]
    assert isinstance(trigger, NodeGraphChangeTrigger)
    assert trigger.since == graph.fingerprint()
    assert trigger.level == "host"
    assert trigger.poll_interval == 5.0
    assert defer.call_args.kwargs["method_name"] == "execute_complete"
    assert defer.call_args.kwargs["timeout"].total_seconds() == 600


def test_sensor_skips_defer_after_change(graph: GraphFiles) -> None:
    since = graph.fingerprint()
    graph.write_nodes("a", "b", "c")
    sensor = make_sensor(graph, since=since)
    with mock.patch.object(sensor, "defer") as defer:
        result = sensor.execute({})
    defer.assert_not_called()
    assert result["previous"] == since
    assert result["fingerprint"] == graph.fingerprint()


def test_sensor_execute_complete_returns_event(graph: GraphFiles) -> None:
    event = {"fingerprint": "new", "previous": "old", "nodes": 3}
    assert make_sensor(graph).execute_complete({}, event) == event


def test_sensor_poke_mode_waits_from_start(graph: GraphFiles) -> None:
    sensor = make_sensor(graph, deferrable=False, poke_interval=0.01)
    polls = []

    def poke_then_change(context: Any) -> bool | PokeReturnValue:
        polls.append(sensor.since)
        if len(polls) == 2:
            graph.write_nodes("a", "b", "e")
        return NodeGraphSensor.poke(sensor, context)

    with mock.patch.object(sensor, "poke", side_effect=poke_then_change):
        result = sensor.execute({})
    assert len(polls) == 2
    assert polls[0] == polls[1]
    assert result["added"] == ["e"]


def test_sensor_reschedule_requires_since(graph: GraphFiles) -> None:
    with pytest.raises(ValueError, match="needs since="):
        make_sensor(graph, deferrable=False, mode="reschedule")


# --- continuous job DAGs --------------------------------------------------------------


@pytest.fixture
def options() -> Iterator[BistroOptions]:
    chosen = BistroOptions(pool="default_pool", script_timeout=9.0)
    with mock.patch.object(BistroOptions, "from_airflow", return_value=chosen):
        yield chosen


def test_continuous_job_dag_watches_task_level(graph: GraphFiles, options: BistroOptions) -> None:
    dag = dags_from_config(graph.config_file)["bistro_watch"]
    asset = dag.timetable.asset_condition.objects[0]
    trigger = asset.watchers[0].trigger
    assert asset.name == "bistro-nodes-watch"
    assert asset.uri == "bistro://watch/nodes"
    assert isinstance(trigger, NodeGraphTrigger)
    assert trigger.level == "host"
    assert trigger.poll_interval == 7.0
    assert trigger.script_timeout == 9.0
    assert dag.max_active_runs == 4


def test_plain_job_dag_keeps_manual_schedule(graph: GraphFiles, options: BistroOptions) -> None:
    dag = dags_from_config(graph.config_file)["bistro_plain"]
    assert dag.timetable.asset_condition is None
    assert dag.schedule is None


def test_continuous_job_rejects_schedule(graph: GraphFiles, options: BistroOptions) -> None:
    with pytest.raises(ValueError, match="remove schedule='@daily'"):
        bistro_job_dag("watch", config_file=graph.config_file, continuous=True, schedule="@daily")


def test_continuous_unknown_job_lists_jobs(graph: GraphFiles, options: BistroOptions) -> None:
    with pytest.raises(ValueError, match="defined jobs: plain, watch"):
        bistro_job_dag("nope", config_file=graph.config_file, continuous=True)


def test_provider_info_lists_trigger_module() -> None:
    modules = [
        module for entry in get_provider_info()["triggers"] for module in entry["python-modules"]
    ]
    assert modules == ["bistro_provider.triggers.node_graph"]
