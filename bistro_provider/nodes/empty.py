"""The `empty` node source: it adds no nodes, which keeps a config valid while it has none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bistro_provider.core.errors import ConfigIssue
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import Settings
from bistro_provider.nodes.base import FetchContext, check_unknown_keys


def validate_empty_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> list[ConfigIssue]:
    return check_unknown_keys(prefs, frozenset(), path)


def fetch_empty(forest: Forest, prefs: dict[str, Any], context: FetchContext) -> None:
    """Add nothing."""
