"""The `plugin` node source: children computed by a function that another package installs.

Prefs: ``name`` (required) names an entry point in the group ``bistro_provider.node_sources``,
and ``parent_level`` (required) names the level whose nodes get the children. All prefs,
including keys this source does not read, are passed to the function, so a plugin can take
its own settings from them.

The entry point loads a callable ``fn(parents, prefs, now)``. ``parents`` is the list of
nodes on ``parent_level`` (replicas included), ``prefs`` a copy of the prefs and ``now``
the fetch time in POSIX seconds. It returns an iterable whose items are either:

* a dict ``{"name": ..., "parent": ..., "enabled": true, "tags": [...],
  "capacity": {"resource": amount}}``, where only ``name`` is required and ``parent`` names
  one of the parents. ``parent`` may be left out only when all parents share one name.
* a string, the name of an enabled child. Strings are allowed only when all parents share
  one name.

A child is added under every parent node with the named parent's name, so replicas of a
parent all get it. The function is not called when ``parent_level`` has no nodes. An
exception raised while the function runs or while its result is read fails the fetch with
a NodeSourceError that names the plugin and its entry point.

A package registers a plugin in its ``pyproject.toml``::

    [project.entry-points."bistro_provider.node_sources"]
    my_hosts = "my_package.nodes:list_hosts"
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from bistro_provider.core.errors import ConfigIssue, NodeSourceError
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Settings
from bistro_provider.nodes.base import (
    FetchContext,
    check_parent_level,
    raise_for_issues,
)
from bistro_provider.nodes.node_fields import (
    ChildSpec,
    NodeFieldError,
    add_child_specs,
    check_capacity_resources,
    parse_node_object,
)

log = logging.getLogger(__name__)

SOURCE_NAME = "plugin"
ENTRY_POINT_GROUP = "bistro_provider.node_sources"

PluginFunction = Callable[[list[Node], dict[str, Any], float], Iterable[Any]]


def _plugin_entry_points() -> dict[str, EntryPoint]:
    """Return the installed entry points of the group by name."""
    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def _unknown_plugin_message(name: str, points: Mapping[str, EntryPoint]) -> str:
    registered = ", ".join(sorted(points)) or "none"
    return (
        f"no entry point {name!r} in group {ENTRY_POINT_GROUP!r}; registered names: "
        f"{registered}. Install the package that provides it or fix prefs.name"
    )


def _load_plugin(name: str) -> tuple[PluginFunction, str]:
    """Return the plugin's callable and its entry point value ("module:attribute").

    :raises NodeSourceError: when no entry point has that name, or it cannot be loaded.
    """
    points = _plugin_entry_points()
    point = points.get(name)
    if point is None:
        raise NodeSourceError(SOURCE_NAME, _unknown_plugin_message(name, points))
    try:
        function = point.load()
    except Exception as exc:
        message = f"plugin {name!r} (entry point {point.value}) failed to load: {_describe(exc)}"
        raise NodeSourceError(SOURCE_NAME, message) from exc
    if not callable(function):
        message = f"plugin {name!r} (entry point {point.value}) is not callable: {function!r}"
        raise NodeSourceError(SOURCE_NAME, message)
    return function, point.value


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def parse_plugin_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> list[ConfigIssue]:
    """Return the problems with the prefs this source reads; other keys go to the plugin."""
    issues = check_parent_level(prefs, settings.levels, path)
    name = prefs.get("name")
    if "name" not in prefs:
        message = f"missing; set it to an entry point name of group {ENTRY_POINT_GROUP!r}"
        issues.append(ConfigIssue(f"{path}.name", message))
    elif not isinstance(name, str) or not name:
        issues.append(ConfigIssue(f"{path}.name", f"must be a non-empty string, got {name!r}"))
    return issues


def validate_plugin_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> list[ConfigIssue]:
    """Check the prefs, and that the entry point is installed in this environment."""
    issues = parse_plugin_prefs(prefs, settings, path)
    if not issues:
        points = _plugin_entry_points()
        if prefs["name"] not in points:
            message = _unknown_plugin_message(prefs["name"], points)
            issues.append(ConfigIssue(f"{path}.name", message))
    return issues


def call_plugin(name: str, parents: list[Node], prefs: dict[str, Any], now: float) -> list[Any]:
    """Run the plugin and return its items as a list.

    :raises NodeSourceError: naming the plugin and its entry point when it raises.
    """
    function, target = _load_plugin(name)
    try:
        return list(function(parents, prefs, now))
    except Exception as exc:
        message = f"plugin {name!r} (entry point {target}) raised {_describe(exc)}"
        raise NodeSourceError(SOURCE_NAME, message) from exc


def group_children(
    items: list[Any], parent_names: list[str], level: str, settings: Settings, name: str
) -> dict[str, list[ChildSpec]]:
    """Return the plugin's children by parent name, after checking every item.

    :raises NodeSourceError: naming the plugin and the index of the first bad item.
    """
    children: dict[str, list[ChildSpec]] = {parent: [] for parent in parent_names}
    for index, item in enumerate(items):
        try:
            parent, spec = _parse_item(item, parent_names)
            check_capacity_resources(spec.capacity, level, settings)
        except NodeFieldError as exc:
            message = f"plugin {name!r} returned an invalid item [{index}]: {exc}"
            raise NodeSourceError(SOURCE_NAME, message) from exc
        children[parent].append(spec)
    return children


def _parse_item(item: Any, parent_names: list[str]) -> tuple[str, ChildSpec]:
    if isinstance(item, str):
        item = {"name": item}
    spec = parse_node_object(item, extra_keys=frozenset({"parent"}))
    if "parent" not in item:
        if len(parent_names) != 1:
            message = (
                f"no 'parent', but there are {len(parent_names)} parents; return a dict "
                "with 'parent' set to one of them"
            )
            raise NodeFieldError(message)
        return parent_names[0], spec
    parent = item["parent"]
    if parent not in parent_names:
        listed = ", ".join(repr(name) for name in parent_names[:10])
        raise NodeFieldError(f"unknown parent {parent!r}; the parents are: {listed}")
    return parent, spec


def fetch_plugin(forest: Forest, prefs: dict[str, Any], context: FetchContext) -> None:
    """Add the children that the plugin returns for the nodes of `parent_level`."""
    issues = parse_plugin_prefs(prefs, context.settings, context.prefs_path)
    raise_for_issues(SOURCE_NAME, issues)
    parents = forest.nodes(prefs["parent_level"])
    if not parents:
        return
    parent_names = forest.distinct_names(prefs["parent_level"])
    items = call_plugin(prefs["name"], parents, dict(prefs), context.now)
    level = forest.levels[parents[0].level + 1]
    children = group_children(items, parent_names, level, context.settings, prefs["name"])
    for parent in parents:
        add_child_specs(forest, parent, children[parent.name], source=SOURCE_NAME)
    log.debug("Plugin %s returned %d nodes", prefs["name"], len(items))
