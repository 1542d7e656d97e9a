"""Node sources: the built-in ones (add_time, empty, file, manual, plugin, range_label,
script), their registry, and `fetch_forest`, which builds a forest from a config's
`node_sources` in order."""

from __future__ import annotations

from bistro_provider.nodes.base import FetchContext, NodeSource, PrefsValidator
from bistro_provider.nodes.registry import (
    SOURCES,
    VALIDATORS,
    WARNING_CHECKS,
    fetch_forest,
    register_source,
    source_prefs_warnings,
    validate_source_prefs,
)

__all__ = [
    "SOURCES",
    "VALIDATORS",
    "WARNING_CHECKS",
    "FetchContext",
    "NodeSource",
    "PrefsValidator",
    "fetch_forest",
    "register_source",
    "source_prefs_warnings",
    "validate_source_prefs",
]
