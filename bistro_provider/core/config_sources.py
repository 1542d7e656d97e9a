"""Bistro config sources (file, Airflow Variable, plugin), and job edits in a config document.

A source is named by a location string:

* a file path, or ``file:PATH``: a JSON or YAML file; a new modification time means a
  new version;
* ``variable:NAME``: an Airflow Variable holding the config as JSON;
* ``plugin:NAME``: a callable registered under the entry point group
  ``bistro_provider.config_sources``. It takes no arguments and returns the config as
  text (JSON or YAML) or as a dict.

Variable and plugin sources are read whole on every check, and a change of the content's
SHA-256 digest means a new version. This module imports nothing from Airflow: the Variable
reader comes from `bistro_provider.config_store`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal, Protocol

from bistro_provider.core.config import (
    JOB_PREFIX,
    MAX_CONFIG_BYTES,
    SETTINGS_KEY,
    load_config,
    parse_config,
)
from bistro_provider.core.errors import ConfigError, ConfigIssue
from bistro_provider.core.model import Config

ENTRY_POINT_GROUP = "bistro_provider.config_sources"
SourceKind = Literal["file", "variable", "plugin"]
SOURCE_KINDS: tuple[SourceKind, ...] = ("file", "variable", "plugin")
VERSION_KEY = "version_id"
"""Bistro's job key for compare-and-swap saves; a job without it is at version 0."""

ConfigContent = str | dict[str, Any]
VariableReader = Callable[[str], str | None]
"""Return the Variable's text, or None when no Variable has that name."""


@dataclass(frozen=True)
class SourceLocation:
    """A parsed location string: the kind of source and its path, Variable or plugin name."""

    kind: SourceKind
    name: str

    @classmethod
    def parse(cls, location: str) -> SourceLocation:
        """Parse ``variable:NAME``, ``plugin:NAME``, ``file:PATH`` or a bare file path.

        :raises ValueError: for an empty location or an empty name after the prefix.
        """
        if not location:
            raise ValueError(
                "empty Bistro config location; give a file path, variable:NAME or plugin:NAME"
            )
        kind, _, rest = location.partition(":")
        if kind in SOURCE_KINDS and rest:
            return cls(kind, rest)  # type: ignore[arg-type]
        if kind in SOURCE_KINDS and location.endswith(":"):
            raise ValueError(
                f"invalid Bistro config location {location!r}: the name after {kind}: is missing"
            )
        return cls("file", location)

    def __str__(self) -> str:
        return self.name if self.kind == "file" else f"{self.kind}:{self.name}"


class ConfigSource(Protocol):
    """A config that a long-running process polls; see `LiveForest`."""

    location: str

    def check(self) -> str:
        """Return a version token; a token unlike the last one means the config may have changed.

        :raises ConfigError: when the source cannot be read.
        """

    def load(self) -> Config:
        """Return the parsed config, read after the last `check` at the latest.

        :raises ConfigError: when the source cannot be read or its settings are invalid.
        """


class FileConfigSource:
    """A config file, whose version is its modification time, so polling reads no content."""

    def __init__(self, path: str):
        self.path = path
        self.location = path

    def check(self) -> str:
        try:
            return repr(os.stat(self.path).st_mtime)
        except OSError as exc:
            message = f"cannot read the config file: {exc.strerror or exc}"
            raise ConfigError([ConfigIssue(self.path, message)]) from exc

    def load(self) -> Config:
        return load_config(self.path)


class ContentConfigSource:
    """A config read whole by `read`, whose version is the SHA-256 digest of its content.

    :param location: the location string, used as the origin in messages.
    :param read: returns the config text or dict, or None when it does not exist.
    :param missing_hint: what to do when `read` returns None.
    """

    def __init__(self, location: str, read: Callable[[], ConfigContent | None], missing_hint: str):
        self.location = location
        self._read = read
        self._missing_hint = missing_hint
        self._content: ConfigContent | None = None

    def check(self) -> str:
        self._content = self._read_content()
        return content_digest(self._content)

    def load(self) -> Config:
        content = self._content if self._content is not None else self._read_content()
        self._content = None
        return parse_config(content, origin=self.location)

    def _read_content(self) -> ConfigContent:
        try:
            content = self._read()
        except ConfigError:
            raise
        except Exception as exc:
            # A plugin or a database may raise anything; the caller keeps the last good config.
            message = f"reading the config failed: {type(exc).__name__}: {exc}"
            raise ConfigError([ConfigIssue(self.location, message)]) from exc
        if content is None:
            raise ConfigError([ConfigIssue(self.location, f"not found; {self._missing_hint}")])
        if isinstance(content, bytes):
            content = content.decode("utf-8")
        if not isinstance(content, str | dict):
            kind = type(content).__name__
            message = f"the config must be text or a dict, got {kind}"
            raise ConfigError([ConfigIssue(self.location, message)])
        if isinstance(content, str) and len(content.encode("utf-8")) > MAX_CONFIG_BYTES:
            message = f"the config is larger than {MAX_CONFIG_BYTES} bytes (10 MiB); shrink it"
            raise ConfigError([ConfigIssue(self.location, message)])
        return content


def content_digest(content: ConfigContent) -> str:
    """Return the SHA-256 digest of config text, or of a dict's canonical JSON."""
    if isinstance(content, dict):
        text = json.dumps(content, sort_keys=True, default=str)
    else:
        text = content
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def plugin_reader(
    name: str, points: Callable[[], Mapping[str, EntryPoint]] | None = None
) -> Callable[[], ConfigContent | None]:
    """Return a reader that calls the config-source plugin `name`, loaded on first use.

    :param points: returns the entry points of the group by name; tests pass a fake.
    """
    loaded: list[Callable[[], Any]] = []

    def read() -> ConfigContent | None:
        if not loaded:
            loaded.append(_load_plugin(name, (points or _plugin_entry_points)()))
        return loaded[0]()

    return read


def _plugin_entry_points() -> dict[str, EntryPoint]:
    return {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}


def _load_plugin(name: str, points: Mapping[str, EntryPoint]) -> Callable[[], Any]:
    location = f"plugin:{name}"
    point = points.get(name)
    if point is None:
        registered = ", ".join(sorted(points)) or "none"
        message = (
            f"no entry point {name!r} in group {ENTRY_POINT_GROUP!r}; registered names: "
            f"{registered}. Install the package that provides it or fix [bistro] config_source"
        )
        raise ConfigError([ConfigIssue(location, message)])
    try:
        function = point.load()
    except Exception as exc:
        message = f"cannot load entry point {point.value!r}: {type(exc).__name__}: {exc}"
        raise ConfigError([ConfigIssue(location, message)]) from exc
    if not callable(function):
        message = f"entry point {point.value!r} is not callable"
        raise ConfigError([ConfigIssue(location, message)])
    return function


def open_source(location: str, *, read_variable: VariableReader | None = None) -> ConfigSource:
    """Return the source that `location` names.

    :param read_variable: reads an Airflow Variable; required for ``variable:NAME``.
    :raises ValueError: for an invalid location, or a Variable location without a reader.
    """
    parsed = SourceLocation.parse(location)
    if parsed.kind == "file":
        return FileConfigSource(parsed.name)
    if parsed.kind == "plugin":
        hint = f"the plugin {parsed.name!r} returned None instead of the config"
        return ContentConfigSource(str(parsed), plugin_reader(parsed.name), hint)
    if read_variable is None:
        raise ValueError(f"{location}: reading an Airflow Variable needs a reader")
    name = parsed.name
    hint = f"create the Airflow Variable {name!r} holding the config as JSON"
    return ContentConfigSource(str(parsed), lambda: read_variable(name), hint)


def load_from(source: ConfigSource) -> Config:
    """Read and parse the config of `source` once; for one-shot readers such as DAG files."""
    source.check()
    return source.load()


# -- saving and deleting one job -----------------------------------------------------------


class JobEditError(ValueError):
    """A job save or delete that cannot be applied.

    :param kind: ``invalid`` (bad name or job), ``not_found`` (no such job) or
        ``conflict`` (the expected version is not the current one).
    """

    def __init__(self, message: str, kind: str = "invalid"):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class JobEdit:
    """A config document after one job was saved or deleted, with the job before and after."""

    document: dict[str, Any]
    job: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None

    @property
    def old_version(self) -> int:
        return job_version(self.old)

    @property
    def new_version(self) -> int | None:
        return None if self.new is None else job_version(self.new)


def job_version(entry: Any) -> int:
    """Return a job entry's version: its ``version_id``, or 0 when it has none.

    Bistro writes -1 for "no version", which counts as 0 here too, as does a missing job.
    """
    if not isinstance(entry, dict):
        return 0
    value = entry.get(VERSION_KEY)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


def save_job_entry(
    document: dict[str, Any], name: str, job: Any, expected_version: int, now: float
) -> JobEdit:
    """Return `document` with job `name` replaced by `job`, at the next version.

    Other keys keep their order and values. The job is checked against the document's
    settings first, so a save never stores a job that cannot run.

    :raises JobEditError: ``conflict`` when the job's version is not `expected_version`,
        ``invalid`` when `job` has errors or the settings are invalid.
    """
    if not isinstance(job, dict):
        raise JobEditError(f"job {name!r} must be a JSON object, got {type(job).__name__}")
    key = JOB_PREFIX + name
    old = document.get(key)
    _check_version(name, old, expected_version)
    new = {k: v for k, v in job.items() if k not in ("errors",)}
    new[VERSION_KEY] = job_version(old) + 1
    new["modify_time"] = int(now)
    new["create_time"] = old.get("create_time", int(now)) if isinstance(old, dict) else int(now)
    updated = dict(document)
    updated[key] = new
    _check_job(updated, name)
    return JobEdit(updated, name, old if isinstance(old, dict) else None, new)


def delete_job_entry(document: dict[str, Any], name: str, expected_version: int) -> JobEdit:
    """Return `document` without job `name`.

    :raises JobEditError: ``not_found`` for a job that is not in the document, ``conflict``
        when its version is not `expected_version`.
    """
    key = JOB_PREFIX + name
    if key not in document:
        defined = sorted(k[len(JOB_PREFIX) :] for k in document if str(k).startswith(JOB_PREFIX))
        message = f"job {name!r} is not in the config; defined jobs: {', '.join(defined) or 'none'}"
        raise JobEditError(message, "not_found")
    old = document[key]
    _check_version(name, old, expected_version)
    updated = {k: v for k, v in document.items() if k != key}
    return JobEdit(updated, name, old if isinstance(old, dict) else None, None)


def _check_version(name: str, old: Any, expected_version: int) -> None:
    current = job_version(old)
    if expected_version != current:
        state = f"is at version {current}" if old is not None else "does not exist (version 0)"
        message = (
            f"version conflict: job {name!r} {state}, but the request expected version "
            f"{expected_version}; someone else changed it. Read the job again, reapply your "
            f"change and send the current version"
        )
        raise JobEditError(message, "conflict")


def _check_job(document: dict[str, Any], name: str) -> None:
    if SETTINGS_KEY not in document:
        raise JobEditError(f"the config has no {SETTINGS_KEY}; save the whole config first")
    try:
        config = parse_config(document, origin="the saved config")
    except ConfigError as exc:
        raise JobEditError(f"the config's settings are invalid, fix them first: {exc}") from exc
    errors = config.jobs[name].errors
    if errors:
        raise JobEditError(f"job {name!r} is invalid: " + "; ".join(str(issue) for issue in errors))
