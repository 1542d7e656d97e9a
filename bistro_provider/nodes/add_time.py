"""The `add_time` node source: time nodes under every node of a level, on cron schedules.

Prefs: ``parent_level`` (required), ``format`` (default ``"{parent}:{time}"``, where
``{time}`` is the match time in POSIX seconds) and ``schedule``, a list of items. An item
has ``cron`` (a spec as `bistro_provider.nodes.cron_schedule` describes), ``lifetime``
(required, seconds > 0), ``enabled_lifetime`` (seconds >= 0, default ``lifetime``),
``timezone`` (an IANA name for standard specs, default ``"UTC"``) and ``tags``.

At fetch time ``now``, every match time t with ``now - lifetime < t <= now`` gives the node
``format(parent, t)`` under every parent node. The node is enabled when
``now - t < enabled_lifetime``. When several items match the same t, the node gets the
union of their tags and is enabled only if it is enabled by every one of them. Nodes follow time
order, oldest first. Times before 1970 are never produced, as in Bistro's epoch specs.

Nodes change only when the forest is fetched again, so a schedule that fires every minute
creates its nodes at the fetch interval, a few at a time.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bistro_provider.core.errors import ConfigIssue, NodeSourceError
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import Settings
from bistro_provider.nodes.base import (
    FetchContext,
    check_parent_level,
    check_unknown_keys,
    node_name_problem,
    raise_for_issues,
)
from bistro_provider.nodes.cron_schedule import CronSpec, parse_cron
from bistro_provider.nodes.node_fields import ChildSpec, NodeFieldError, add_child_specs, parse_tags

log = logging.getLogger(__name__)

SOURCE_NAME = "add_time"
DEFAULT_FORMAT = "{parent}:{time}"
DEFAULT_TIMEZONE = "UTC"
KNOWN_KEYS = frozenset({"parent_level", "format", "schedule"})
ITEM_KEYS = frozenset({"cron", "lifetime", "enabled_lifetime", "timezone", "tags"})
# NOTE: a guard against a per-minute schedule with a lifetime of years, which would stall
# every fetch while it builds millions of nodes. It is a guess, not a measured capacity.
MAX_TIMES_PER_PARENT = 100_000

# One pass over the template, so a parent name that contains "{time}" is copied as it is.
_PLACEHOLDER = re.compile(r"\{(parent|time)\}")
# Warnings already logged, so a fetch every few minutes does not repeat them.
_logged_warnings: set[str] = set()


def render_time_name(template: str, parent: str, time: int) -> str:
    """Return `template` with ``{parent}`` and ``{time}`` replaced; other braces stay."""
    values = {"parent": parent, "time": str(time)}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


@dataclass(frozen=True)
class ScheduleItem:
    """One validated schedule item; times are POSIX seconds."""

    cron: CronSpec
    lifetime: int
    enabled_lifetime: int
    tags: frozenset[str]


@dataclass(frozen=True)
class AddTimePrefs:
    """Validated prefs of one `add_time` source."""

    parent_level: str
    template: str
    items: tuple[ScheduleItem, ...]


@dataclass
class TimeSlot:
    """The merged tags and enabled state of the node for one match time."""

    tags: set[str] = field(default_factory=set)
    enabled: bool = True


def parse_add_time_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> tuple[AddTimePrefs | None, list[ConfigIssue], list[ConfigIssue]]:
    """Return the prefs as `AddTimePrefs` (None when invalid), the errors and the warnings."""
    issues = check_unknown_keys(prefs, KNOWN_KEYS, path)
    issues += check_parent_level(prefs, settings.levels, path)
    warnings: list[ConfigIssue] = []
    template = _parse_template(prefs, path, issues)
    items = _parse_schedule(prefs, f"{path}.schedule", issues, warnings)
    if issues or template is None or items is None:
        return None, issues, warnings
    return AddTimePrefs(prefs["parent_level"], template, items), [], warnings


def _parse_template(prefs: Mapping[str, Any], path: str, issues: list[ConfigIssue]) -> str | None:
    template = prefs.get("format", DEFAULT_FORMAT)
    key_path = f"{path}.format"
    if not isinstance(template, str):
        issues.append(ConfigIssue(key_path, f"must be a string, got {template!r}"))
        return None
    if "{time}" not in template:
        message = f"{template!r} has no {{time}}, so every time would give the same node; add it"
        issues.append(ConfigIssue(key_path, message))
        return None
    problem = node_name_problem(render_time_name(template, "parent", 0))
    if problem:
        issues.append(ConfigIssue(key_path, f"{template!r} gives invalid node names: {problem}"))
        return None
    return template


def _parse_schedule(
    prefs: Mapping[str, Any], path: str, issues: list[ConfigIssue], warnings: list[ConfigIssue]
) -> tuple[ScheduleItem, ...] | None:
    if "schedule" not in prefs:
        message = 'missing; set it to a list such as [{"cron": {"minute": 0}, "lifetime": 86400}]'
        issues.append(ConfigIssue(path, message))
        return None
    schedule = prefs["schedule"]
    if not isinstance(schedule, list):
        issues.append(ConfigIssue(path, f"must be a list of schedule items, got {schedule!r}"))
        return None
    items = [
        _parse_item(item, f"{path}[{index}]", issues, warnings)
        for index, item in enumerate(schedule)
    ]
    if any(item is None for item in items):
        return None
    return tuple(item for item in items if item is not None)


def _parse_item(
    item: Any, path: str, issues: list[ConfigIssue], warnings: list[ConfigIssue]
) -> ScheduleItem | None:
    if not isinstance(item, Mapping):
        message = f"must be an object with cron and lifetime, got {item!r}"
        issues.append(ConfigIssue(path, message))
        return None
    count = len(issues)
    issues += check_unknown_keys(item, ITEM_KEYS, path)
    zone = parse_timezone(item.get("timezone", DEFAULT_TIMEZONE), f"{path}.timezone", issues)
    cron = None
    if "cron" not in item:
        issues.append(ConfigIssue(f"{path}.cron", 'missing; for example {"minute": 0}'))
    else:
        # With an invalid time zone, parse in UTC anyway to report the spec's own problems.
        cron_zone = zone or ZoneInfo(DEFAULT_TIMEZONE)
        cron = parse_cron(item["cron"], cron_zone, f"{path}.cron", issues, warnings)
    lifetime = _parse_seconds(item, "lifetime", 1, path, issues)
    enabled_lifetime = lifetime
    if "enabled_lifetime" in item:
        enabled_lifetime = _parse_seconds(item, "enabled_lifetime", 0, path, issues)
    tags = _parse_item_tags(item, f"{path}.tags", issues)
    if len(issues) > count:
        return None
    if cron is None or zone is None or lifetime is None or enabled_lifetime is None:
        return None
    return ScheduleItem(cron, lifetime, enabled_lifetime, tags)


def parse_timezone(value: Any, path: str, issues: list[ConfigIssue]) -> ZoneInfo | None:
    """Return the time zone named `value`, or None after adding why it is not one."""
    hint = "use an IANA time zone name such as 'UTC' or 'America/New_York'"
    if not isinstance(value, str) or not value.strip():
        issues.append(ConfigIssue(path, f"must be a time zone name, got {value!r}; {hint}"))
        return None
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        issues.append(ConfigIssue(path, f"unknown time zone {value!r}; {hint}"))
        return None


def _parse_seconds(
    item: Mapping[str, Any], key: str, minimum: int, path: str, issues: list[ConfigIssue]
) -> int | None:
    key_path = f"{path}.{key}"
    if key not in item:
        message = "missing; set how many seconds a time node exists, such as 86400"
        issues.append(ConfigIssue(key_path, message))
        return None
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        message = f"must be a whole number of seconds >= {minimum}, got {value!r}"
        issues.append(ConfigIssue(key_path, message))
        return None
    return value


def _parse_item_tags(
    item: Mapping[str, Any], path: str, issues: list[ConfigIssue]
) -> frozenset[str]:
    try:
        return parse_tags(item.get("tags", []))
    except NodeFieldError as exc:
        issues.append(ConfigIssue(path, str(exc)))
        return frozenset()


def collect_times(items: tuple[ScheduleItem, ...], now: float) -> dict[int, TimeSlot]:
    """Return each match time of every item, with the merged tags and enabled state.

    :raises NodeSourceError: when the items match more than `MAX_TIMES_PER_PARENT` times.
    """
    slots: dict[int, TimeSlot] = {}
    for index, item in enumerate(items):
        # Integer times t with now - lifetime < t <= now, also when `now` has a fraction.
        low = math.floor(now - item.lifetime)
        high = math.floor(now)
        times = item.cron.times(low, high, MAX_TIMES_PER_PARENT)
        for time in times:
            slot = slots.setdefault(time, TimeSlot())
            slot.tags.update(item.tags)
            slot.enabled = slot.enabled and now - time < item.enabled_lifetime
        if len(times) > MAX_TIMES_PER_PARENT or len(slots) > MAX_TIMES_PER_PARENT:
            raise NodeSourceError(SOURCE_NAME, _too_many_message(index, item))
    return dict(sorted(slots.items()))


def _too_many_message(index: int, item: ScheduleItem) -> str:
    return (
        f"schedule[{index}] (with the items before it) matches more than "
        f"{MAX_TIMES_PER_PARENT} times within its lifetime of {item.lifetime} s; shorten "
        "the lifetime or make the cron spec match less often"
    )


def validate_add_time_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> list[ConfigIssue]:
    return parse_add_time_prefs(prefs, settings, path)[1]


def add_time_prefs_warnings(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> list[ConfigIssue]:
    """Return the prefs that are valid but not applied as written (`dst_fixes`)."""
    return parse_add_time_prefs(prefs, settings, path)[2]


def fetch_add_time(forest: Forest, prefs: dict[str, Any], context: FetchContext) -> None:
    """Add the time nodes that the schedule gives at `context.now` under each parent."""
    parsed, issues, warnings = parse_add_time_prefs(prefs, context.settings, context.prefs_path)
    raise_for_issues(SOURCE_NAME, issues)
    _log_warnings_once(warnings)
    if parsed is None:
        return
    slots = collect_times(parsed.items, context.now)
    for parent in forest.nodes(parsed.parent_level):
        specs = []
        for time, slot in slots.items():
            name = render_time_name(parsed.template, parent.name, time)
            problem = node_name_problem(name)
            if problem:
                where = f"{context.prefs_path}.format"
                message = f"{where} gives an invalid name under {parent.name!r}: {problem}"
                raise NodeSourceError(SOURCE_NAME, message)
            specs.append(ChildSpec(name, slot.enabled, frozenset(slot.tags)))
        add_child_specs(forest, parent, specs, source=SOURCE_NAME)


def _log_warnings_once(warnings: list[ConfigIssue]) -> None:
    for warning in warnings:
        text = str(warning)
        if text not in _logged_warnings:
            _logged_warnings.add(text)
            log.warning("Node source add_time: %s", text)
