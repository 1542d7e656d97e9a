"""Node sources by name, and the fetch that runs them in config order.

A fetch builds a new forest from scratch: the instance node, then the nodes of each source
in `bistro_settings.nodes.node_sources` order. Any failure fails the whole fetch, so the
caller keeps its last good forest rather than a forest with nodes missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from bistro_provider.core.errors import ConfigIssue, NodeSourceError
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import NodeSourceSpec, Settings
from bistro_provider.nodes import add_time, empty, file, manual, plugin, range_label, script
from bistro_provider.nodes.base import (
    FetchContext,
    NodeSource,
    PrefsValidator,
    prefs_path,
    source_path,
)

log = logging.getLogger(__name__)

SOURCES: dict[str, NodeSource] = {}
VALIDATORS: dict[str, PrefsValidator] = {}
WARNING_CHECKS: dict[str, PrefsValidator] = {}


def register_source(
    name: str,
    fn: NodeSource,
    *,
    validator: PrefsValidator | None = None,
    warning_check: PrefsValidator | None = None,
) -> None:
    """Make `fn` available as `source: name` in node_sources.

    `validator` checks prefs when the config is parsed; without one, bad prefs show only when
    the source runs. `warning_check` returns prefs that are valid but not applied as
    written. Registering a name twice with another function raises ValueError,
    because two plugins claiming one name is a packaging mistake to fix, not to hide.
    """
    existing = SOURCES.get(name)
    if existing is not None and existing is not fn:
        raise ValueError(f"node source {name!r} is already registered by {existing!r}")
    SOURCES[name] = fn
    if validator is not None:
        VALIDATORS[name] = validator
    if warning_check is not None:
        WARNING_CHECKS[name] = warning_check


def _unknown_source_message(name: str) -> str:
    return f"unknown node source {name!r}; known sources: {', '.join(sorted(SOURCES))}"


def validate_source_prefs(spec: NodeSourceSpec, settings: Settings) -> list[ConfigIssue]:
    """Return the problems with one node source that show without running it.

    These are an unknown source name, a missing required pref, an unknown `parent_level`
    and a pref of the wrong type. Problems that depend on other sources' nodes or on
    external programs show only in `fetch_forest`.
    """
    if spec.source not in SOURCES:
        path = f"{source_path(spec.index)}.source"
        return [ConfigIssue(path, _unknown_source_message(spec.source))]
    path = prefs_path(spec.index)
    if not isinstance(spec.prefs, Mapping):
        return [ConfigIssue(path, f"must be an object, got {type(spec.prefs).__name__}")]
    validator = VALIDATORS.get(spec.source)
    return validator(spec.prefs, settings, path) if validator else []


def source_prefs_warnings(spec: NodeSourceSpec, settings: Settings) -> list[ConfigIssue]:
    """Return the prefs of one node source that are valid but not applied as written.

    An `add_time` cron spec whose ``dst_fixes`` differ from croniter's DST behaviour is one.
    Invalid prefs give no warnings here, because `validate_source_prefs` reports them.
    """
    check = WARNING_CHECKS.get(spec.source)
    if check is None or not isinstance(spec.prefs, Mapping):
        return []
    return check(spec.prefs, settings, prefs_path(spec.index))


def fetch_forest(
    settings: Settings, *, now: float | None = None, script_timeout: float = 60.0
) -> Forest:
    """Build a new forest by running every node source of `settings` in order.

    :param now: the fetch time in POSIX seconds, the current time when None.
    :param script_timeout: seconds each external program may run.
    :raises NodeSourceError: naming the failed source and its index, chained to the cause.
    """
    forest = Forest(settings.levels, settings.instance_node_name)
    fetch_time = time.time() if now is None else now
    for position, spec in enumerate(settings.node_sources):
        label = f"{source_path(position)} ({spec.source})"
        fn = SOURCES.get(spec.source)
        if fn is None:
            raise NodeSourceError(label, _unknown_source_message(spec.source))
        context = FetchContext(
            now=fetch_time,
            script_timeout=script_timeout,
            source_index=position,
            settings=settings,
        )
        _run_source(fn, forest, spec, context, label)
    log.debug("Fetched %d nodes from %d node sources", len(forest), len(settings.node_sources))
    return forest


def _run_source(
    fn: NodeSource, forest: Forest, spec: NodeSourceSpec, context: FetchContext, label: str
) -> None:
    before = len(forest)
    prefs = dict(spec.prefs)
    config_dir = context.settings.config_dir
    if config_dir is not None:
        prefs.setdefault("__config_dir__", config_dir)
    try:
        fn(forest, prefs, context)
    except Exception as exc:
        raise NodeSourceError(label, _describe(exc)) from exc
    log.debug("Node source %s added %d nodes", label, len(forest) - before)


def _describe(exc: Exception) -> str:
    """Return the error text without the inner "node source 'x': " prefix it may carry."""
    if isinstance(exc, NodeSourceError):
        return str(exc).removeprefix(f"node source {exc.source!r}: ")
    return f"{type(exc).__name__}: {exc}"


register_source("empty", empty.fetch_empty, validator=empty.validate_empty_prefs)
register_source("manual", manual.fetch_manual, validator=manual.validate_manual_prefs)
register_source(
    "range_label", range_label.fetch_range_label, validator=range_label.validate_range_label_prefs
)
register_source("script", script.fetch_script, validator=script.validate_script_prefs)
register_source(
    "add_time",
    add_time.fetch_add_time,
    validator=add_time.validate_add_time_prefs,
    warning_check=add_time.add_time_prefs_warnings,
)
register_source("file", file.fetch_file, validator=file.validate_file_prefs)
register_source("plugin", plugin.fetch_plugin, validator=plugin.validate_plugin_prefs)
