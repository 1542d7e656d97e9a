"""Types and checks shared by the built-in node sources.

A node source is a callable that appends nodes to a `Forest`. It reads the nodes added by
earlier sources (usually the nodes of its `parent_level`) and never removes any.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bistro_provider.core.errors import ConfigIssue, NodeSourceError
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Settings

log = logging.getLogger(__name__)

# The config parser may add this key to every source's prefs; no source treats it as data.
CONFIG_DIR_KEY = "__config_dir__"
RESERVED_PREFS = frozenset({CONFIG_DIR_KEY})

MAX_NODE_NAME_LENGTH = 1024


@dataclass(frozen=True, kw_only=True)
class FetchContext:
    """What a node source may read besides its prefs during one fetch.

    :param now: the fetch time in POSIX seconds; all sources of one fetch get the same value.
    :param script_timeout: seconds an external program may run before it is killed.
    :param source_index: the position of the source in `bistro_settings.nodes.node_sources`.
    :param settings: the settings whose levels the forest uses.
    """

    now: float
    script_timeout: float = 60.0
    source_index: int
    settings: Settings

    @property
    def prefs_path(self) -> str:
        return prefs_path(self.source_index)


NodeSource = Callable[[Forest, dict[str, Any], FetchContext], None]
PrefsValidator = Callable[[Mapping[str, Any], Settings, str], list[ConfigIssue]]


def source_path(index: int) -> str:
    return f"bistro_settings.nodes.node_sources[{index}]"


def prefs_path(index: int) -> str:
    return f"{source_path(index)}.prefs"


def raise_for_issues(source: str, issues: list[ConfigIssue]) -> None:
    """Raise NodeSourceError listing `issues`, so a source never runs on invalid prefs."""
    if issues:
        raise NodeSourceError(source, "; ".join(str(issue) for issue in issues))


def node_name_problem(name: object) -> str | None:
    """Return why `name` cannot be a node name, or None when it can.

    Names are keys of task statuses and lines of script output, so they must be non-empty
    strings without line breaks or NUL, and at most 1024 characters long.
    """
    if not isinstance(name, str):
        return f"node names must be strings, got {type(name).__name__} {name!r}"
    if not name.strip():
        return f"node name {name!r} is empty or only whitespace"
    if any(char in name for char in "\n\r\0"):
        return f"node name {name!r} contains a line break or NUL"
    if len(name) > MAX_NODE_NAME_LENGTH:
        return (
            f"node name {name[:40]!r}... is {len(name)} characters long; "
            f"the maximum is {MAX_NODE_NAME_LENGTH}"
        )
    return None


def check_unknown_keys(
    prefs: Mapping[str, Any], known: frozenset[str], path: str
) -> list[ConfigIssue]:
    """Return an issue for each prefs key the source does not read, so typos do not pass."""
    issues = []
    for key in prefs:
        if key not in known and key not in RESERVED_PREFS:
            expected = ", ".join(sorted(known)) or "none"
            message = f"unknown key {key!r}; this source reads: {expected}"
            issues.append(ConfigIssue(f"{path}.{key}", message))
    return issues


def check_parent_level(
    prefs: Mapping[str, Any], levels: tuple[str, ...], path: str
) -> list[ConfigIssue]:
    """Return the problems with `parent_level`, which must name a level above the last one."""
    key_path = f"{path}.parent_level"
    if "parent_level" not in prefs:
        return [ConfigIssue(key_path, "missing; set it to the level whose nodes get children")]
    level = prefs["parent_level"]
    if not isinstance(level, str):
        return [ConfigIssue(key_path, f"must be a level name (string), got {level!r}")]
    if level not in levels:
        message = f"unknown level {level!r}; defined levels: {', '.join(levels)}"
        return [ConfigIssue(key_path, message)]
    deepest = len(levels) - 2
    if levels.index(level) + 1 > deepest:
        message = (
            f"children of level {level!r} would be on level {levels.index(level) + 1}, but the "
            f"deepest configured level is {deepest} ({levels[deepest]}); choose a higher "
            "parent_level or add a level to bistro_settings.nodes.levels"
        )
        return [ConfigIssue(key_path, message)]
    return []


def add_children(
    forest: Forest, parent: Node, names: list[str], *, source: str, enabled: bool = True
) -> int:
    """Add one enabled (or disabled) child of `parent` per distinct name; return how many.

    A repeated name under the same parent is skipped with one warning per parent, because
    a second node with the same name and parent would be a replica of itself.
    """
    seen: set[str] = set()
    repeated: list[str] = []
    for name in names:
        if name in seen:
            repeated.append(name)
            continue
        seen.add(name)
        forest.add(Node(name, parent.level + 1, parent, enabled=enabled))
    if repeated:
        log.warning(
            "Node source %s listed %d repeated child names under %r, kept the first of each: %s",
            source,
            len(repeated),
            parent.name,
            ", ".join(repr(name) for name in repeated[:5]),
        )
    return len(seen)
