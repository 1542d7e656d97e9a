"""Parse and validate a Bistro configuration into the objects of `bistro_provider.core.model`.

The format is Bistro's: one object with a ``bistro_settings`` key and one ``bistro_job->NAME``
key per job. Problems are collected instead of raised one by one. Any error in the settings
raises one ConfigError that lists all of them, because no job can run without valid
settings. An error in a job is stored on that job, which then cannot run while the other
jobs still can. Unknown keys only produce warnings, because Bistro ignores them, but such a
warning usually points at a misspelled key.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from bistro_provider.core.errors import ConfigError, ConfigIssue
from bistro_provider.core.model import (
    DEFAULT_BACKOFF,
    INSTANCE_LEVEL,
    NODE_ORDERS,
    POLICIES,
    WORKER_LEVEL,
    WORKER_SELECTORS,
    Backoff,
    Config,
    Job,
    LevelFilter,
    NodeSourceSpec,
    ResourceSpec,
    Settings,
)

SETTINGS_KEY = "bistro_settings"
JOB_PREFIX = "bistro_job->"
MAX_CONFIG_BYTES = 10 * 1024 * 1024
# Deeper values would exhaust Python's stack in the JSON encoder and decoder, which recurse.
MAX_NESTING_DEPTH = 100
# A config file has fewer values than bytes, so more values than that can only come from
# YAML aliases that repeat a part many times over (an "alias bomb").
MAX_CONFIG_VALUES = MAX_CONFIG_BYTES
# Compiling a 100,000-character pattern took 0.24 s and a 10 MB one 24 s (Python 3.11.7 on
# a 2-core VM), and a config reload waits for it.
MAX_REGEX_CHARS = 100_000
MAX_JOB_NAME_LENGTH = 239
KILL_METHODS = ("term", "kill", "term_wait_kill")
DEFAULT_KILL_SUBPROCESS: Mapping[str, Any] = {"method": "term", "kill_wait_ms": 0}
# Bistro supports only these enforcement modes per physical resource.
PHYSICAL_ENFORCEMENTS = {
    "cpu_core": ("none", "soft"),
    "ram_mb": ("none", "hard"),
    "gpu_card": ("none",),
}

_JOB_NAME = re.compile(r"[A-Za-z0-9_-]+")
_MISSING = object()
_BACKOFF_HINT = 'a list of increasing positive seconds, optionally ending in "repeat" or "fail"'
_SETTINGS_KEYS = frozenset(
    {
        "enabled",
        "nodes",
        "level_for_tasks",
        "resources",
        "scheduler",
        "remote_worker_selector",
        "backoff",
        "kill_orphan_tasks_after_sec",
        "working_wait",
        "idle_wait",
        "worker_resources_override",
        "physical_resources",
        "kill_subprocess",
        "task_subprocess",
        "instance_node_name",
    }
)
_SETTINGS_HINTS = {
    "node_order": "Bistro reads node_order inside nodes, so use bistro_settings.nodes.node_order",
    "levels": "move it into bistro_settings.nodes",
    "node_sources": "move it into bistro_settings.nodes",
    "worker_resources_overrides": "the key Bistro reads is worker_resources_override (singular)",
    "kill_request": "the key for kill settings is kill_subprocess",
    "CAUTION_exit_initial_wait_before_timestamp": "this remote-worker startup override of "
    "Bistro has no counterpart here",
}
_NODES_HINTS = {
    "node_source": 'use "node_sources": [{"source": NAME, "prefs": {...}}]',
    "node_source_prefs": 'use "node_sources": [{"source": NAME, "prefs": {...}}]',
}
_JOB_KEYS = frozenset(
    {
        "owner",
        "enabled",
        "priority",
        "resources",
        "config",
        "filters",
        "level_for_tasks",
        "depends_on",
        "backoff",
        "command",
        "kill_orphan_tasks_after_sec",
        "host_placement",
        "level_for_host_placement",
        "kill_subprocess",
        "task_subprocess",
        "create_time",
        "modify_time",
        "version_id",
        "errors",
        "airflow",
    }
)
# Keys of a job's "airflow" object, which only this provider reads.
_AIRFLOW_KEYS = ("continuous", "poll_interval", "task_timeout_sec")
_JOB_HINTS = {
    "kill_request": "the key for kill settings is kill_subprocess",
    "run_only_after_all_nodes_are_done_for": "Bistro documents this key but never implemented it",
}

Parser = Callable[[Any, str], Any]
NodeOrder = Literal["random", "lexicographic", "original"]
# The first matching entry names a value's type in messages, so bool comes before int.
_JSON_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (list, "a list"),
    (dict, "an object"),
    (type(None), "null"),
)


def _show(value: Any) -> str:
    """Render a config value as JSON, shortened so that messages stay one line."""
    try:
        text = json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(value)
        except (ValueError, RecursionError):
            # repr fails on integers over sys.get_int_max_str_digits() digits and deep values.
            text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    names = _JSON_TYPE_NAMES
    kind = next((name for cls, name in names if isinstance(value, cls)), type(value).__name__)
    return f"{_show(value)} ({kind})"


def _join(path: str, key: Any) -> str:
    return f"{path}.{_clip(str(key))}"


def _clip(name: str) -> str:
    """Shorten a key that is too long to be valid, so that a key path stays readable."""
    if len(name) <= MAX_JOB_NAME_LENGTH:
        return name
    return f"{name[:40]}...({len(name)} characters)"


def _item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _never_fits(need: int, resource: str, level: str, limit: int) -> str:
    return f"can never fit: needs {need} of {resource} but the limit on level {level} is {limit}"


@dataclass
class _Checker:
    """Typed access to JSON values that records issues instead of raising.

    Each value method returns the checked value, or None after recording an error.
    """

    errors: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.errors.append(ConfigIssue(path, message))

    def warn(self, path: str, message: str) -> None:
        self.warnings.append(ConfigIssue(path, message))

    def warn_unknown(
        self,
        obj: dict[Any, Any],
        path: str,
        known: Iterable[str],
        hints: Mapping[str, str] | None = None,
    ) -> None:
        known = frozenset(known)
        for key in obj:
            if key not in known:
                hint = (hints or {}).get(key) or f"known keys: {', '.join(sorted(known))}"
                self.warn(_join(path, key), f"unknown key, ignored; {hint}")

    def optional(
        self, obj: dict[str, Any], path: str, key: str, parse: Parser, default: Any
    ) -> Any:
        if key not in obj:
            return default
        value = parse(obj[key], _join(path, key))
        return default if value is None else value

    def fields(
        self, obj: dict[str, Any], path: str, parsers: Mapping[str, Parser]
    ) -> dict[str, Any]:
        """Return the valid values of the keys in `parsers`, leaving out absent keys."""
        parsed = {}
        for key, parse in parsers.items():
            if key in obj:
                value = parse(obj[key], _join(path, key))
                if value is not None:
                    parsed[key] = value
        return parsed

    def _expect(self, value: Any, types: tuple[type, ...], what: str, path: str) -> bool:
        if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
            return True
        self.error(path, f"must be {what}, got {_describe(value)}")
        return False

    def bool_(self, value: Any, path: str) -> bool | None:
        return value if self._expect(value, (bool,), "true or false", path) else None

    def int_(self, value: Any, path: str, minimum: int = 0) -> int | None:
        if not self._expect(value, (int,), "an integer", path):
            return None
        if value < minimum:
            self.error(path, f"must be at least {minimum}, got {value}")
            return None
        return int(value)

    def number(
        self, value: Any, path: str, minimum: float | None = None, what: str = "a number"
    ) -> float | None:
        if not self._expect(value, (int, float), what, path):
            return None
        if isinstance(value, int) and value.bit_length() > 1023:
            message = f"must be a finite number, got an integer of {value.bit_length()} bits"
            self.error(path, f"{message}, too large for a float; use a smaller number")
            return None
        if not math.isfinite(value):
            self.error(path, f"must be a finite number, got {value}")
            return None
        if minimum is not None and value < minimum:
            self.error(path, f"must be at least {minimum}, got {value}")
            return None
        return float(value)

    def string(self, value: Any, path: str, allow_empty: bool = False) -> str | None:
        if not self._expect(value, (str,), "a string", path):
            return None
        if not value and not allow_empty:
            self.error(path, "must not be an empty string")
            return None
        return str(value)

    def choice(self, value: Any, path: str, choices: Collection[str]) -> str | None:
        text = self.string(value, path)
        if text is not None and text not in choices:
            self.error(path, f"invalid value {_show(text)}; allowed values: {', '.join(choices)}")
            return None
        return text

    def obj(self, value: Any, path: str) -> dict[Any, Any] | None:
        return value if self._expect(value, (dict,), "an object", path) else None

    def list_(self, value: Any, path: str, what: str = "a list") -> list[Any] | None:
        return value if self._expect(value, (list,), what, path) else None

    def str_list(self, value: Any, path: str) -> list[str] | None:
        if not self._expect(value, (list,), "a list of strings", path):
            return None
        items = [self.string(item, _item(path, index)) for index, item in enumerate(value)]
        return None if None in items else [item for item in items if item is not None]

    def level(self, value: Any, path: str, levels: tuple[str, ...]) -> str | None:
        """Check a level for tasks or host placement, which must have nodes: not worker."""
        name = self.string(value, path)
        allowed = levels[:-1]
        if name is None or name in allowed:
            return name
        if name == WORKER_LEVEL:
            problem = 'level "worker" has no nodes, so it yields no tasks'
        else:
            problem = f"unknown level {_show(name)}"
        self.error(path, f"{problem}; allowed levels: {', '.join(allowed)}")
        return None

    def regex(self, value: Any, path: str) -> re.Pattern[str] | None:
        # Bistro uses boost's Perl-style regexes; Python's `re` accepts the common subset.
        text = self.string(value, path, allow_empty=True)
        if not text:
            return None
        if len(text) > MAX_REGEX_CHARS:
            message = f"regular expression {_show(text)} is {len(text)} characters long"
            self.error(path, f"{message}; the maximum is {MAX_REGEX_CHARS}, so shorten it")
            return None
        try:
            return re.compile(text)
        except (re.error, OverflowError, RecursionError) as exc:
            # OverflowError: a repeat count such as {4294967296}; RecursionError: deep groups.
            reason = exc if str(exc) else type(exc).__name__
            self.error(path, f"invalid regular expression {_show(text)}: {reason}")
            return None

    def fraction(self, value: Any, path: str) -> float | None:
        number = self.number(value, path)
        if number is not None and number > 1.0:
            self.error(path, f"must be at most 1.0 (all nodes), got {number}")
            return None
        if number is None:
            return None
        # Bistro treats a fraction <= 0 as "all nodes".
        return number if number > 0 else 1.0

    def backoff(self, value: Any, path: str) -> Backoff | None:
        try:
            return parse_backoff(value, path)
        except ConfigError as exc:
            self.errors.extend(exc.issues)
            return None


def parse_backoff(value: Any, path: str = "backoff") -> Backoff:
    """Parse a backoff list such as ``[15, 60, "repeat"]``.

    Items after ``"repeat"`` or ``"fail"`` are ignored, as Bistro ignores them.

    :raises ConfigError: naming every invalid item.
    """
    if not isinstance(value, list) or not value:
        raise ConfigError([ConfigIssue(path, f"must be {_BACKOFF_HINT}, got {_describe(value)}")])
    issues: list[ConfigIssue] = []
    delays: list[int] = []
    repeat = False
    for index, item in enumerate(value):
        if isinstance(item, str) and item in ("repeat", "fail"):
            if item == "repeat" and not delays:
                message = '"repeat" needs a delay before it; use ["fail"] for no retries'
                issues.append(ConfigIssue(_item(path, index), message))
            repeat = item == "repeat"
            break
        problem = _backoff_item_problem(item, delays)
        if problem:
            issues.append(ConfigIssue(_item(path, index), problem))
        else:
            delays.append(item)
    if issues:
        raise ConfigError(issues)
    return Backoff(tuple(delays), repeat)


def _backoff_item_problem(item: Any, delays: list[int]) -> str | None:
    if isinstance(item, str):
        return f"invalid value {_show(item)}; allowed words: repeat, fail"
    if isinstance(item, bool) or not isinstance(item, int):
        return f"must be a whole number of seconds, got {_describe(item)}"
    if item <= 0:
        return f"must be a positive number of seconds, got {item}"
    if delays and item <= delays[-1]:
        return f"must be greater than the delay before it ({delays[-1]}), got {item}"
    return None


DEFAULT_BACKOFF_SETTINGS = parse_backoff(list(DEFAULT_BACKOFF))


def parse_config(data: dict[str, Any] | str, *, origin: str = "<config>") -> Config:
    """Parse a Bistro config given as a dict or as JSON or YAML text.

    :param origin: where the config came from, used in messages about unparsable text.
    :raises ConfigError: when the text cannot be parsed or `bistro_settings` is invalid.
    """
    if isinstance(data, str):
        data = _decode_text(data, origin, "auto")
    return _build_config(data, origin)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and parse a config file: YAML for ``.yaml``/``.yml``, JSON for anything else.

    :raises ConfigError: when the file cannot be read, is over 10 MiB, or is invalid.
    """
    origin = str(path)
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        message = f"cannot read the config file: {exc.strerror or exc}"
        raise ConfigError([ConfigIssue(origin, message)]) from exc
    if len(raw) > MAX_CONFIG_BYTES:
        message = f"file is larger than {MAX_CONFIG_BYTES} bytes (10 MiB); split or shrink it"
        raise ConfigError([ConfigIssue(origin, message)])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text: invalid byte at offset {exc.start}"
        raise ConfigError([ConfigIssue(origin, message)]) from exc
    fmt = "yaml" if Path(path).suffix.lower() in (".yaml", ".yml") else "json"
    config_dir = str(Path(path).resolve().parent)
    return _build_config(_decode_text(text, origin, fmt), origin, config_dir)


def _decode_text(text: str, origin: str, fmt: str) -> Any:
    """Decode config text; `fmt` is "json", "yaml" or "auto" (JSON, then YAML)."""
    if not text.strip():
        raise ConfigError([ConfigIssue(origin, "the config is empty")])
    if fmt == "yaml":
        return _load_yaml(text, origin, "not valid YAML")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        json_error = f"line {exc.lineno} column {exc.colno}: {exc.msg}"
    except RecursionError:
        raise ConfigError([ConfigIssue(origin, _too_deep("not valid JSON"))]) from None
    except ValueError:
        # The decoder raises a plain ValueError for an integer over the digit limit.
        raise ConfigError([ConfigIssue(origin, _too_long_number("not valid JSON"))]) from None
    # Text that opens like a JSON object or list was meant as JSON, so the JSON error is the
    # useful one. YAML would accept or reject broken JSON in confusing ways.
    if fmt == "json" or text.lstrip().startswith(("{", "[")):
        label = "not valid JSON" if fmt == "json" else "not valid JSON or YAML"
        raise ConfigError([ConfigIssue(origin, f"{label}: {json_error}")])
    return _load_yaml(text, origin, "not valid JSON or YAML")


# libyaml's safe loader, where PyYAML was built with it, reads a 1.4 MB file in 0.5 s where the
# pure-Python one takes 4.8 s, and it rejects nesting over 1000 levels with a ScannerError.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str, origin: str, label: str) -> Any:
    try:
        return yaml.load(text, Loader=_YAML_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        message = f"{label}: {where}{exc.problem or exc}"
        raise ConfigError([ConfigIssue(origin, message)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(origin, f"{label}: {exc}")]) from exc
    except RecursionError:
        raise ConfigError([ConfigIssue(origin, _too_deep(label))]) from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors raise these for values such as the date 2001-02-30 or an
        # integer over the digit limit, without a position.
        if "integer string conversion" in str(exc):
            raise ConfigError([ConfigIssue(origin, _too_long_number(label))]) from exc
        message = f"{label}: invalid value ({exc}); quote it to make it a string, or fix it"
        raise ConfigError([ConfigIssue(origin, message)]) from exc


def _too_deep(label: str) -> str:
    return f"{label}: nested too deeply to read; keep values under {MAX_NESTING_DEPTH} levels"


def _too_long_number(label: str) -> str:
    digits = sys.get_int_max_str_digits()
    return f"{label}: a number has more than {digits} digits; shorten it or quote it"


def _check_nesting(data: Any, origin: str) -> None:
    """Raise ConfigError when `data` nests deeper than MAX_NESTING_DEPTH or contains more
    than MAX_CONFIG_VALUES values, counting a part that YAML aliases repeat each time.

    The walk uses its own stack, so a deep value cannot overflow Python's, and it bounds
    the work of later steps that recurse or expand the value: messages, and the JSON
    argument that every task receives.
    """
    if not isinstance(data, (dict, list)):
        return
    stack: list[tuple[Any, int, tuple[Any, ...] | None]] = [(data, 0, None)]
    count = 0
    while stack:
        value, depth, trail = stack.pop()
        count += len(value)
        if count > MAX_CONFIG_VALUES:
            message = (
                f"contains more than {MAX_CONFIG_VALUES} values once YAML aliases are expanded; "
                "write the repeated parts out or make the config smaller"
            )
            raise ConfigError([ConfigIssue(origin, message)])
        for key, child in value.items() if isinstance(value, dict) else enumerate(value):
            if not isinstance(child, (dict, list)):
                continue
            if depth >= MAX_NESTING_DEPTH:
                message = (
                    f"nested more than {MAX_NESTING_DEPTH} levels deep, or a YAML alias "
                    "refers to its own anchor; flatten the value"
                )
                raise ConfigError([ConfigIssue(_trail_path((key, trail)), message)])
            stack.append((child, depth + 1, (key, trail)))


def _trail_path(trail: tuple[Any, ...] | None) -> str:
    keys = []
    while trail is not None:
        key, trail = trail
        keys.append(key)
    keys.reverse()
    path = str(keys[0])
    for key in keys[1:]:
        path = _item(path, key) if isinstance(key, int) else _join(path, key)
    return path if len(path) <= 120 else path[:117] + "..."


def _build_config(data: Any, origin: str, config_dir: str | None = None) -> Config:
    _check_nesting(data, origin)
    if not isinstance(data, dict):
        message = f"must be an object with {SETTINGS_KEY} and {JOB_PREFIX}NAME keys"
        raise ConfigError([ConfigIssue(origin, f"{message}, got {_describe(data)}")])
    check = _Checker()
    job_values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(key, str) and key.startswith(JOB_PREFIX):
            job_values[key[len(JOB_PREFIX) :]] = value
        elif key != SETTINGS_KEY:
            message = (
                f"unknown top-level key, ignored; Bistro reads {SETTINGS_KEY} and {JOB_PREFIX}NAME"
            )
            check.warn(_clip(str(key)), message)
    settings = _parse_settings(data.get(SETTINGS_KEY, _MISSING), check)
    settings = _check_node_sources(settings, check, config_dir)
    warnings = list(check.warnings)
    jobs: dict[str, Job] = {}
    for name, value in job_values.items():
        job_check = _Checker()
        jobs[name] = _parse_job(name, value, settings, frozenset(job_values), job_check)
        warnings.extend(job_check.warnings)
    return Config(settings, _add_cycle_errors(jobs), tuple(warnings))


def _check_node_sources(settings: Settings, check: _Checker, config_dir: str | None) -> Settings:
    """Check each node source's prefs without running it, and record the config file's
    directory, against which the sources resolve relative paths."""
    from bistro_provider.nodes.registry import source_prefs_warnings, validate_source_prefs

    issues = []
    for spec in settings.node_sources:
        issues.extend(validate_source_prefs(spec, settings))
        check.warnings.extend(source_prefs_warnings(spec, settings))
    if issues:
        raise ConfigError(issues)
    return replace(settings, config_dir=config_dir)


# --- settings ---------------------------------------------------------------------------


def _parse_settings(value: Any, check: _Checker) -> Settings:
    if not isinstance(value, dict):
        message = f"must be an object with at least nodes and resources, got {_describe(value)}"
        check.error(SETTINGS_KEY, message)
        raise ConfigError(check.errors)
    check.warn_unknown(value, SETTINGS_KEY, _SETTINGS_KEYS, _SETTINGS_HINTS)
    configured, sources, node_order = _parse_nodes(value, check)
    levels = (INSTANCE_LEVEL, *configured, WORKER_LEVEL)
    resources = _parse_resources(value, levels, check)
    overrides = _parse_worker_overrides(value, resources, check)
    physical = _parse_physical_resources(value, resources, check)
    _check_defaults_fit(resources, overrides, physical, check)
    options = _parse_settings_options(value, levels, check)
    if check.errors:
        raise ConfigError(check.errors)
    return Settings(
        levels=levels,
        resources=resources,
        node_sources=sources,
        node_order=node_order,
        worker_resources_override=overrides,
        physical_resources=physical,
        **options,
    )


def _parse_settings_options(
    obj: dict[str, Any], levels: tuple[str, ...], check: _Checker
) -> dict[str, Any]:
    option = partial(check.optional, obj, SETTINGS_KEY)
    return {
        # Bistro's code defaults to false although its configuration docs say true, so a
        # new config starts no task until someone enables it on purpose.
        "enabled": option("enabled", check.bool_, False),
        # Bistro's default is the last configured level (the instance level if none).
        "level_for_tasks": option(
            "level_for_tasks", partial(check.level, levels=levels), levels[-2]
        ),
        "scheduler": option("scheduler", partial(check.choice, choices=POLICIES), "roundrobin"),
        "remote_worker_selector": option(
            "remote_worker_selector", partial(check.choice, choices=WORKER_SELECTORS), "roundrobin"
        ),
        "backoff": option("backoff", check.backoff, DEFAULT_BACKOFF_SETTINGS),
        "kill_orphan_tasks_after_sec": _parse_kill_orphans(obj, SETTINGS_KEY, None, check),
        "working_wait": option("working_wait", partial(check.number, minimum=0), 0.5),
        "idle_wait": option("idle_wait", partial(check.number, minimum=0), 5.0),
        "kill_subprocess": _parse_kill_subprocess(
            obj, SETTINGS_KEY, DEFAULT_KILL_SUBPROCESS, check
        ),
        "task_subprocess": _parse_task_subprocess(obj, SETTINGS_KEY, {}, check),
        "instance_node_name": option("instance_node_name", check.string, INSTANCE_LEVEL),
    }


def _parse_nodes(
    settings: dict[str, Any], check: _Checker
) -> tuple[tuple[str, ...], tuple[NodeSourceSpec, ...], NodeOrder]:
    path = _join(SETTINGS_KEY, "nodes")
    if "nodes" not in settings:
        check.error(path, 'missing; add "nodes": {"levels": [...], "node_sources": [...]}')
        return (), (), "random"
    nodes = check.obj(settings["nodes"], path)
    if nodes is None:
        return (), (), "random"
    check.warn_unknown(nodes, path, ("levels", "node_sources", "node_order"), _NODES_HINTS)
    levels = _parse_levels(nodes, path, check)
    sources = _parse_node_sources(nodes, path, check)
    order = check.optional(
        nodes, path, "node_order", partial(check.choice, choices=NODE_ORDERS), "random"
    )
    return levels, sources, cast(NodeOrder, order)


def _parse_levels(nodes: dict[str, Any], path: str, check: _Checker) -> tuple[str, ...]:
    path = _join(path, "levels")
    value = nodes.get("levels", _MISSING)
    if not isinstance(value, list) or not value:
        example = '["host", "db"]'
        check.error(
            path,
            f"must be a non-empty list of level names such as {example}, got {_describe(value)}",
        )
        return ()
    levels: list[str] = []
    for index, item in enumerate(value):
        name = check.string(item, _item(path, index))
        if name in (INSTANCE_LEVEL, WORKER_LEVEL):
            message = f"reserved level name {_show(name)}; it is added automatically, so remove it"
            check.error(_item(path, index), message)
        elif name in levels:
            check.error(
                _item(path, index), f"duplicate level {_show(name)}; level names must be unique"
            )
        elif name is not None:
            levels.append(name)
    return tuple(levels)


def _parse_node_sources(
    nodes: dict[str, Any], path: str, check: _Checker
) -> tuple[NodeSourceSpec, ...]:
    path = _join(path, "node_sources")
    items = []
    if "node_sources" in nodes:
        items = check.list_(nodes["node_sources"], path, "a list of {source, prefs} objects") or []
    sources = []
    for index, item in enumerate(items):
        item_path = _item(path, index)
        entry = check.obj(item, item_path)
        if entry is None:
            continue
        check.warn_unknown(entry, item_path, ("source", "prefs"))
        parsed = check.fields(entry, item_path, {"source": check.string, "prefs": check.obj})
        if "source" not in entry:
            check.error(
                _join(item_path, "source"), 'missing; name the node source, such as "manual"'
            )
        elif "source" in parsed:
            sources.append(NodeSourceSpec(parsed["source"], parsed.get("prefs", {}), index))
    if not items:
        check.warn(path, "no node sources, so the instance node is the only node")
    return tuple(sources)


def _parse_resources(
    settings: dict[str, Any], levels: tuple[str, ...], check: _Checker
) -> dict[str, dict[str, ResourceSpec]]:
    path = _join(SETTINGS_KEY, "resources")
    result: dict[str, dict[str, ResourceSpec]] = {level: {} for level in levels}
    if "resources" not in settings:
        check.error(path, 'missing; add "resources": {} when no level has resources')
        return result
    owners: dict[str, str] = {}
    for level, specs in (check.obj(settings["resources"], path) or {}).items():
        level_path = _join(path, level)
        if level not in result and len(levels) == 2:
            continue  # No configured level is valid; an error about the levels is recorded.
        if level not in result:
            check.error(
                level_path, f"unknown level {_show(level)}; defined levels: {', '.join(levels)}"
            )
            continue
        for name, spec in (check.obj(specs, level_path) or {}).items():
            parsed = _parse_resource(name, level, spec, _join(level_path, name), check)
            if parsed is not None and name in owners:
                message = (
                    f"resource {_show(name)} is already defined on level {_show(owners[name])}"
                )
                check.error(
                    _join(level_path, name), f"{message}; resource names are global, so rename one"
                )
            elif parsed is not None:
                owners[name] = level
                result[level][name] = parsed
    return result


def _parse_resource(
    name: Any, level: str, spec: Any, path: str, check: _Checker
) -> ResourceSpec | None:
    if not isinstance(name, str) or not name:
        check.error(path, f"invalid resource name {_show(name)}; use a non-empty string")
        return None
    obj = check.obj(spec, path)
    if obj is None:
        return None
    parsers: dict[str, Parser] = {"limit": check.int_, "default": check.int_, "weight": check.int_}
    check.warn_unknown(obj, path, parsers)
    parsed = check.fields(obj, path, parsers)
    for key in ("limit", "default"):
        if key not in obj:
            check.error(_join(path, key), "missing; every resource needs a limit and a default")
    if "limit" not in parsed or "default" not in parsed:
        return None
    return ResourceSpec(name, level, parsed["limit"], parsed["default"], parsed.get("weight", 0))


def _check_worker_resource(
    name: str, path: str, resources: dict[str, dict[str, ResourceSpec]], check: _Checker
) -> bool:
    """Record an error unless `name` is a resource of the worker level."""
    if name in resources[WORKER_LEVEL]:
        return True
    choices = f"worker resources: {', '.join(sorted(resources[WORKER_LEVEL])) or '(none)'}"
    owner = next((level for level, specs in resources.items() if name in specs), None)
    if owner is None:
        check.error(path, f"unknown resource {_show(name)}; {choices}")
    else:
        check.error(
            path, f"resource {_show(name)} belongs to level {_show(owner)}, not worker; {choices}"
        )
    return False


def _parse_worker_overrides(
    settings: dict[str, Any], resources: dict[str, dict[str, ResourceSpec]], check: _Checker
) -> dict[str, dict[str, int]]:
    path = _join(SETTINGS_KEY, "worker_resources_override")
    result: dict[str, dict[str, int]] = {}
    for worker, amounts in (
        check.optional(settings, SETTINGS_KEY, "worker_resources_override", check.obj, {})
    ).items():
        worker_path = _join(path, worker)
        result[str(worker)] = {}
        for name, amount in (check.obj(amounts, worker_path) or {}).items():
            item_path = _join(worker_path, name)
            if _check_worker_resource(name, item_path, resources, check):
                value = check.int_(amount, item_path)
                if value is not None:
                    result[str(worker)][name] = value
    return result


def _parse_physical_resources(
    settings: dict[str, Any], resources: dict[str, dict[str, ResourceSpec]], check: _Checker
) -> dict[str, dict[str, Any]]:
    path = _join(SETTINGS_KEY, "physical_resources")
    result: dict[str, dict[str, Any]] = {}
    used_by: dict[str, str] = {}
    for kind, entry in check.optional(
        settings, SETTINGS_KEY, "physical_resources", check.obj, {}
    ).items():
        kind_path = _join(path, kind)
        if kind not in PHYSICAL_ENFORCEMENTS:
            allowed = ", ".join(sorted(PHYSICAL_ENFORCEMENTS))
            check.error(
                kind_path, f"unknown physical resource {_show(kind)}; allowed values: {allowed}"
            )
            continue
        parsed = _parse_physical_entry(kind, entry, kind_path, resources, check)
        if parsed is None:
            continue
        logical = parsed["logical_resource"]
        if logical in used_by:
            message = f"resource {_show(logical)} is already set by {used_by[logical]}"
            check.error(_join(kind_path, "logical_resource"), f"{message}; map each resource once")
            continue
        used_by[logical] = kind
        result[kind] = parsed
    return result


def _parse_physical_entry(
    kind: str, entry: Any, path: str, resources: dict[str, dict[str, ResourceSpec]], check: _Checker
) -> dict[str, Any] | None:
    obj = check.obj(entry, path)
    if obj is None:
        return None
    parsers: dict[str, Parser] = {
        "logical_resource": check.string,
        "multiply_logical_by": check.number,
        "physical_reserve_amount": check.number,
        "enforcement": partial(check.choice, choices=PHYSICAL_ENFORCEMENTS[kind]),
    }
    check.warn_unknown(obj, path, parsers)
    parsed = check.fields(obj, path, parsers)
    if "logical_resource" not in obj:
        check.error(_join(path, "logical_resource"), "missing; name the worker resource it sets")
    logical = parsed.get("logical_resource")
    if logical is None or not _check_worker_resource(
        logical, _join(path, "logical_resource"), resources, check
    ):
        return None
    multiply = parsed.get("multiply_logical_by", 1.0)
    if abs(multiply) < 1e-12:
        check.error(
            _join(path, "multiply_logical_by"),
            f"must not be 0, got {multiply}; it divides the physical amount",
        )
        return None
    return {
        "logical_resource": logical,
        "multiply_logical_by": multiply,
        "physical_reserve_amount": parsed.get("physical_reserve_amount", 0.0),
        "enforcement": parsed.get("enforcement", "none"),
    }


def _max_capacity(
    spec: ResourceSpec, overrides: dict[str, dict[str, int]], physical: dict[str, dict[str, Any]]
) -> int | None:
    """Return the most of a resource that any one node or worker can have, None if unknown.

    NOTE: per-node capacity overrides of data nodes are set at run time and are not part of
    the config, so a data level counts with its configured limit here.
    """
    if spec.level != WORKER_LEVEL:
        return spec.limit
    if any(entry["logical_resource"] == spec.name for entry in physical.values()):
        return None  # Measured on each worker at run time.
    overridden = [amounts[spec.name] for amounts in overrides.values() if spec.name in amounts]
    return max([spec.limit, *overridden])


def _check_defaults_fit(
    resources: dict[str, dict[str, ResourceSpec]],
    overrides: dict[str, dict[str, int]],
    physical: dict[str, dict[str, Any]],
    check: _Checker,
) -> None:
    for level, specs in resources.items():
        for spec in specs.values():
            capacity = _max_capacity(spec, overrides, physical)
            if capacity is not None and spec.default > capacity:
                path = f"{SETTINGS_KEY}.resources.{level}.{spec.name}.default"
                message = _never_fits(spec.default, spec.name, level, capacity)
                check.error(path, f"{message}; lower the default or raise the limit")


def _parse_kill_orphans(
    obj: dict[str, Any], path: str, default: float | None, check: _Checker
) -> float | None:
    """Parse kill_orphan_tasks_after_sec: true means 0 s, false or a negative number never."""
    key = "kill_orphan_tasks_after_sec"
    if key not in obj:
        return default
    value = obj[key]
    if isinstance(value, bool):
        return 0.0 if value else None
    seconds = check.number(value, _join(path, key), what="true, false or a number of seconds")
    if seconds is None:
        return default
    return seconds if seconds >= 0 else None


def _parse_kill_subprocess(
    obj: dict[str, Any], path: str, base: Mapping[str, Any], check: _Checker
) -> dict[str, Any]:
    """Parse kill_subprocess over `base`, which supplies the keys it leaves out."""
    path = _join(path, "kill_subprocess")
    value = check.obj(obj["kill_subprocess"], path) if "kill_subprocess" in obj else None
    if value is None:
        return dict(base)
    parsers: dict[str, Parser] = {
        "method": partial(check.choice, choices=KILL_METHODS),
        "kill_wait_ms": check.int_,
    }
    check.warn_unknown(value, path, parsers)
    return {**base, **check.fields(value, path, parsers)}


def _parse_task_subprocess(
    obj: dict[str, Any], path: str, base: Mapping[str, Any], check: _Checker
) -> dict[str, Any]:
    """Parse task_subprocess on top of `base`, merging ``cgroups`` key by key as Bistro does."""
    path = _join(path, "task_subprocess")
    value = check.obj(obj["task_subprocess"], path) if "task_subprocess" in obj else None
    if value is None:
        return dict(base)
    parsers: dict[str, Parser] = {
        "poll_ms": partial(check.int_, minimum=1),
        "max_log_lines_per_poll_interval": partial(check.int_, minimum=1),
        "parent_death_signal": check.int_,
        "process_group_leader": check.bool_,
        "use_canary_pipe": check.bool_,
        "cgroups": check.obj,
    }
    check.warn_unknown(value, path, parsers)
    parsed = check.fields(value, path, parsers)
    if "cgroups" in parsed:
        cgroups_path = _join(path, "cgroups")
        cgroup_parsers: dict[str, Parser] = {
            "root": partial(check.string, allow_empty=True),
            "slice": partial(check.string, allow_empty=True),
            "subsystems": check.str_list,
            "kill_without_freezer": check.bool_,
        }
        check.warn_unknown(parsed["cgroups"], cgroups_path, cgroup_parsers)
        cgroups = check.fields(parsed["cgroups"], cgroups_path, cgroup_parsers)
        parsed["cgroups"] = {**base.get("cgroups", {}), **cgroups}
    return {**base, **parsed}


# --- jobs -------------------------------------------------------------------------------


def _parse_job(
    name: str, value: Any, settings: Settings, job_names: frozenset[str], check: _Checker
) -> Job:
    path = JOB_PREFIX + _clip(name)
    if not _JOB_NAME.fullmatch(name) or len(name) > MAX_JOB_NAME_LENGTH:
        limit = MAX_JOB_NAME_LENGTH
        check.error(
            path, f"invalid job name {_show(name)}; use 1 to {limit} letters, digits, _ or -"
        )
    defaults = Job(
        name=name,
        level_for_tasks=settings.level_for_tasks,
        backoff=settings.backoff,
        kill_orphan_tasks_after_sec=settings.kill_orphan_tasks_after_sec,
        kill_subprocess=dict(settings.kill_subprocess),
        task_subprocess=dict(settings.task_subprocess),
    )
    if not isinstance(value, dict):
        check.error(path, f"must be an object, got {_describe(value)}")
        return replace(defaults, errors=tuple(check.errors))
    check.warn_unknown(value, path, _JOB_KEYS, _JOB_HINTS)
    fields = _parse_job_fields(value, path, settings, job_names, check)
    if value.get("errors"):
        message = f"contains errors of an earlier parse: {_show(value['errors'])}"
        message += "; fix them and remove the errors key"
        check.error(_join(path, "errors"), message)
    return replace(defaults, **fields, errors=tuple(check.errors), raw=dict(value))


def _parse_job_fields(
    obj: dict[str, Any], path: str, settings: Settings, job_names: frozenset[str], check: _Checker
) -> dict[str, Any]:
    option = partial(check.optional, obj, path)
    levels = settings.levels
    level_for_tasks = option(
        "level_for_tasks", partial(check.level, levels=levels), settings.level_for_tasks
    )
    if "owner" not in obj:
        check.error(_join(path, "owner"), 'missing; every job needs an "owner" string')
    return {
        "owner": option("owner", check.string, ""),
        "enabled": option("enabled", check.bool_, True),
        "priority": option("priority", check.number, 1.0),
        "resources": _parse_job_resources(obj, path, settings, level_for_tasks, check),
        "config": option("config", check.obj, {}),
        "filters": _parse_filters(obj, path, levels, check),
        "level_for_tasks": level_for_tasks,
        "depends_on": _parse_depends_on(obj, path, job_names, check),
        "backoff": option("backoff", check.backoff, settings.backoff),
        "command": tuple(option("command", check.str_list, [])),
        "kill_orphan_tasks_after_sec": _parse_kill_orphans(
            obj, path, settings.kill_orphan_tasks_after_sec, check
        ),
        **_parse_host_placement(obj, path, levels, level_for_tasks, check),
        "kill_subprocess": _parse_kill_subprocess(obj, path, settings.kill_subprocess, check),
        "task_subprocess": _parse_task_subprocess(obj, path, settings.task_subprocess, check),
        **_parse_airflow_options(obj, path, check),
    }


def _parse_airflow_options(obj: dict[str, Any], path: str, check: _Checker) -> dict[str, Any]:
    """Parse a job's optional ``airflow`` object into `Job` fields; Bistro never reads it.

    An unknown key inside it is an error, not a warning as elsewhere: the object belongs to
    this provider, so an unknown key is a typo that would silently turn a feature off.
    """
    if "airflow" not in obj:
        return {}
    path = _join(path, "airflow")
    value = check.obj(obj["airflow"], path)
    if value is None:
        return {}
    for key in value:
        if key not in _AIRFLOW_KEYS:
            check.error(_join(path, key), f"unknown key; allowed keys: {', '.join(_AIRFLOW_KEYS)}")
    parsers: dict[str, Parser] = {
        "continuous": check.bool_,
        "poll_interval": partial(_positive_seconds, check),
        "task_timeout_sec": partial(_positive_seconds, check),
    }
    return check.fields(value, path, parsers)


def _positive_seconds(check: _Checker, value: Any, path: str) -> float | None:
    seconds = check.number(value, path, what="a number of seconds")
    if seconds is not None and seconds <= 0:
        check.error(path, f"must be a positive number of seconds, got {_show(value)}")
        return None
    return seconds


def _parse_job_resources(
    obj: dict[str, Any], path: str, settings: Settings, level_for_tasks: str, check: _Checker
) -> dict[str, int]:
    by_name = check.optional(obj, path, "resources", check.obj, {})
    path = _join(path, "resources")
    specs = {name: spec for specs in settings.resources.values() for name, spec in specs.items()}
    defined = ", ".join(settings.resource_names()) or "(none)"
    amounts: dict[str, int] = {}
    for name, amount in by_name.items():
        item_path = _join(path, name)
        if name not in specs:
            check.error(item_path, f"unknown resource {_show(name)}; defined resources: {defined}")
            continue
        need = check.int_(amount, item_path)
        if need is None:
            continue
        amounts[name] = need
        spec = specs[name]
        on_path = spec.level == WORKER_LEVEL or (
            settings.level_index(spec.level) <= settings.level_index(level_for_tasks)
        )
        capacity = _max_capacity(
            spec, settings.worker_resources_override, settings.physical_resources
        )
        if on_path and capacity is not None and need > capacity:
            check.error(item_path, _never_fits(need, name, spec.level, capacity))
    return amounts


def _parse_filters(
    obj: dict[str, Any], path: str, levels: tuple[str, ...], check: _Checker
) -> dict[str, LevelFilter]:
    by_level = check.optional(obj, path, "filters", check.obj, {})
    path = _join(path, "filters")
    filters: dict[str, LevelFilter] = {}
    for level, spec in by_level.items():
        level_path = _join(path, level)
        if level not in levels:
            check.error(
                level_path, f"unknown level {_show(level)}; defined levels: {', '.join(levels)}"
            )
            continue
        parsed = _parse_level_filter(spec, level_path, check)
        if parsed is not None and parsed != LevelFilter():
            filters[level] = parsed
    return filters


def _parse_level_filter(spec: Any, path: str, check: _Checker) -> LevelFilter | None:
    obj = check.obj(spec, path)
    if obj is None:
        return None
    parsers: dict[str, Parser] = {
        "whitelist": check.str_list,
        "whitelist_regex": check.regex,
        "blacklist": check.str_list,
        "blacklist_regex": check.regex,
        "fraction_of_nodes": check.fraction,
        "tag_whitelist": check.str_list,
    }
    check.warn_unknown(obj, path, parsers)
    parsed = check.fields(obj, path, parsers)
    return LevelFilter(
        whitelist=frozenset(parsed.get("whitelist", ())),
        whitelist_regex=parsed.get("whitelist_regex"),
        blacklist=frozenset(parsed.get("blacklist", ())),
        blacklist_regex=parsed.get("blacklist_regex"),
        fraction_of_nodes=parsed.get("fraction_of_nodes", 1.0),
        tag_whitelist=frozenset(parsed.get("tag_whitelist", ())),
    )


def _parse_depends_on(
    obj: dict[str, Any], path: str, job_names: frozenset[str], check: _Checker
) -> tuple[str, ...]:
    names = check.optional(obj, path, "depends_on", check.str_list, [])
    for index, name in enumerate(names):
        if name not in job_names:
            # Bistro accepts this too: the job waits for a job that does not exist yet.
            message = (
                f"unknown job {_show(name)}; this job cannot run until a job of that name exists"
            )
            check.warn(_item(_join(path, "depends_on"), index), message)
    return tuple(names)


def _parse_host_placement(
    obj: dict[str, Any], path: str, levels: tuple[str, ...], level_for_tasks: str, check: _Checker
) -> dict[str, Any]:
    host = check.optional(obj, path, "host_placement", partial(check.string, allow_empty=True), "")
    level = check.optional(
        obj, path, "level_for_host_placement", partial(check.level, levels=levels), None
    )
    level_path = _join(path, "level_for_host_placement")
    if host and level is not None:
        check.warn(
            level_path, "ignored because host_placement is set, which wins; remove one of them"
        )
    elif level is not None and levels.index(level) > levels.index(level_for_tasks):
        message = f"level {_show(level)} is below level_for_tasks {_show(level_for_tasks)}"
        check.warn(level_path, f"{message}, so no task has a node on it and none is placed")
    return {"host_placement": host or None, "level_for_host_placement": level}


def _find_cycle(start: str, graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """Return a depends_on cycle through `start` such as [a, b, a], or None."""
    parents: dict[str, str] = {}
    queue = deque([start])
    while queue:
        current = queue.popleft()
        for dependency in graph[current]:
            if dependency == start:
                chain = [current]
                while chain[-1] != start:
                    chain.append(parents[chain[-1]])
                return [*reversed(chain), start]
            if dependency in graph and dependency not in parents:
                parents[dependency] = current
                queue.append(dependency)
    return None


def _add_cycle_errors(jobs: dict[str, Job]) -> dict[str, Job]:
    graph = {name: job.depends_on for name, job in jobs.items()}
    result = {}
    for name, job in jobs.items():
        cycle = _find_cycle(name, graph)
        if cycle is not None:
            message = (
                f"cycle {' -> '.join(cycle)}; a job on a cycle waits for itself and never runs"
            )
            job = replace(
                job, errors=(*job.errors, ConfigIssue(JOB_PREFIX + name + ".depends_on", message))
            )
        result[name] = job
    return result


def parse_job_definition(
    config: Config, name: str, value: Any
) -> tuple[Job, tuple[ConfigIssue, ...]]:
    """Parse a job defined outside the config, such as in a DAG file, against its settings.

    The job is checked as if it were ``bistro_job->NAME`` of `config`: its errors are stored
    on the returned job, and a depends_on cycle through the config's jobs is an error too.

    :returns: the job and the warnings about it (unknown keys, for example).
    """
    check = _Checker()
    job = _parse_job(name, value, config.settings, frozenset(config.jobs) | {name}, check)
    job = _add_cycle_errors({**config.jobs, name: job})[name]
    return job, tuple(check.warnings)


# --- output -----------------------------------------------------------------------------


def effective_resources(settings: Settings, job: Job) -> dict[str, int]:
    """Return the amount of every resource of every level that each task of `job` needs."""
    return {
        name: job.resources.get(name, spec.default)
        for specs in settings.resources.values()
        for name, spec in specs.items()
    }


def config_to_json(config: Config) -> dict[str, Any]:
    """Return the effective config as Bistro JSON, with every default written out.

    Parsing the result gives the same settings, and the same effective values for every job
    without errors. A job with errors exports them under ``errors``, which makes it invalid.
    """
    result: dict[str, Any] = {SETTINGS_KEY: _settings_to_json(config.settings)}
    for name, job in config.jobs.items():
        result[JOB_PREFIX + name] = _job_to_json(config.settings, job)
    return result


def _orphans_to_json(seconds: float | None) -> float | bool:
    return False if seconds is None else seconds


def _settings_to_json(settings: Settings) -> dict[str, Any]:
    nodes = {
        "levels": list(settings.configured_levels),
        "node_sources": [{"source": s.source, "prefs": s.prefs} for s in settings.node_sources],
        "node_order": settings.node_order,
    }
    resources = {
        level: {
            name: {"limit": spec.limit, "default": spec.default, "weight": spec.weight}
            for name, spec in specs.items()
        }
        for level, specs in settings.resources.items()
        if specs
    }
    return {
        "enabled": settings.enabled,
        "nodes": nodes,
        "level_for_tasks": settings.level_for_tasks,
        "resources": resources,
        "scheduler": settings.scheduler,
        "remote_worker_selector": settings.remote_worker_selector,
        "backoff": settings.backoff.to_json(),
        "kill_orphan_tasks_after_sec": _orphans_to_json(settings.kill_orphan_tasks_after_sec),
        "working_wait": settings.working_wait,
        "idle_wait": settings.idle_wait,
        "worker_resources_override": settings.worker_resources_override,
        "physical_resources": settings.physical_resources,
        "kill_subprocess": settings.kill_subprocess,
        "task_subprocess": settings.task_subprocess,
        "instance_node_name": settings.instance_node_name,
    }


def _filter_to_json(level_filter: LevelFilter) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key in ("whitelist", "blacklist", "tag_whitelist"):
        if getattr(level_filter, key):
            result[key] = sorted(getattr(level_filter, key))
    for key in ("whitelist_regex", "blacklist_regex"):
        if getattr(level_filter, key) is not None:
            result[key] = getattr(level_filter, key).pattern
    if level_filter.fraction_of_nodes != 1.0:
        result["fraction_of_nodes"] = level_filter.fraction_of_nodes
    return result


def _job_to_json(settings: Settings, job: Job) -> dict[str, Any]:
    result: dict[str, Any] = {
        "enabled": job.enabled,
        "owner": job.owner,
        "level_for_tasks": job.level_for_tasks,
        "priority": job.priority,
        "config": job.config,
        "backoff": job.backoff.to_json(),
        "kill_orphan_tasks_after_sec": _orphans_to_json(job.kill_orphan_tasks_after_sec),
        "resources": effective_resources(settings, job),
        "kill_subprocess": job.kill_subprocess,
        "task_subprocess": job.task_subprocess,
    }
    optional = {
        "filters": {level: _filter_to_json(f) for level, f in job.filters.items()},
        "depends_on": list(job.depends_on),
        "command": list(job.command),
        "host_placement": job.host_placement,
        "level_for_host_placement": job.level_for_host_placement,
        "errors": [str(issue) for issue in job.errors],
        "airflow": _airflow_to_json(job),
    }
    result.update({key: value for key, value in optional.items() if value})
    for key in ("create_time", "modify_time", "version_id"):
        if key in job.raw:
            result[key] = job.raw[key]
    return result


def _airflow_to_json(job: Job) -> dict[str, Any]:
    """Return the job's ``airflow`` object, or {} when every key has its default."""
    result: dict[str, Any] = {}
    if job.continuous or job.poll_interval != Job.poll_interval:
        result = {"continuous": job.continuous, "poll_interval": job.poll_interval}
    if job.task_timeout_sec is not None:
        result["task_timeout_sec"] = job.task_timeout_sec
    return result
