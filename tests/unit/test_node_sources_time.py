"""Rules of the `add_time` node source and its cron specs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bistro_provider.core.errors import NodeSourceError
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import NodeSourceSpec, Settings
from bistro_provider.nodes import (
    add_time,
    fetch_forest,
    source_prefs_warnings,
    validate_source_prefs,
)

LEVELS = ("instance", "host", "time", "worker")
NEW_YORK = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")


def make_settings(*sources: tuple[str, dict[str, Any]]) -> Settings:
    specs = tuple(NodeSourceSpec(name, prefs, index) for index, (name, prefs) in enumerate(sources))
    return Settings(levels=LEVELS, resources={level: {} for level in LEVELS}, node_sources=specs)


def time_prefs(*items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"parent_level": "host", "schedule": list(items), **extra}


def fetch_times(prefs: dict[str, Any], now: float, hosts: tuple[str, ...] = ("h1",)) -> Forest:
    settings = make_settings(
        ("manual", {host: [] for host in hosts}),
        ("add_time", prefs),
    )
    return fetch_forest(settings, now=now)


def times_of(forest: Forest) -> list[int]:
    return [int(node.name.rsplit(":", 1)[1]) for node in forest.nodes("time")]


def epoch_item(selector: Any, lifetime: int, **extra: Any) -> dict[str, Any]:
    return {"cron": {"epoch": selector}, "lifetime": lifetime, **extra}


def issues_for(prefs: dict[str, Any]) -> list[str]:
    spec = NodeSourceSpec("add_time", prefs, 0)
    return [str(issue) for issue in validate_source_prefs(spec, make_settings())]


def local(timestamp: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(timestamp, zone)


# ---- the lifetime window and enabled state ----


def test_epoch_period_nodes_within_lifetime() -> None:
    item = epoch_item({"period": 300}, 900, enabled_lifetime=600)
    forest = fetch_times(time_prefs(item), now=1000)

    # now - lifetime < t <= now gives 100 < t <= 1000, so t = 0 is too old.
    assert [node.name for node in forest.nodes("time")] == ["h1:300", "h1:600", "h1:900"]
    assert [node.parent.name for node in forest.nodes("time") if node.parent] == ["h1"] * 3


def test_epoch_enabled_only_within_enabled_lifetime() -> None:
    item = epoch_item({"period": 300}, 900, enabled_lifetime=600)
    forest = fetch_times(time_prefs(item), now=1000)

    # now - t < 600 holds for t = 600 (400) and t = 900 (100), not for t = 300 (700).
    assert {node.name: node.enabled for node in forest.nodes("time")} == {
        "h1:300": False,
        "h1:600": True,
        "h1:900": True,
    }


def test_window_excludes_oldest_includes_now() -> None:
    forest = fetch_times(time_prefs(epoch_item({"period": 100}, 300)), now=1000)

    assert times_of(forest) == [800, 900, 1000]


def test_window_with_fractional_now() -> None:
    forest = fetch_times(time_prefs(epoch_item({"period": 100}, 300)), now=1000.5)

    assert times_of(forest) == [800, 900, 1000]


def test_enabled_lifetime_defaults_to_lifetime() -> None:
    forest = fetch_times(time_prefs(epoch_item({"period": 100}, 300)), now=1000)

    assert all(node.enabled for node in forest.nodes("time"))


def test_enabled_lifetime_zero_disables_all() -> None:
    forest = fetch_times(time_prefs(epoch_item({"period": 100}, 300, enabled_lifetime=0)), 1000)

    assert times_of(forest) == [800, 900, 1000]
    assert not any(node.enabled for node in forest.nodes("time"))


def test_same_time_from_two_items_merges() -> None:
    first = epoch_item({"period": 300}, 900, tags=["a"])
    second = epoch_item([600, 900], 900, tags=["b"], enabled_lifetime=350)
    forest = fetch_times(time_prefs(first, second), now=1000)
    nodes = {node.name: node for node in forest.nodes("time")}

    assert list(nodes) == ["h1:300", "h1:600", "h1:900"]
    assert nodes["h1:300"].tags == frozenset({"a"})
    assert nodes["h1:600"].tags == frozenset({"a", "b"})
    assert nodes["h1:900"].tags == frozenset({"a", "b"})
    # The second item disables t = 600 (1000 - 600 >= 350), so the merged node is disabled.
    assert nodes["h1:600"].enabled is False
    assert nodes["h1:900"].enabled is True
    assert nodes["h1:300"].enabled is True


def test_every_parent_gets_time_nodes() -> None:
    forest = fetch_times(time_prefs(epoch_item(500, 900)), now=1000, hosts=("h1", "h2"))

    assert [node.name for node in forest.nodes("time")] == ["h1:500", "h2:500"]


def test_nodes_in_time_order() -> None:
    item = epoch_item([900, 200, 500], 900)
    forest = fetch_times(time_prefs(item), now=1000)

    assert times_of(forest) == [200, 500, 900]


# ---- epoch selectors ----


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        pytest.param(700, [700], id="single-value"),
        pytest.param([0, 700, 950, 1001], [700, 950], id="list-filtered-by-window"),
        pytest.param({"period": 200, "start": 150}, [150, 350, 550, 750, 950], id="start"),
        pytest.param({"period": 200, "start": 150, "end": 600}, [150, 350, 550], id="end"),
        pytest.param({"start": 995}, [995, 996, 997, 998, 999, 1000], id="period-default-1"),
        pytest.param({"period": 300, "start": 2000}, [], id="start-after-now"),
    ],
)
def test_epoch_selector_forms(selector: Any, expected: list[int]) -> None:
    forest = fetch_times(time_prefs(epoch_item(selector, 1000)), now=1000)

    assert times_of(forest) == expected


def test_epoch_times_never_negative() -> None:
    forest = fetch_times(time_prefs(epoch_item({"period": 100}, 10_000)), now=250)

    assert times_of(forest) == [0, 100, 200]


# ---- standard fields ----


def test_standard_half_hours_in_one_hour() -> None:
    now = int(datetime(2026, 1, 1, 1, 0, tzinfo=UTC).timestamp())
    item = {"cron": {"minute": [0, 30]}, "lifetime": 3600}
    forest = fetch_times(time_prefs(item), now=now)

    # 00:00 is exactly now - lifetime, so it is excluded; 01:00 is now, so it is included.
    assert times_of(forest) == [now - 1800, now]


def test_standard_cron_string_field() -> None:
    now = int(datetime(2026, 1, 1, 1, 0, tzinfo=UTC).timestamp())
    item = {"cron": {"minute": "*/15"}, "lifetime": 3600}
    forest = fetch_times(time_prefs(item), now=now)

    assert [local(t, UTC).minute for t in times_of(forest)] == [15, 30, 45, 0]


def test_standard_hour_selector_object() -> None:
    now = int(datetime(2026, 1, 1, 23, 0, tzinfo=UTC).timestamp())
    item = {"cron": {"minute": 0, "hour": {"start": 9, "end": 17, "period": 4}}, "lifetime": 86400}
    forest = fetch_times(time_prefs(item), now=now)

    assert [local(t, UTC).hour for t in times_of(forest)] == [9, 13, 17]


def test_standard_uses_item_timezone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    now = int(datetime(2026, 1, 2, 0, 0, tzinfo=UTC).timestamp())
    item = {"cron": {"minute": 0, "hour": 9}, "timezone": "Asia/Tokyo", "lifetime": 86400}
    forest = fetch_times(time_prefs(item), now=now)

    [match] = times_of(forest)
    assert local(match, tokyo).hour == 9
    assert local(match, UTC).hour == 0


@pytest.mark.parametrize(
    ("day", "weekday"),
    [
        pytest.param(1, "Sunday", id="one-is-sunday"),
        pytest.param(7, "Saturday", id="seven-is-saturday"),
        pytest.param("sun", "Sunday", id="short-name"),
        pytest.param("Saturday", "Saturday", id="full-name"),
        pytest.param("mon-tue", "Monday,Tuesday", id="cron-names-range"),
        pytest.param(["Mon", 6], "Friday,Monday", id="list-of-name-and-number"),
    ],
)
def test_day_of_week_numbering(day: Any, weekday: str) -> None:
    # The week from Thursday 2026-01-01 through Wednesday 2026-01-07, midnights only.
    now = int(datetime(2026, 1, 8, 0, 0, tzinfo=UTC).timestamp())
    item = {"cron": {"minute": 0, "hour": 0, "day_of_week": day}, "lifetime": 7 * 86400}
    forest = fetch_times(time_prefs(item), now=now - 1)

    days = [local(t, UTC).strftime("%A") for t in times_of(forest)]
    assert ",".join(days) == weekday


def test_month_names_and_year_filter() -> None:
    now = int(datetime(2028, 1, 1, 0, 0, tzinfo=UTC).timestamp())
    cron = {"minute": 0, "hour": 0, "day_of_month": 1, "month": ["Jan", "july"], "year": 2027}
    forest = fetch_times(time_prefs({"cron": cron, "lifetime": 3 * 366 * 86400}), now=now)

    dates = [local(t, UTC).strftime("%Y-%m-%d") for t in times_of(forest)]
    assert dates == ["2027-01-01", "2027-07-01"]


def test_year_selector_object() -> None:
    now = int(datetime(2030, 1, 1, 12, 0, tzinfo=UTC).timestamp())
    cron = {"minute": 0, "hour": 0, "day_of_month": 1, "month": 1}
    cron["year"] = {"start": 2026, "period": 2}
    forest = fetch_times(time_prefs({"cron": cron, "lifetime": 6 * 366 * 86400}), now=now)

    assert [local(t, UTC).year for t in times_of(forest)] == [2026, 2028, 2030]


def test_impossible_date_gives_no_nodes() -> None:
    cron = {"minute": 0, "hour": 0, "day_of_month": 30, "month": 2}
    forest = fetch_times(time_prefs({"cron": cron, "lifetime": 86400 * 400}), now=1.8e9)

    assert times_of(forest) == []


# ---- DST, as croniter 7.0.0 handles it ----


def test_dst_gap_fires_at_end_of_gap() -> None:
    # On 2026-03-08 New York clocks jump from 02:00 EST to 03:00 EDT, so 02:30 never
    # happens that day. croniter fires the match once, at the first instant after the gap.
    now = int(datetime(2026, 3, 8, 12, 0, tzinfo=NEW_YORK).timestamp())
    item = {"cron": {"minute": 30, "hour": 2}, "timezone": "America/New_York", "lifetime": 86400}
    forest = fetch_times(time_prefs(item), now=now)

    [match] = times_of(forest)
    assert (local(match, NEW_YORK).hour, local(match, NEW_YORK).minute) == (3, 0)
    assert match == int(datetime(2026, 3, 8, 3, 0, tzinfo=NEW_YORK).timestamp())


def test_no_dst_gap_fires_at_local_time() -> None:
    now = int(datetime(2026, 3, 9, 12, 0, tzinfo=NEW_YORK).timestamp())
    item = {"cron": {"minute": 30, "hour": 2}, "timezone": "America/New_York", "lifetime": 86400}
    forest = fetch_times(time_prefs(item), now=now)

    [match] = times_of(forest)
    assert (local(match, NEW_YORK).hour, local(match, NEW_YORK).minute) == (2, 30)


def test_dst_repeated_hour_fires_twice() -> None:
    # On 2026-11-01 New York clocks go back from 02:00 EDT to 01:00 EST, so 01:30 happens
    # twice. croniter fires at both, one hour apart.
    now = int(datetime(2026, 11, 1, 12, 0, tzinfo=NEW_YORK).timestamp())
    item = {"cron": {"minute": 30, "hour": 1}, "timezone": "America/New_York", "lifetime": 86400}
    forest = fetch_times(time_prefs(item), now=now)

    first, second = times_of(forest)
    assert second - first == 3600
    assert local(first, NEW_YORK).utcoffset() != local(second, NEW_YORK).utcoffset()


def test_dst_fixes_other_than_croniter_warn() -> None:
    cron = {"minute": 0, "dst_fixes": ["skip", "repeat_use_only_early"]}
    spec = NodeSourceSpec("add_time", time_prefs({"cron": cron, "lifetime": 60}), 0)

    warnings = source_prefs_warnings(spec, make_settings())

    assert [issue.path for issue in warnings] == [
        "bistro_settings.nodes.node_sources[0].prefs.schedule[0].cron.dst_fixes"
    ]
    assert "repeat_use_only_early, skip not applied" in warnings[0].message
    assert validate_source_prefs(spec, make_settings()) == []


def test_dst_fixes_matching_croniter_no_warning() -> None:
    cron = {"minute": 0, "dst_fixes": ["unskip", "repeat_use_both"]}
    spec = NodeSourceSpec("add_time", time_prefs({"cron": cron, "lifetime": 60}), 0)

    assert source_prefs_warnings(spec, make_settings()) == []


def test_dst_fixes_warning_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    cron = {"minute": 0, "dst_fixes": ["skip", "repeat_use_only_late"]}
    prefs = time_prefs({"cron": cron, "lifetime": 60})
    add_time._logged_warnings.clear()

    with caplog.at_level(logging.WARNING, logger="bistro_provider.nodes.add_time"):
        fetch_times(prefs, now=1000)
        fetch_times(prefs, now=2000)

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert "repeat_use_only_late, skip not applied" in messages[0]


# ---- names ----


def test_custom_format() -> None:
    prefs = time_prefs(epoch_item(600, 900), format="{time}@{parent}")
    forest = fetch_times(prefs, now=1000)

    assert [node.name for node in forest.nodes("time")] == ["600@h1"]


def test_braces_in_parent_name_kept() -> None:
    forest = fetch_times(time_prefs(epoch_item(600, 900)), now=1000, hosts=("{time}x",))

    assert [node.name for node in forest.nodes("time")] == ["{time}x:600"]


# ---- limits ----


def test_too_many_epoch_times_fails() -> None:
    item = epoch_item({"period": 1}, add_time.MAX_TIMES_PER_PARENT + 1)

    with pytest.raises(NodeSourceError, match="more than 100000 times"):
        fetch_times(time_prefs(item), now=10**6)


def test_max_epoch_times_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(add_time, "MAX_TIMES_PER_PARENT", 50)
    forest = fetch_times(time_prefs(epoch_item({"period": 1}, 50)), now=10**6)

    assert len(forest.nodes("time")) == 50


def test_too_many_standard_times_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(add_time, "MAX_TIMES_PER_PARENT", 50)
    item = {"cron": {"minute": "*"}, "lifetime": 365 * 86400}

    with pytest.raises(NodeSourceError, match="more than 50 times") as info:
        fetch_times(time_prefs(item), now=1.8e9)

    assert "schedule[0]" in str(info.value)


def test_union_of_items_counts_toward_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(add_time, "MAX_TIMES_PER_PARENT", 5)
    first = epoch_item({"period": 100, "start": 0}, 450)
    second = epoch_item({"period": 100, "start": 50}, 450)

    with pytest.raises(NodeSourceError, match=r"schedule\[1\]"):
        fetch_times(time_prefs(first, second), now=1000)


# ---- invalid prefs ----

OK_ITEM = {"cron": {"minute": 0}, "lifetime": 3600}


@pytest.mark.parametrize(
    ("prefs", "fragment"),
    [
        pytest.param({"schedule": [OK_ITEM]}, "parent_level: missing", id="no-parent-level"),
        pytest.param(time_prefs(), "", id="empty-schedule-is-valid"),
        pytest.param({"parent_level": "host"}, "schedule: missing", id="no-schedule"),
        pytest.param(
            time_prefs(OK_ITEM, format="{parent}"), "has no {time}", id="format-without-time"
        ),
        pytest.param(time_prefs(OK_ITEM, extra=1), "unknown key 'extra'", id="unknown-key"),
        pytest.param(time_prefs({"cron": {"minute": 0}}), "lifetime: missing", id="no-lifetime"),
        pytest.param(
            time_prefs({**OK_ITEM, "lifetime": 0}), "lifetime: must be a whole", id="zero-life"
        ),
        pytest.param(
            time_prefs({**OK_ITEM, "enabled_lifetime": -1}),
            "enabled_lifetime: must be a whole number of seconds >= 0",
            id="negative-enabled-lifetime",
        ),
        pytest.param(time_prefs({**OK_ITEM, "tags": "x"}), "tags", id="tags-not-list"),
        pytest.param(
            time_prefs({**OK_ITEM, "timezone": "Mars/Olympus_Mons"}),
            "timezone: unknown time zone 'Mars/Olympus_Mons'; use an IANA",
            id="unknown-timezone",
        ),
        pytest.param(
            time_prefs({**OK_ITEM, "timezone": "../etc/passwd"}),
            "unknown time zone",
            id="timezone-path",
        ),
        pytest.param(
            time_prefs(
                {"cron": {"minute": 0, "day_of_week": 1, "day_of_month": 1}, "lifetime": 60}
            ),
            "day_of_week and day_of_month cannot be combined",
            id="dow-and-dom",
        ),
        pytest.param(
            time_prefs({"cron": {"hour": 1}, "lifetime": 60}), "minute: missing", id="no-minute"
        ),
        pytest.param(
            time_prefs({"cron": {"minute": 60}, "lifetime": 60}),
            "minute: must be integers 0..59",
            id="minute-out-of-range",
        ),
        pytest.param(
            time_prefs({"cron": {"minute": 0, "day_of_week": 0}, "lifetime": 60}),
            "day_of_week: must be integers 1..7 or names",
            id="dow-zero",
        ),
        pytest.param(
            time_prefs({"cron": {"minute": 0, "day_of_week": "1-5"}, "lifetime": 60}),
            "uses digits",
            id="dow-digits-in-string",
        ),
        pytest.param(
            time_prefs({"cron": {"minute": "every"}, "lifetime": 60}),
            "invalid cron field 'every'",
            id="bad-cron-string",
        ),
        pytest.param(
            time_prefs({"cron": {"minute": []}, "lifetime": 60}),
            "must not be an empty list",
            id="empty-list",
        ),
        pytest.param(
            time_prefs({"cron": {"minute": 0, "second": 0}, "lifetime": 60}),
            "unknown key 'second'",
            id="unknown-cron-key",
        ),
        pytest.param(
            time_prefs({"cron": {"minute": {"start": 40, "end": 10}}, "lifetime": 60}),
            "minute.end: must be >= start (40)",
            id="selector-end-before-start",
        ),
        pytest.param(
            time_prefs({"cron": {"minute": 0, "year": "2026-2028"}, "lifetime": 60}),
            'year: must be "*"',
            id="year-string",
        ),
        pytest.param(
            time_prefs({"cron": {"epoch": 5, "minute": 0}, "lifetime": 60}),
            "an epoch spec takes no other keys",
            id="epoch-with-fields",
        ),
        pytest.param(
            time_prefs(epoch_item({"period": 0}, 60)),
            "epoch.period: must be an integer >= 1",
            id="epoch-period-zero",
        ),
        pytest.param(time_prefs(epoch_item([-5], 60)), "integers >= 0", id="epoch-negative-value"),
        pytest.param(
            time_prefs(epoch_item("soon", 60)), "must be a time in POSIX seconds", id="epoch-word"
        ),
        pytest.param(
            time_prefs({"cron": {"minute": 0, "dst_fixes": ["skip", "unskip"]}, "lifetime": 60}),
            "names more than one of skip, unskip",
            id="dst-two-forward-rules",
        ),
        pytest.param(
            time_prefs({"cron": {"minute": 0, "dst_fixes": ["later"]}, "lifetime": 60}),
            "dst_fixes: must be a list of",
            id="dst-unknown-rule",
        ),
        pytest.param(time_prefs("hourly"), "schedule[0]: must be an object", id="item-not-object"),
    ],
)
def test_invalid_add_time_prefs(prefs: dict[str, Any], fragment: str) -> None:
    issues = issues_for(prefs)

    if not fragment:
        assert issues == []
    else:
        assert any(fragment in issue for issue in issues), issues


def test_invalid_timezone_still_reports_cron_problems() -> None:
    prefs = time_prefs({"cron": {"minute": 99}, "timezone": "Nowhere/City", "lifetime": 60})
    issues = issues_for(prefs)

    assert any("unknown time zone 'Nowhere/City'" in issue for issue in issues)
    assert any("minute: must be integers 0..59" in issue for issue in issues)


def test_invalid_prefs_fail_fetch() -> None:
    prefs = time_prefs({**OK_ITEM, "timezone": "Nowhere/City"})

    with pytest.raises(NodeSourceError, match="unknown time zone 'Nowhere/City'"):
        fetch_times(prefs, now=1000)


def test_valid_standard_prefs_have_no_issues() -> None:
    cron = {
        "minute": [0, 30],
        "hour": "*/2",
        "day_of_week": "mon-fri",
        "month": {"start": "Mar", "end": "Oct"},
        "year": [2026, 2027],
        "dst_fixes": ["unskip", "repeat_use_both"],
    }
    prefs = time_prefs({"cron": cron, "timezone": "Europe/Berlin", "lifetime": 60, "tags": ["x"]})

    assert issues_for(prefs) == []


# ---- the airflow CLI ----


def test_cli_nodes_shows_time_nodes(tmp_path: Path) -> None:
    config = {
        "bistro_settings": {
            "nodes": {
                "levels": ["host", "time"],
                "node_sources": [
                    {"source": "manual", "prefs": {"h1": []}},
                    {
                        "source": "add_time",
                        "prefs": time_prefs(epoch_item({"period": 300}, 900, enabled_lifetime=600)),
                    },
                ],
            },
            "resources": {},
        }
    }
    config_path = tmp_path / "bistro.json"
    config_path.write_text(json.dumps(config))
    airflow = Path(sys.executable).with_name("airflow")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow_home")}
    argv = [
        str(airflow),
        "bistro",
        "nodes",
        "--config",
        str(config_path),
        "--now",
        "1000",
        "--json",
    ]

    result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)

    assert result.returncode == 0, result.stderr
    nodes = [node for node in json.loads(result.stdout) if node["level"] == "time"]
    assert [(node["name"], node["enabled"]) for node in nodes] == [
        ("h1:300", False),
        ("h1:600", True),
        ("h1:900", True),
    ]
    assert all("capacity" not in node for node in nodes)
