"""The `range_label` node source: numbered children under every node of a level.

For each node P on `parent_level` and each i from `start` to `end` (both inclusive), it adds
the child named by `format`, where ``{parent}``, ``{i}``, ``{start}`` and ``{end}`` stand for
P's name and the numbers. `start` greater than `end` adds nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bistro_provider.core.errors import ConfigIssue, NodeSourceError
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import Settings
from bistro_provider.nodes.base import (
    FetchContext,
    add_children,
    check_parent_level,
    check_unknown_keys,
    node_name_problem,
    raise_for_issues,
)

SOURCE_NAME = "range_label"
DEFAULT_FORMAT = "{parent}__{i}"
KNOWN_KEYS = frozenset({"parent_level", "start", "end", "format", "enabled"})
# NOTE: this guards against typos such as an extra digit in `end`, which would stall the
# fetch while it builds millions of nodes. It is a guess, not a measured forest capacity.
MAX_LABELS_PER_PARENT = 1_000_000

# One pass over the template, so a parent name that contains "{i}" is copied as it is.
_PLACEHOLDER = re.compile(r"\{(parent|i|start|end)\}")


def render_label(template: str, parent: str, i: int, start: int, end: int) -> str:
    """Return `template` with its placeholders replaced; other braces stay as they are."""
    values = {"parent": parent, "i": str(i), "start": str(start), "end": str(end)}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


@dataclass(frozen=True)
class RangePrefs:
    """Validated prefs of one `range_label` source."""

    parent_level: str
    start: int
    end: int
    template: str
    enabled: bool


def parse_range_label_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> tuple[RangePrefs | None, list[ConfigIssue]]:
    """Return the prefs as a `RangePrefs`, or None with every problem found."""
    issues = check_unknown_keys(prefs, KNOWN_KEYS, path)
    issues += check_parent_level(prefs, settings.levels, path)
    start = _parse_int(prefs, "start", path, issues)
    end = _parse_int(prefs, "end", path, issues)
    template = _parse_template(prefs, path, issues)
    enabled = prefs.get("enabled", True)
    if not isinstance(enabled, bool):
        issues.append(ConfigIssue(f"{path}.enabled", f"must be true or false, got {enabled!r}"))
    if start is not None and end is not None and end - start + 1 > MAX_LABELS_PER_PARENT:
        message = (
            f"start {start} to end {end} gives {end - start + 1} nodes per parent; "
            f"the maximum is {MAX_LABELS_PER_PARENT}"
        )
        issues.append(ConfigIssue(f"{path}.end", message))
    if issues or start is None or end is None or template is None:
        return None, issues
    return RangePrefs(prefs["parent_level"], start, end, template, enabled), []


def _parse_int(
    prefs: Mapping[str, Any], key: str, path: str, issues: list[ConfigIssue]
) -> int | None:
    key_path = f"{path}.{key}"
    if key not in prefs:
        issues.append(ConfigIssue(key_path, "missing; set it to an integer"))
        return None
    value = prefs[key]
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    issues.append(ConfigIssue(key_path, f"must be an integer or a string of one, got {value!r}"))
    return None


def _parse_template(
    prefs: Mapping[str, Any], path: str, issues: list[ConfigIssue]
) -> str | None:
    template = prefs.get("format", DEFAULT_FORMAT)
    if not isinstance(template, str):
        issues.append(ConfigIssue(f"{path}.format", f"must be a string, got {template!r}"))
        return None
    problem = node_name_problem(render_label(template, "parent", 0, 0, 0))
    if problem:
        message = f"{template!r} gives invalid node names: {problem}"
        issues.append(ConfigIssue(f"{path}.format", message))
        return None
    return template


def validate_range_label_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> list[ConfigIssue]:
    return parse_range_label_prefs(prefs, settings, path)[1]


def fetch_range_label(forest: Forest, prefs: dict[str, Any], context: FetchContext) -> None:
    """Add `end - start + 1` children under every node of `parent_level`."""
    path = context.prefs_path
    parsed, issues = parse_range_label_prefs(prefs, context.settings, path)
    raise_for_issues(SOURCE_NAME, issues)
    if parsed is None:
        return
    numbers = range(parsed.start, parsed.end + 1)
    for parent in forest.nodes(parsed.parent_level):
        names = [
            render_label(parsed.template, parent.name, i, parsed.start, parsed.end)
            for i in numbers
        ]
        for name in names:
            problem = node_name_problem(name)
            if problem:
                message = f"{path}.format gives an invalid name under {parent.name!r}: {problem}"
                raise NodeSourceError(SOURCE_NAME, message)
        add_children(forest, parent, names, source=SOURCE_NAME, enabled=parsed.enabled)
