"""Node fields besides the name (enabled, tags, capacity), as the `file`, `plugin` and
`script` sources read them, so all three check them in the same way and the same words.

A node object looks like ``{"name": "h1", "enabled": true, "tags": ["daily"],
"capacity": {"host_concurrency": 3}}``. Only ``name`` is required. ``capacity`` sets
per-node limits that replace the level's limit for the named resources, so each name must
be a resource defined on the node's level.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Settings
from bistro_provider.nodes.base import node_name_problem

log = logging.getLogger(__name__)

NODE_KEYS = frozenset({"name", "enabled", "tags", "capacity"})


class NodeFieldError(ValueError):
    """Raised when a node object has an invalid field; the caller adds where it came from."""


@dataclass(frozen=True)
class ChildSpec:
    """A node to add under a parent: its name, whether it is enabled, tags and capacity."""

    name: str
    enabled: bool = True
    tags: frozenset[str] = frozenset()
    capacity: Mapping[str, int] = field(default_factory=dict)


def parse_tags(value: Any) -> frozenset[str]:
    """Return `value` as a set of tags; it must be a list of non-empty strings."""
    valid = isinstance(value, list) and all(isinstance(tag, str) and tag for tag in value)
    if not valid:
        raise NodeFieldError(f"'tags' must be a list of non-empty strings, got {value!r}")
    return frozenset(value)


def parse_capacity(value: Any) -> dict[str, int]:
    """Return `value` as resource limits: an object of resource name to a whole number >= 0."""
    if not isinstance(value, Mapping):
        message = f"'capacity' must be an object of resource name to amount, got {value!r}"
        raise NodeFieldError(message)
    capacity: dict[str, int] = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name:
            raise NodeFieldError(f"'capacity' keys must be resource names, got {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, int):
            message = f"capacity of {name!r} must be a whole number, got {amount!r}"
            raise NodeFieldError(message)
        if amount < 0:
            raise NodeFieldError(f"capacity of {name!r} must be 0 or more, got {amount}")
        capacity[name] = amount
    return capacity


def check_capacity_resources(capacity: Mapping[str, int], level: str, settings: Settings) -> None:
    """Raise NodeFieldError unless every key of `capacity` is a resource of `level`."""
    defined = settings.resources.get(level, {})
    unknown = sorted(name for name in capacity if name not in defined)
    if unknown:
        listed = ", ".join(sorted(defined)) or "none"
        raise NodeFieldError(
            f"unknown resource {unknown[0]!r} in 'capacity' for level {level!r}; resources "
            f"defined on that level: {listed}. Define it under bistro_settings.resources."
            f"{level} or remove it"
        )


def parse_enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise NodeFieldError(f"'enabled' must be true or false, got {value!r}")
    return value


def parse_node_object(
    obj: Any, *, extra_keys: frozenset[str] = frozenset(), default_enabled: bool = True
) -> ChildSpec:
    """Return the node that `obj` describes.

    :param extra_keys: keys the caller reads itself (such as ``parent``), so they are allowed.
    :raises NodeFieldError: on a missing name, an unknown key or a field of the wrong type.
    """
    if not isinstance(obj, Mapping):
        raise NodeFieldError(f"a node must be an object with a 'name', got {obj!r}")
    allowed = NODE_KEYS | extra_keys
    for key in obj:
        if key not in allowed:
            expected = ", ".join(sorted(allowed))
            raise NodeFieldError(f"unknown key {key!r}; a node object may contain: {expected}")
    if "name" not in obj:
        raise NodeFieldError("missing 'name'; every node object needs one")
    problem = node_name_problem(obj["name"])
    if problem:
        raise NodeFieldError(problem)
    return ChildSpec(
        name=obj["name"],
        enabled=parse_enabled(obj.get("enabled", default_enabled)),
        tags=parse_tags(obj.get("tags", [])),
        capacity=parse_capacity(obj.get("capacity", {})),
    )


def add_child_specs(
    forest: Forest, parent: Node, specs: Iterable[ChildSpec], *, source: str
) -> int:
    """Add one child of `parent` per distinct name in `specs`; return how many were added.

    A repeated name under the same parent is skipped with one warning per parent, because
    a second node with the same name and parent would be a replica of itself.
    """
    seen: set[str] = set()
    repeated: list[str] = []
    for spec in specs:
        if spec.name in seen:
            repeated.append(spec.name)
            continue
        seen.add(spec.name)
        node = Node(
            spec.name,
            parent.level + 1,
            parent,
            enabled=spec.enabled,
            tags=spec.tags,
            capacity=dict(spec.capacity),
        )
        forest.add(node)
    if repeated:
        log.warning(
            "Node source %s listed %d repeated child names under %r, kept the first of each: %s",
            source,
            len(repeated),
            parent.name,
            ", ".join(repr(name) for name in repeated[:5]),
        )
    return len(seen)
