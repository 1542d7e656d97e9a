"""The live config and node list: last good versions survive every kind of failure."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bistro_provider.core.live import LiveForest, RefreshIntervals


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_config(path: Path, hosts: dict[str, list[str]], **settings: Any) -> None:
    data = {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": ["host", "db"],
                "node_sources": [{"source": "manual", "prefs": hosts}],
            },
            "resources": {"host": {"slots": {"limit": 2, "default": 1}}},
            **settings,
        },
        "bistro_job->job": {"owner": "test"},
    }
    path.write_text(json.dumps(data))
    stamp = path.stat().st_mtime + 1 + len(hosts)
    os.utime(path, (stamp, stamp))


def db_names(live: LiveForest) -> list[str]:
    assert live.forest is not None
    return sorted(live.forest.distinct_names("db"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_live(path: Path, clock: Clock, **intervals: float) -> LiveForest:
    return LiveForest(
        str(path),
        RefreshIntervals(config_update=1, nodes_update=10, nodes_retry=2, **intervals),
        background=False,
        clock=clock,
    )


def test_broken_config_keeps_last_good(tmp_path, clock):
    path = tmp_path / "bistro.json"
    write_config(path, {"h1": ["d1"]})
    live = make_live(path, clock)
    live.poll()
    good = live.config
    path.write_text("{not json")
    os.utime(path, (path.stat().st_mtime + 5, path.stat().st_mtime + 5))
    clock.now += 2
    live.poll()
    assert live.config is good
    assert live.config_error is not None
    assert "JSON" in live.config_error or "YAML" in live.config_error


def test_fixed_config_clears_error(tmp_path, clock):
    path = tmp_path / "bistro.json"
    write_config(path, {"h1": ["d1"]})
    live = make_live(path, clock)
    live.poll()
    path.write_text("[]")
    os.utime(path, (path.stat().st_mtime + 5, path.stat().st_mtime + 5))
    clock.now += 2
    live.poll()
    write_config(path, {"h1": ["d1", "d2"]})
    clock.now += 2
    live.poll()
    assert live.config_error is None
    assert db_names(live) == ["d1", "d2"]


def test_failing_source_keeps_last_node_list(tmp_path, clock):
    script = tmp_path / "nodes.sh"
    script.write_text("#!/bin/sh\nif [ -f \"$0.fail\" ]; then exit 3; fi\necho d1\necho d2\n")
    script.chmod(0o755)
    path = tmp_path / "bistro.json"
    data = {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": ["db"],
                "node_sources": [
                    {"source": "script", "prefs": {"parent_level": "instance", "script": str(script)}}
                ],
            },
            "resources": {},
        },
        "bistro_job->job": {"owner": "test"},
    }
    path.write_text(json.dumps(data))
    live = make_live(path, clock)
    live.poll()
    assert db_names(live) == ["d1", "d2"]
    Path(f"{script}.fail").touch()
    clock.now += 11
    live.poll()
    assert db_names(live) == ["d1", "d2"]
    assert live.nodes_error is not None
    assert "exit" in live.nodes_error


def test_failed_fetch_retries_sooner(tmp_path, clock):
    calls = []

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls.append(clock.now)
        raise RuntimeError("source down")

    path = tmp_path / "bistro.json"
    write_config(path, {"h1": ["d1"]})
    live = LiveForest(
        str(path),
        RefreshIntervals(config_update=100, nodes_update=60, nodes_retry=5),
        background=False,
        clock=clock,
        fetch=failing,
    )
    live.poll()
    clock.now += 5
    live.poll()
    assert calls == [1000.0, 1005.0]


def test_mass_deletion_is_held_back(tmp_path, clock):
    path = tmp_path / "bistro.json"
    hosts = {f"h{i}": [f"d{i}"] for i in range(10)}
    write_config(path, hosts)
    live = make_live(path, clock)
    live.poll()
    before = live.forest
    few = {f"h{i}": [f"d{i}"] for i in range(4)}
    fetches = iter([few])

    def shrunk(settings: Any, **kwargs: Any) -> Any:
        from bistro_provider.nodes import fetch_forest

        return fetch_forest(_with_hosts(settings, next(fetches)), **kwargs)

    live._fetch = shrunk
    clock.now += 11
    live.poll()
    assert live.forest is before
    assert live.nodes_error is not None
    assert "6 of 10" in live.nodes_error


def test_empty_level_is_held_back_even_when_allowed(tmp_path, clock):
    path = tmp_path / "bistro.json"
    write_config(path, {"h1": ["d1"], "h2": ["d2"]})
    live = make_live(path, clock, max_deletion_fraction=1.0)
    live.poll()
    before = live.forest

    def empty(settings: Any, **kwargs: Any) -> Any:
        from bistro_provider.nodes import fetch_forest

        return fetch_forest(_with_hosts(settings, {"h1": [], "h2": []}), **kwargs)

    live._fetch = empty
    clock.now += 11
    live.poll()
    assert live.forest is before
    assert "came back empty" in (live.nodes_error or "")


def test_small_deletion_is_accepted(tmp_path, clock):
    path = tmp_path / "bistro.json"
    write_config(path, {f"h{i}": [f"d{i}"] for i in range(4)})
    live = make_live(path, clock)
    live.poll()

    def one_less(settings: Any, **kwargs: Any) -> Any:
        from bistro_provider.nodes import fetch_forest

        hosts = {f"h{i}": [f"d{i}"] for i in range(3)}
        return fetch_forest(_with_hosts(settings, hosts), **kwargs)

    live._fetch = one_less
    clock.now += 11
    live.poll()
    assert db_names(live) == ["d0", "d1", "d2"]
    assert live.nodes_error is None


def test_config_edit_of_sources_is_not_a_mass_deletion(tmp_path, clock):
    path = tmp_path / "bistro.json"
    write_config(path, {f"h{i}": [f"d{i}"] for i in range(10)})
    live = make_live(path, clock)
    live.poll()
    write_config(path, {"h0": ["d0"]})
    clock.now += 2
    live.poll()
    assert db_names(live) == ["d0"]
    assert live.nodes_error is None


def _with_hosts(settings: Any, hosts: dict[str, list[str]]) -> Any:
    from dataclasses import replace

    from bistro_provider.core.model import NodeSourceSpec

    return replace(settings, node_sources=(NodeSourceSpec("manual", hosts, 0),))
