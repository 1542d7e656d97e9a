"""The `manual` node source: a tree written out in the config.

Prefs map a node name to its children, given as a list of names, a single name, or an
object ``{"children": [...], "disabled": true}``. The node is disabled when the
``disabled`` key is present, whatever its value, as in Bistro. A node that is nobody's child
is a root on level 1 under the instance node, and children go one level deeper than their
parent. A name listed under two parents becomes two nodes with the same name (replicas).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bistro_provider.core.errors import ConfigIssue, NodeSourceError
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Settings
from bistro_provider.nodes.base import (
    RESERVED_PREFS,
    FetchContext,
    node_name_problem,
    raise_for_issues,
)

SOURCE_NAME = "manual"
ENTRY_KEYS = frozenset({"children", "disabled"})


@dataclass(frozen=True)
class ManualEntry:
    """One prefs entry: the node's children in config order, and whether it is disabled."""

    children: tuple[str, ...]
    disabled: bool


class TreeError(ValueError):
    """Raised when the entries cannot form a tree within the configured levels."""


def parse_manual_prefs(
    prefs: Mapping[str, Any], path: str
) -> tuple[dict[str, ManualEntry], list[ConfigIssue]]:
    """Return the entries by node name, and every problem found with their types and names."""
    entries: dict[str, ManualEntry] = {}
    issues: list[ConfigIssue] = []
    for name, value in prefs.items():
        if name in RESERVED_PREFS:
            continue
        problem = node_name_problem(name)
        if problem:
            issues.append(ConfigIssue(_invalid_name_path(path, name), problem))
            continue
        key_path = f"{path}.{name}"
        entry = _parse_entry(value, key_path, issues)
        if entry is not None:
            entries[name] = entry
    return entries, issues


def _invalid_name_path(path: str, name: object) -> str:
    """Return the key path of an invalid name, quoted and shortened when it is long or has a
    line break, so that a 10 KB name does not fill the message."""
    text = str(name)
    if len(text) <= 40 and not any(char in text for char in "\n\r\0"):
        return f"{path}.{text}"
    return f"{path}.{text[:40]!r}..."


def _parse_entry(value: Any, key_path: str, issues: list[ConfigIssue]) -> ManualEntry | None:
    disabled = False
    children_path = key_path
    if isinstance(value, Mapping):
        for key in value:
            if key not in ENTRY_KEYS:
                message = f"unknown key {key!r}; a node object may contain: children, disabled"
                issues.append(ConfigIssue(f"{key_path}.{key}", message))
        disabled = "disabled" in value
        children_path = f"{key_path}.children"
        value = value.get("children", [])
    children = _parse_children(value, children_path, issues)
    return None if children is None else ManualEntry(children, disabled)


def _parse_children(
    value: Any, path: str, issues: list[ConfigIssue]
) -> tuple[str, ...] | None:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        message = (
            f"must be a list of child names, one child name, or an object with 'children', "
            f"got {type(value).__name__} {value!r}"
        )
        issues.append(ConfigIssue(path, message))
        return None
    children: list[str] = []
    for position, child in enumerate(value):
        problem = node_name_problem(child)
        if problem is None and child in children:
            problem = f"child {child!r} is listed twice under the same parent"
        if problem:
            issues.append(ConfigIssue(f"{path}[{position}]", problem))
        else:
            children.append(child)
    return tuple(children)


def build_tree(forest: Forest, entries: dict[str, ManualEntry]) -> None:
    """Add the nodes of `entries` under the instance node, roots first, in config order.

    :raises TreeError: when there is no root, a cycle is reachable from a root, or a node
        would be deeper than the last configured level.
    """
    child_names = {child for entry in entries.values() for child in entry.children}
    roots = [name for name in entries if name not in child_names]
    if entries and not roots:
        raise TreeError(
            "no top-level nodes; check for cycles, because every node is somebody's child: "
            f"{', '.join(sorted(entries)[:10])}"
        )
    for root in roots:
        _add_subtree(forest, entries, root, forest.instance, (root,))


def _add_subtree(
    forest: Forest,
    entries: dict[str, ManualEntry],
    name: str,
    parent: Node,
    path: tuple[str, ...],
) -> None:
    level = parent.level + 1
    deepest = len(forest.levels) - 2
    if level > deepest:
        raise TreeError(
            f"node {name!r} would be at level {level} but the deepest configured level is "
            f"{deepest} ({forest.levels[deepest]}), on the path {' -> '.join(path)}. Add a "
            "level to bistro_settings.nodes.levels or shorten the chain"
        )
    entry = entries.get(name, ManualEntry((), False))
    node = forest.add(Node(name, level, parent, enabled=not entry.disabled))
    for child in entry.children:
        if child in path:
            cycle = " -> ".join((*path[path.index(child) :], child))
            raise TreeError(f"cycle {cycle}; a node cannot be its own ancestor")
        _add_subtree(forest, entries, child, node, (*path, child))


def validate_manual_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> list[ConfigIssue]:
    """Check types and names, then build the tree on a scratch forest to find cycles and
    chains deeper than the levels, because neither depends on other sources."""
    entries, issues = parse_manual_prefs(prefs, path)
    if issues:
        return issues
    try:
        build_tree(Forest(settings.levels, settings.instance_node_name), entries)
    except TreeError as exc:
        return [ConfigIssue(path, str(exc))]
    return []


def fetch_manual(forest: Forest, prefs: dict[str, Any], context: FetchContext) -> None:
    """Add the tree that `prefs` describes."""
    entries, issues = parse_manual_prefs(prefs, context.prefs_path)
    raise_for_issues(SOURCE_NAME, issues)
    try:
        build_tree(forest, entries)
    except TreeError as exc:
        raise NodeSourceError(SOURCE_NAME, str(exc)) from exc
