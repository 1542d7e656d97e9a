"""The `file` node source: nodes listed in a JSON or YAML file.

The file contains one object with a ``nodes`` list::

    {"nodes": [
      {"name": "h1", "parent": null, "level": "host", "enabled": true,
       "tags": ["ssd"], "capacity": {"host_concurrency": 3}},
      {"name": "db1", "parent": "h1"}
    ]}

Only ``name`` is required. ``parent`` is a node name, or null (the default) for a child of
the instance node. ``level`` defaults to the level below the parent's, or to the first
configured level when ``parent`` is null. A parent must appear earlier in the file or come
from an earlier node source. When the parent name has replicas on its level, every replica
gets the child. ``enabled`` defaults to true, ``tags`` to none, and ``capacity`` sets
per-node limits for resources of the node's level.

Prefs: ``path`` (required; a relative path starts at the config file's directory when the
config parser passed it, else at the current directory) and ``format`` (``json`` or
``yaml``, by default taken from the extension: ``.json``, ``.yaml`` or ``.yml``).

The file is parsed again only when its modification time or size changes, so a fetch
every few minutes does not re-parse a large file that stays the same.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bistro_provider.core.errors import ConfigIssue, NodeSourceError
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Settings
from bistro_provider.nodes.base import (
    CONFIG_DIR_KEY,
    FetchContext,
    check_unknown_keys,
    raise_for_issues,
)
from bistro_provider.nodes.node_fields import (
    ChildSpec,
    NodeFieldError,
    check_capacity_resources,
    parse_node_object,
)

log = logging.getLogger(__name__)

SOURCE_NAME = "file"
KNOWN_KEYS = frozenset({"path", "format"})
FORMATS_BY_SUFFIX = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
ENTRY_KEYS = frozenset({"parent", "level"})


@dataclass(frozen=True)
class FilePrefs:
    """Validated prefs of one `file` source."""

    path: str
    format: str
    config_dir: str | None


@dataclass(frozen=True)
class FileEntry:
    """One item of the file's ``nodes`` list, checked for everything but the forest."""

    index: int
    spec: ChildSpec
    parent: str | None
    level: str | None


@dataclass(frozen=True)
class _CachedFile:
    mtime_ns: int
    size: int
    format: str
    entries: tuple[FileEntry, ...]


# Parsed files by absolute path. NOTE: a rewrite that keeps both the size and the
# modification time (within the file system's timestamp resolution) is not noticed.
_cache: dict[str, _CachedFile] = {}


def parse_file_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> tuple[FilePrefs | None, list[ConfigIssue]]:
    """Return the prefs as `FilePrefs`, or None with every problem found."""
    issues = check_unknown_keys(prefs, KNOWN_KEYS, path)
    file_path = prefs.get("path")
    if "path" not in prefs:
        issues.append(ConfigIssue(f"{path}.path", "missing; set it to a JSON or YAML file"))
    elif not isinstance(file_path, str) or not file_path.strip() or "\0" in file_path:
        message = f"must be a non-empty file path without NUL, got {file_path!r}"
        issues.append(ConfigIssue(f"{path}.path", message))
    file_format = _parse_format(prefs, file_path, path, issues)
    config_dir = prefs.get(CONFIG_DIR_KEY)
    if config_dir is not None and not isinstance(config_dir, str):
        message = f"must be a directory path (string), got {config_dir!r}"
        issues.append(ConfigIssue(f"{path}.{CONFIG_DIR_KEY}", message))
    if issues or file_format is None:
        return None, issues
    return FilePrefs(prefs["path"], file_format, config_dir), []


def _parse_format(
    prefs: Mapping[str, Any], file_path: Any, path: str, issues: list[ConfigIssue]
) -> str | None:
    if "format" in prefs:
        value = prefs["format"]
        if value not in ("json", "yaml"):
            message = f'must be "json" or "yaml", got {value!r}'
            issues.append(ConfigIssue(f"{path}.format", message))
            return None
        return str(value)
    if not isinstance(file_path, str):
        return None
    suffix = Path(file_path).suffix.lower()
    if suffix not in FORMATS_BY_SUFFIX:
        message = (
            f"cannot tell the format of {file_path!r} from its extension; "
            'set format to "json" or "yaml"'
        )
        issues.append(ConfigIssue(f"{path}.format", message))
        return None
    return FORMATS_BY_SUFFIX[suffix]


def resolve_file(file_path: str, config_dir: str | None) -> Path:
    """Return the absolute path: a relative one starts at `config_dir`, else at the cwd."""
    path = Path(file_path)
    if not path.is_absolute():
        path = (Path(config_dir) if config_dir else Path.cwd()) / path
    return Path(os.path.abspath(path))


def load_entries(path: Path, file_format: str) -> tuple[FileEntry, ...]:
    """Return the file's entries, parsing it only when its mtime or size changed.

    :raises NodeSourceError: when the file cannot be read, decoded or is not a node list.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        message = f"cannot read {str(path)!r}: {exc.strerror or exc}; check prefs.path"
        raise NodeSourceError(SOURCE_NAME, message) from exc
    key = str(path)
    cached = _cache.get(key)
    if cached and (cached.mtime_ns, cached.size, cached.format) == (
        stat.st_mtime_ns,
        stat.st_size,
        file_format,
    ):
        return cached.entries
    entries = parse_entries(_read_document(path, file_format), str(path))
    _cache[key] = _CachedFile(stat.st_mtime_ns, stat.st_size, file_format, entries)
    log.debug("Parsed %d node entries from %s", len(entries), path)
    return entries


def _read_document(path: Path, file_format: str) -> Any:
    origin = str(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        message = f"cannot read {origin!r}: {exc.strerror or exc}; check prefs.path"
        raise NodeSourceError(SOURCE_NAME, message) from exc
    except UnicodeDecodeError as exc:
        message = f"{origin!r} is not UTF-8 text: invalid byte at offset {exc.start}"
        raise NodeSourceError(SOURCE_NAME, message) from exc
    if file_format == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            message = (
                f"{origin!r} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            )
            raise NodeSourceError(SOURCE_NAME, message) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NodeSourceError(SOURCE_NAME, f"{origin!r} is not valid YAML: {exc}") from exc


def parse_entries(document: Any, origin: str) -> tuple[FileEntry, ...]:
    """Return the entries of a decoded file, checked for everything but the forest.

    :raises NodeSourceError: naming the file and the index of the first bad entry.
    """
    if not isinstance(document, Mapping) or not isinstance(document.get("nodes"), list):
        message = (
            f'{origin!r} must contain an object {{"nodes": [...]}}, got {type(document).__name__}'
        )
        raise NodeSourceError(SOURCE_NAME, message)
    extra = sorted(str(key) for key in document if key != "nodes")
    if extra:
        message = (
            f"{origin!r}: unknown top-level key {extra[0]!r}; the file may contain only 'nodes'"
        )
        raise NodeSourceError(SOURCE_NAME, message)
    return tuple(_parse_entry(index, item, origin) for index, item in enumerate(document["nodes"]))


def _parse_entry(index: int, item: Any, origin: str) -> FileEntry:
    try:
        spec = parse_node_object(item, extra_keys=ENTRY_KEYS)
        parent = item.get("parent")
        if parent is not None and (not isinstance(parent, str) or not parent):
            raise NodeFieldError(f"'parent' must be a node name or null, got {parent!r}")
        level = item.get("level")
        if level is not None and not isinstance(level, str):
            raise NodeFieldError(f"'level' must be a level name, got {level!r}")
    except NodeFieldError as exc:
        raise NodeSourceError(SOURCE_NAME, f"{origin!r}: nodes[{index}]: {exc}") from exc
    return FileEntry(index, spec, parent, level)


def add_entries(
    forest: Forest, entries: tuple[FileEntry, ...], settings: Settings, origin: str
) -> None:
    """Add every entry under its parent nodes, in file order.

    :raises NodeSourceError: naming the file, the entry index and the fix.
    """
    for entry in entries:
        where = f"{origin!r}: nodes[{entry.index}] (name {entry.spec.name!r})"
        try:
            level, parents = _find_parents(forest, entry)
            check_capacity_resources(entry.spec.capacity, forest.levels[level], settings)
            for parent in parents:
                _add_entry_node(forest, parent, level, entry)
        except NodeFieldError as exc:
            raise NodeSourceError(SOURCE_NAME, f"{where}: {exc}") from exc


def _find_parents(forest: Forest, entry: FileEntry) -> tuple[int, list[Node]]:
    """Return the entry's level index and its parent nodes (replicas included)."""
    levels = forest.levels
    level = _level_index(forest, entry.level) if entry.level is not None else None
    if entry.parent is None:
        if level not in (None, 1):
            message = (
                f"a node without a parent is on level {levels[1]!r}, not {entry.level!r}; "
                "set 'parent' or remove 'level'"
            )
            raise NodeFieldError(message)
        return 1, [forest.instance]
    if level is not None:
        parents = forest.replicas(level - 1, entry.parent)
        if not parents:
            raise NodeFieldError(_parent_missing(entry.parent, f"on level {levels[level - 1]!r}"))
        return level, parents
    return _parents_by_name(forest, entry.parent)


def _parents_by_name(forest: Forest, parent: str) -> tuple[int, list[Node]]:
    found = forest.find(parent)
    if not found:
        raise NodeFieldError(_parent_missing(parent, "on any level"))
    parent_levels = sorted({node.level for node in found})
    if len(parent_levels) > 1:
        names = ", ".join(repr(forest.levels[index]) for index in parent_levels)
        message = f"parent {parent!r} exists on levels {names}; set 'level' to choose one"
        raise NodeFieldError(message)
    level = parent_levels[0] + 1
    if level > len(forest.levels) - 2:
        message = (
            f"parent {parent!r} is on the deepest configured level "
            f"{forest.levels[level - 1]!r}, so it cannot have children; add a level to "
            "bistro_settings.nodes.levels or choose another parent"
        )
        raise NodeFieldError(message)
    return level, found


def _parent_missing(parent: str, place: str) -> str:
    return (
        f"parent {parent!r} not found {place}; list the parent before its children, or add "
        "it with an earlier node source"
    )


def _level_index(forest: Forest, level: str) -> int:
    configured = forest.levels[1:-1]
    if level not in configured:
        message = f"unknown level {level!r}; configured levels: {', '.join(configured)}"
        raise NodeFieldError(message)
    return forest.levels.index(level)


def _add_entry_node(forest: Forest, parent: Node, level: int, entry: FileEntry) -> None:
    spec = entry.spec
    for node in forest.replicas(level, spec.name):
        if node.parent is parent:
            message = (
                f"node {spec.name!r} already exists under {parent.name!r}, from an earlier "
                "entry or node source; remove the repeated entry"
            )
            raise NodeFieldError(message)
    node = Node(
        spec.name,
        level,
        parent,
        enabled=spec.enabled,
        tags=spec.tags,
        capacity=dict(spec.capacity),
    )
    forest.add(node)


def validate_file_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> list[ConfigIssue]:
    return parse_file_prefs(prefs, settings, path)[1]


def fetch_file(forest: Forest, prefs: dict[str, Any], context: FetchContext) -> None:
    """Add the nodes that the file lists."""
    parsed, issues = parse_file_prefs(prefs, context.settings, context.prefs_path)
    raise_for_issues(SOURCE_NAME, issues)
    if parsed is None:
        return
    path = resolve_file(parsed.path, parsed.config_dir)
    entries = load_entries(path, parsed.format)
    add_entries(forest, entries, context.settings, str(path))
