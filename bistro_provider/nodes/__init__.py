"""Node sources: the built-in ones (empty, manual, range_label, script), their registry, and
`fetch_forest`, which builds a forest from a config's `node_sources` in order."""

from __future__ import annotations

from bistro_provider.nodes.base import FetchContext, NodeSource, PrefsValidator
from bistro_provider.nodes.registry import (
    SOURCES,
    VALIDATORS,
    fetch_forest,
    register_source,
    validate_source_prefs,
)

__all__ = [
    "SOURCES",
    "VALIDATORS",
    "FetchContext",
    "NodeSource",
    "PrefsValidator",
    "fetch_forest",
    "register_source",
    "validate_source_prefs",
]
