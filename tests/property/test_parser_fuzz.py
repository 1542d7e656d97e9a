"""Fuzzing of the two parsers that read untrusted text: the config and the task status line.

Rules: `parse_config` returns a Config or raises ConfigError, whatever it is given, and
`parse_status_line` returns one of the result kinds (with None or an object as data) or
raises StatusParseError. Neither may raise any other exception, nor run away: each call
runs under a watchdog of `WATCHDOG_SECONDS`, a bound far above the few milliseconds a call
takes, so only a hang trips it.

The config inputs are random JSON-like values, random text (JSON or YAML), and a valid
config with random mutations: wrong types, unknown keys, removed keys, huge and
non-finite numbers, long strings and deep nesting. Examples stay small except for the
explicit 10 MB case. BISTRO_PROPERTY_EXAMPLES sets the number of examples (default 200).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, TypeVar

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bistro_provider.core.config import parse_config
from bistro_provider.core.errors import ConfigError, StatusParseError
from bistro_provider.core.model import Config
from bistro_provider.core.status import RESULT_KINDS, parse_status_line

EXAMPLES = int(os.environ.get("BISTRO_PROPERTY_EXAMPLES", "200"))
WATCHDOG_SECONDS = 60
TEN_MB = 10 * 1024 * 1024
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

T = TypeVar("T")


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so that no `except Exception` can hide it."""


@contextmanager
def watchdog(seconds: float = WATCHDOG_SECONDS) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Hang(f"the call ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def guarded(call: Callable[[], T]) -> T:
    with watchdog():
        return call()


def parse_or_config_error(data: Any) -> Config | ConfigError:
    """Return the parsed config, or the ConfigError; any other exception fails the test."""
    try:
        return guarded(lambda: parse_config(data))
    except ConfigError as exc:
        assert exc.issues, "a ConfigError must list at least one issue"
        assert all(issue.path and issue.message for issue in exc.issues), str(exc)
        return exc


def valid_config() -> dict[str, Any]:
    """Return a config that uses most keys, so that mutations reach most parser paths."""
    return {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [
                    {"source": "manual", "prefs": {"host1": ["db1", "db2"], "host2": "db3"}},
                    {
                        "source": "range_label",
                        "prefs": {
                            "parent_level": "host",
                            "start": 1,
                            "end": 2,
                            "format": "{parent}_s{i}",
                        },
                    },
                ],
            },
            "level_for_tasks": "db",
            "resources": {
                "instance": {"global": {"limit": 10, "default": 1}},
                "host": {"host_slots": {"limit": 2, "default": 1}},
                "db": {"db_lock": {"limit": 1, "default": 1}},
                "worker": {"worker_slots": {"limit": 4, "default": 1, "weight": 2}},
            },
            "scheduler": "ranked_priority",
            "backoff": [5, 10, "repeat"],
            "kill_orphan_tasks_after_sec": 30,
            "worker_resources_override": {"w1": {"worker_slots": 8}},
            "physical_resources": {"ram_mb": {"logical_resource": "worker_slots"}},
            "kill_subprocess": {"method": "term_wait_kill", "kill_wait_ms": 100},
            "task_subprocess": {"poll_ms": 10, "cgroups": {"root": "/sys/fs/cgroup"}},
            "instance_node_name": "inst",
        },
        "bistro_job->load": {
            "owner": "etl",
            "priority": 2.5,
            "resources": {"host_slots": 1, "global": 2},
            "config": {"table": "t1", "nested": {"deep": [1, 2, {"x": None}]}},
            "filters": {
                "host": {"whitelist": ["host1"], "blacklist_regex": "^tmp"},
                "db": {"fraction_of_nodes": 0.5, "tag_whitelist": ["ssd"]},
            },
            "backoff": [1, 2, "fail"],
            "command": ["/bin/true", "--flag"],
            "airflow": {"continuous": True, "poll_interval": 5},
        },
        "bistro_job->report": {
            "owner": "bi",
            "enabled": False,
            "depends_on": ["load"],
            "level_for_tasks": "host",
            "host_placement": "w1",
        },
    }


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(exclude_categories=()), max_size=20),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
SPECIAL_VALUES = st.sampled_from(
    [
        10**400,
        -(10**400),
        2**64,
        1e308,
        float("inf"),
        float("-inf"),
        float("nan"),
        "",
        " ",
        "\x00",
        "\ud800",
        "a\nb",
        "x" * 5000,
        "{parent}",
        "((((",
        "a{4294967296}",
        "instance",
        "worker",
        "repeat",
    ]
)
# Containers are built anew for every draw: a mutation may change them in place, and a
# shared object would change what later examples draw.
EMPTY_CONTAINERS = st.sampled_from([list, dict]).map(lambda make: make())


def nested(depth: int, leaf: Any = 0) -> Any:
    value = leaf
    for index in range(depth):
        value = [value] if index % 2 else {"k": value}
    return value


HOSTILE_VALUES = st.one_of(
    JSON_VALUES,
    SPECIAL_VALUES,
    EMPTY_CONTAINERS,
    st.integers(50, 3000).map(nested),
)


def _pick_container(data: Any, draw: st.DrawFn) -> tuple[Any, Any] | None:
    """Walk from the root into random children; return a (container, key) to mutate."""
    container, key = None, None
    current = data
    while isinstance(current, (dict, list)) and current:
        keys = list(current) if isinstance(current, dict) else list(range(len(current)))
        container, key = current, draw(st.sampled_from(keys))
        if draw(st.integers(0, 3)) == 0:
            break
        current = current[key]
    return None if container is None else (container, key)


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    data = valid_config()
    for _ in range(draw(st.integers(1, 3))):
        target = _pick_container(data, draw)
        if target is None:
            break
        container, key = target
        operation = draw(st.sampled_from(["replace", "delete", "unknown_key", "wrap"]))
        if operation == "replace":
            container[key] = draw(HOSTILE_VALUES)
        elif operation == "delete":
            del container[key]
        elif operation == "wrap":
            container[key] = [container[key]]
        elif isinstance(container, dict):
            container[draw(st.text(max_size=12))] = draw(HOSTILE_VALUES)
        else:
            container.append(draw(HOSTILE_VALUES))
    return data


def as_json_text(data: Any) -> str | None:
    """Return `data` as JSON text, or None for values that JSON cannot carry as built."""
    try:
        return json.dumps(data)
    except (ValueError, RecursionError):
        return None


# --- parse_config -----------------------------------------------------------------------


def test_valid_config_parses_without_issues() -> None:
    """The base of the mutations must be valid, or every mutation would test the same error."""
    config = parse_config(valid_config())
    assert config.job_errors() == []
    assert config.warnings == ()


@FUZZ
@given(data=mutated_configs())
def test_mutated_config_gives_config_or_config_error(data: dict[str, Any]) -> None:
    parse_or_config_error(data)
    text = as_json_text(data)
    if text is not None:
        parse_or_config_error(text)


@FUZZ
@given(value=JSON_VALUES)
def test_random_value_gives_config_or_config_error(value: Any) -> None:
    parse_or_config_error(value)
    text = as_json_text(value)
    if text is not None:
        parse_or_config_error(text)


@FUZZ
@given(text=st.text(st.characters(exclude_categories=()), max_size=300))
def test_random_text_gives_config_or_config_error(text: str) -> None:
    parse_or_config_error(text)


@FUZZ
@given(data=mutated_configs(), cut=st.integers(0, 5000), insert=st.text(max_size=5))
def test_damaged_json_text_gives_config_error(data: dict[str, Any], cut: int, insert: str) -> None:
    text = as_json_text(data)
    if text is None:
        return
    position = cut % (len(text) + 1)
    parse_or_config_error(text[:position] + insert + text[position + 1 :])


def as_yaml_text(data: Any) -> str | None:
    """Return `data` as block-style YAML, or None for values too deep for the YAML emitter."""
    try:
        return yaml.safe_dump(data, default_flow_style=False)
    except RecursionError:
        return None


@FUZZ
@given(data=mutated_configs(), cut=st.integers(0, 5000), insert=st.text(max_size=5))
def test_damaged_yaml_text_gives_config_error(data: dict[str, Any], cut: int, insert: str) -> None:
    text = as_yaml_text(data)
    if text is None:
        return
    parse_or_config_error(text)
    position = cut % (len(text) + 1)
    parse_or_config_error(text[:position] + insert + text[position + 1 :])


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(("bistro_job->load", "owner"), id="job-owner"),
        pytest.param(("bistro_job->load", "config"), id="job-config"),
        pytest.param(("bistro_job->load", "filters", "host", "whitelist_regex"), id="regex"),
        pytest.param(("bistro_settings", "instance_node_name"), id="instance-name"),
        pytest.param(("bistro_settings", "scheduler"), id="policy"),
    ],
)
def test_ten_mb_string_gives_config_or_config_error(where: tuple[str, ...]) -> None:
    data = valid_config()
    container = data
    for key in where[:-1]:
        container = container[key]
    container[where[-1]] = "y" * TEN_MB
    result = parse_or_config_error(data)
    if where[-1] == "whitelist_regex":
        assert isinstance(result, Config)
        errors = " ".join(str(issue) for issue in result.job_errors())
        assert "regular expression" in errors, "a 10 MB regular expression must be rejected"
        assert len(errors) < 1000, "the message must not repeat the pattern"


def test_ten_mb_job_name_is_rejected() -> None:
    data = valid_config()
    data["bistro_job->" + "n" * TEN_MB] = {"owner": "x"}
    config = parse_or_config_error(data)
    assert isinstance(config, Config)
    errors = [str(issue) for issue in config.job_errors()]
    assert any("invalid job name" in error for error in errors)
    assert max(len(error) for error in errors) < 1000, "the message must not repeat the name"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("[" * 10_000 + "]" * 10_000, id="lists"),
        pytest.param('{"a":' * 10_000 + "1" + "}" * 10_000, id="objects"),
        pytest.param('{"bistro_settings": ' + "[" * 10_000 + "]" * 10_000 + "}", id="settings"),
    ],
)
def test_deeply_nested_json_names_the_nesting(text: str) -> None:
    result = parse_or_config_error(text)
    assert isinstance(result, ConfigError)
    assert "nested" in str(result)


def test_deeply_nested_dict_names_the_nesting() -> None:
    data = valid_config()
    data["bistro_job->load"]["config"] = nested(10_000)
    result = parse_or_config_error(data)
    assert isinstance(result, ConfigError)
    assert "nested" in str(result)
    assert "bistro_job->load.config" in str(result)


# --- parse_status_line ------------------------------------------------------------------


def parse_status_or_error(text: str | bytes) -> None:
    try:
        kind, data = guarded(lambda: parse_status_line(text))
    except StatusParseError as exc:
        assert str(exc).startswith("cannot parse status"), str(exc)
        return
    assert kind in RESULT_KINDS
    assert data is None or isinstance(data, dict)


STATUS_OBJECTS = st.dictionaries(
    st.sampled_from(["result", "result_bits", "data", "extra"]),
    st.one_of(
        st.sampled_from([*RESULT_KINDS, "backoff", "running", "DONE"]),
        st.integers(-5, 5000),
        st.sampled_from([4, 8, 8 | 64, 16, 32, 32 | 64, 4 | 1, 4 | 128, 2, 4 | 8, 4096, 2**80]),
        JSON_VALUES,
    ),
    max_size=4,
)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_status_bytes_give_kind_or_parse_error(raw: bytes) -> None:
    parse_status_or_error(raw)


@FUZZ
@given(text=st.text(st.characters(exclude_categories=()), max_size=300))
def test_status_text_gives_kind_or_parse_error(text: str) -> None:
    parse_status_or_error(text)


@FUZZ
@given(
    status=STATUS_OBJECTS, before=st.text(max_size=30), after=st.sampled_from(["", "\n", " \n\n"])
)
def test_status_json_gives_kind_or_parse_error(
    status: dict[str, Any], before: str, after: str
) -> None:
    text = as_json_text(status)
    if text is not None:
        parse_status_or_error(f"{before}\n{text}{after}")


@pytest.mark.parametrize(
    "line",
    [
        pytest.param('{"result": "done", "data": ' + "[" * 30_000, id="deep-unclosed"),
        pytest.param(
            '{"result": "done", "data": {"a":' + "[" * 20_000 + "]" * 20_000 + "}}", id="deep"
        ),
        pytest.param('{"result_bits": 1' + "0" * 5000 + "}", id="5000-digit-int"),
        pytest.param(
            '{"result": "done", "data": {"n": 1' + "0" * 5000 + "}}", id="5000-digit-data"
        ),
    ],
)
def test_status_hostile_json_gives_parse_error(line: str) -> None:
    with pytest.raises(StatusParseError, match="cannot parse status"):
        guarded(lambda: parse_status_line(line))
