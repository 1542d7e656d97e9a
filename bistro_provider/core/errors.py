"""Error types of the resource-forest core.

Every error carries the key path of the offending value so that a user can find it in the
config file, and a message that says what to change.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigIssue:
    """One problem found in a config: the key path, and what is wrong with the value there."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(ValueError):
    """Raised when `bistro_settings` is invalid; no job can run until it is fixed."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = list(issues)
        super().__init__("; ".join(str(issue) for issue in self.issues) or "invalid config")


class NodeSourceError(RuntimeError):
    """Raised when a node source cannot produce its nodes (bad prefs, script failure, ...)."""

    def __init__(self, source: str, message: str):
        self.source = source
        super().__init__(f"node source {source!r}: {message}")


class StatusParseError(ValueError):
    """Raised when a task's status line is neither a known label nor valid status JSON."""
