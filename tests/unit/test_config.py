from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bistro_provider.core.config import (
    MAX_CONFIG_BYTES,
    config_to_json,
    effective_resources,
    load_config,
    parse_backoff,
    parse_config,
)
from bistro_provider.core.errors import ConfigError, ConfigIssue
from bistro_provider.core.model import DEFAULT_BACKOFF, POLICIES, Backoff, Config, LevelFilter


def make_settings(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "enabled": True,
        "nodes": {
            "levels": ["host", "db"],
            "node_sources": [{"source": "manual", "prefs": {"host1": ["db1", "db2"]}}],
        },
        "resources": {
            "instance": {"global": {"limit": 10, "default": 1}},
            "host": {"host_slots": {"limit": 2, "default": 1}},
            "db": {"db_lock": {"limit": 1, "default": 1}},
            "worker": {"worker_slots": {"limit": 4, "default": 1, "weight": 2}},
        },
    }
    settings.update(overrides)
    return settings


def make_config(
    jobs: dict[str, Any] | None = None, settings: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    data: dict[str, Any] = {"bistro_settings": settings or make_settings()}
    for name, job in (jobs or {}).items():
        data[f"bistro_job->{name}"] = job
    data.update(extra)
    return data


def parse_job(job: Any, settings: dict[str, Any] | None = None, name: str = "j") -> Config:
    return parse_config(make_config({name: job}, settings))


def settings_issues(settings: dict[str, Any]) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as caught:
        parse_config(make_config(settings=settings))
    return caught.value.issues


def paths(issues: list[ConfigIssue] | tuple[ConfigIssue, ...]) -> list[str]:
    return [issue.path for issue in issues]


# --- backoff -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "current", "expected"),
    [
        pytest.param([1, 2, 3], 0, 1, id="fail-after-0-is-1"),
        pytest.param([1, 2, 3], 1, 2, id="fail-after-1-is-2"),
        pytest.param([1, 2, 3], 2, 3, id="fail-after-2-is-3"),
        pytest.param([1, 2, 3], 3, None, id="fail-after-3-fails"),
        pytest.param([1, 2, 3, "fail"], 3, None, id="explicit-fail-after-3-fails"),
        pytest.param([1, 2, 3, "repeat"], 2, 3, id="repeat-after-2-is-3"),
        pytest.param([1, 2, 3, "repeat"], 3, 3, id="repeat-after-3-is-3"),
        pytest.param(["fail"], 0, None, id="fail-alone-has-no-retries"),
        pytest.param([5, "fail", 1, "junk"], 5, None, id="items-after-terminator-ignored"),
    ],
)
def test_backoff_next_delay(spec: list[Any], current: int, expected: int | None) -> None:
    assert parse_backoff(spec).next_delay(current) == expected


@pytest.mark.parametrize(
    ("spec", "bad_path"),
    [
        pytest.param([0], "backoff[0]", id="zero"),
        pytest.param([-5], "backoff[0]", id="negative"),
        pytest.param([], "backoff", id="empty"),
        pytest.param(["repeat"], "backoff[0]", id="repeat-first"),
        pytest.param([1, 1, 2], "backoff[1]", id="duplicate"),
        pytest.param([2, 1], "backoff[1]", id="decreasing"),
        pytest.param([1, 2, "x"], "backoff[2]", id="unknown-word"),
        pytest.param({}, "backoff", id="object"),
        pytest.param([1.5], "backoff[0]", id="fractional"),
        pytest.param([True], "backoff[0]", id="boolean"),
        pytest.param("15", "backoff", id="string"),
    ],
)
def test_backoff_invalid(spec: Any, bad_path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_backoff(spec)
    assert paths(caught.value.issues) == [bad_path]


def test_backoff_lists_every_bad_item() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_backoff([0, 3, 2, "x"], "bistro_settings.backoff")
    expected = ["bistro_settings.backoff[0]", "bistro_settings.backoff[2]"]
    assert paths(caught.value.issues) == [*expected, "bistro_settings.backoff[3]"]


def test_backoff_default_is_bistro_list() -> None:
    backoff = parse_config(make_config()).settings.backoff
    assert backoff.to_json() == list(DEFAULT_BACKOFF)


def test_job_backoff_overrides_settings() -> None:
    config = parse_config(
        make_config({"j": {"owner": "o", "backoff": [2, "fail"]}}, make_settings(backoff=[1]))
    )
    assert config.settings.backoff == Backoff((1,), repeat=False)
    assert config.jobs["j"].backoff == Backoff((2,), repeat=False)


# --- settings ----------------------------------------------------------------------------


def test_levels_get_instance_and_worker() -> None:
    settings = parse_config(make_config()).settings
    assert settings.levels == ("instance", "host", "db", "worker")


def test_resources_have_key_for_every_level() -> None:
    settings = parse_config(make_config(settings=make_settings(resources={}))).settings
    assert settings.resources == {"instance": {}, "host": {}, "db": {}, "worker": {}}


def test_resource_spec_parsed() -> None:
    spec = parse_config(make_config()).settings.resources["worker"]["worker_slots"]
    assert (spec.name, spec.level, spec.limit, spec.default, spec.weight) == (
        "worker_slots",
        "worker",
        4,
        1,
        2,
    )


def test_level_for_tasks_defaults_to_last_configured_level() -> None:
    assert parse_config(make_config()).settings.level_for_tasks == "db"


@pytest.mark.parametrize("level", ["instance", "host", "db"])
def test_level_for_tasks_accepts_known_level(level: str) -> None:
    settings = parse_config(make_config(settings=make_settings(level_for_tasks=level))).settings
    assert settings.level_for_tasks == level


@pytest.mark.parametrize(
    ("level", "fragment"),
    [
        pytest.param(
            "rack", 'unknown level "rack"; allowed levels: instance, host, db', id="unknown"
        ),
        pytest.param("worker", 'level "worker" has no nodes', id="worker"),
    ],
)
def test_level_for_tasks_rejects_level(level: str, fragment: str) -> None:
    issues = settings_issues(make_settings(level_for_tasks=level))
    assert paths(issues) == ["bistro_settings.level_for_tasks"]
    assert fragment in issues[0].message


def test_node_order_read_inside_nodes() -> None:
    nodes = {"levels": ["host"], "node_order": "lexicographic"}
    settings = parse_config(make_config(settings=make_settings(nodes=nodes, resources={}))).settings
    assert settings.node_order == "lexicographic"


def test_top_level_node_order_ignored() -> None:
    config = parse_config(make_config(settings=make_settings(node_order="original")))
    assert config.settings.node_order == "random"
    assert paths(config.warnings) == ["bistro_settings.node_order"]
    assert "bistro_settings.nodes.node_order" in config.warnings[0].message


def test_enabled_defaults_false() -> None:
    settings = make_settings()
    del settings["enabled"]
    assert parse_config(make_config(settings=settings)).settings.enabled is False


def test_node_sources_parsed_in_order() -> None:
    nodes = {
        "levels": ["host"],
        "node_sources": [{"source": "manual", "prefs": {"h": []}}, {"source": "empty"}],
    }
    sources = parse_config(make_config(settings=make_settings(nodes=nodes, resources={})))
    specs = sources.settings.node_sources
    assert [(s.source, s.prefs, s.index) for s in specs] == [
        ("manual", {"h": []}, 0),
        ("empty", {}, 1),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(True, 0.0, id="true-is-zero"),
        pytest.param(False, None, id="false-is-never"),
        pytest.param(-1, None, id="negative-is-never"),
        pytest.param(0, 0.0, id="zero"),
        pytest.param(2.5, 2.5, id="fraction"),
    ],
)
def test_kill_orphan_tasks_after_sec(value: Any, expected: float | None) -> None:
    settings = make_settings(kill_orphan_tasks_after_sec=value)
    parsed = parse_config(make_config(settings=settings)).settings
    assert parsed.kill_orphan_tasks_after_sec == expected


def test_kill_orphan_tasks_after_sec_rejects_string() -> None:
    issues = settings_issues(make_settings(kill_orphan_tasks_after_sec="soon"))
    assert paths(issues) == ["bistro_settings.kill_orphan_tasks_after_sec"]


def test_settings_defaults() -> None:
    settings = parse_config(make_config()).settings
    assert settings.scheduler == "roundrobin"
    assert settings.remote_worker_selector == "roundrobin"
    assert settings.working_wait == 0.5
    assert settings.idle_wait == 5.0
    assert settings.kill_orphan_tasks_after_sec is None
    assert settings.kill_subprocess == {"method": "term", "kill_wait_ms": 0}
    assert settings.task_subprocess == {}
    assert settings.instance_node_name == "instance"


def test_scheduler_error_lists_policies() -> None:
    issues = settings_issues(make_settings(scheduler="fifo"))
    assert paths(issues) == ["bistro_settings.scheduler"]
    assert f"allowed values: {', '.join(POLICIES)}" in issues[0].message


def test_kill_subprocess_parsed() -> None:
    settings = make_settings(kill_subprocess={"method": "term_wait_kill", "kill_wait_ms": 500})
    parsed = parse_config(make_config(settings=settings)).settings
    assert parsed.kill_subprocess == {"method": "term_wait_kill", "kill_wait_ms": 500}


def test_kill_subprocess_method_error_lists_methods() -> None:
    issues = settings_issues(make_settings(kill_subprocess={"method": "nuke"}))
    assert paths(issues) == ["bistro_settings.kill_subprocess.method"]
    assert "allowed values: term, kill, term_wait_kill" in issues[0].message


def test_task_subprocess_kept() -> None:
    options = {"poll_ms": 20, "cgroups": {"slice": "bistro", "subsystems": ["cpu"]}}
    parsed = parse_config(make_config(settings=make_settings(task_subprocess=options))).settings
    assert parsed.task_subprocess == options


def test_worker_resources_override_parsed() -> None:
    settings = make_settings(worker_resources_override={"w1:8000": {"worker_slots": 8}})
    parsed = parse_config(make_config(settings=settings)).settings
    assert parsed.worker_resources_override == {"w1:8000": {"worker_slots": 8}}


def test_plural_worker_resources_overrides_is_ignored_with_warning() -> None:
    settings = make_settings(worker_resources_overrides={"w1": {"worker_slots": 8}})
    config = parse_config(make_config(settings=settings))
    assert config.settings.worker_resources_override == {}
    assert paths(config.warnings) == ["bistro_settings.worker_resources_overrides"]
    assert "worker_resources_override (singular)" in config.warnings[0].message


@pytest.mark.parametrize(
    ("resource", "fragment"),
    [
        pytest.param("db_lock", 'belongs to level "db", not worker', id="wrong-level"),
        pytest.param(
            "nope", 'unknown resource "nope"; worker resources: worker_slots', id="unknown"
        ),
    ],
)
def test_worker_override_needs_worker_resource(resource: str, fragment: str) -> None:
    issues = settings_issues(make_settings(worker_resources_override={"w1": {resource: 1}}))
    assert paths(issues) == [f"bistro_settings.worker_resources_override.w1.{resource}"]
    assert fragment in issues[0].message


def test_physical_resources_parsed_with_defaults() -> None:
    physical = {"ram_mb": {"logical_resource": "worker_slots", "enforcement": "hard"}}
    parsed = parse_config(make_config(settings=make_settings(physical_resources=physical)))
    assert parsed.settings.physical_resources == {
        "ram_mb": {
            "logical_resource": "worker_slots",
            "multiply_logical_by": 1.0,
            "physical_reserve_amount": 0.0,
            "enforcement": "hard",
        }
    }


@pytest.mark.parametrize(
    ("physical", "bad_path"),
    [
        pytest.param(
            {"cpu_core": {"logical_resource": "worker_slots", "enforcement": "hard"}},
            "bistro_settings.physical_resources.cpu_core.enforcement",
            id="enforcement-not-supported",
        ),
        pytest.param(
            {"gpu_card": {"logical_resource": "db_lock"}},
            "bistro_settings.physical_resources.gpu_card.logical_resource",
            id="not-worker-resource",
        ),
        pytest.param(
            {"disk_gb": {"logical_resource": "worker_slots"}},
            "bistro_settings.physical_resources.disk_gb",
            id="unknown-kind",
        ),
        pytest.param(
            {"ram_mb": {"logical_resource": "worker_slots", "multiply_logical_by": 0}},
            "bistro_settings.physical_resources.ram_mb.multiply_logical_by",
            id="multiply-by-zero",
        ),
        pytest.param(
            {"ram_mb": {}},
            "bistro_settings.physical_resources.ram_mb.logical_resource",
            id="missing-logical",
        ),
    ],
)
def test_physical_resources_invalid(physical: dict[str, Any], bad_path: str) -> None:
    assert paths(settings_issues(make_settings(physical_resources=physical))) == [bad_path]


def test_physical_resource_mapped_twice_is_error() -> None:
    physical = {
        "ram_mb": {"logical_resource": "worker_slots"},
        "cpu_core": {"logical_resource": "worker_slots"},
    }
    issues = settings_issues(make_settings(physical_resources=physical))
    assert paths(issues) == ["bistro_settings.physical_resources.cpu_core.logical_resource"]


@pytest.mark.parametrize(
    ("levels", "bad_path"),
    [
        pytest.param(["host", "instance"], "bistro_settings.nodes.levels[1]", id="instance"),
        pytest.param(["worker"], "bistro_settings.nodes.levels[0]", id="worker"),
        pytest.param(["host", "db", "db"], "bistro_settings.nodes.levels[2]", id="duplicate"),
        pytest.param(["host", 7], "bistro_settings.nodes.levels[1]", id="not-string"),
        pytest.param(["host", ""], "bistro_settings.nodes.levels[1]", id="empty-name"),
        pytest.param([], "bistro_settings.nodes.levels", id="empty-list"),
        pytest.param("host", "bistro_settings.nodes.levels", id="not-list"),
    ],
)
def test_levels_invalid(levels: Any, bad_path: str) -> None:
    assert paths(settings_issues(make_settings(nodes={"levels": levels}, resources={}))) == [
        bad_path
    ]


def test_resource_on_unknown_level_lists_levels() -> None:
    issues = settings_issues(make_settings(resources={"rack": {"r": {"limit": 1, "default": 0}}}))
    assert paths(issues) == ["bistro_settings.resources.rack"]
    assert issues[0].message == 'unknown level "rack"; defined levels: instance, host, db, worker'


def test_resource_name_on_two_levels_is_error() -> None:
    resources = {
        "host": {"slots": {"limit": 2, "default": 1}},
        "db": {"slots": {"limit": 1, "default": 1}},
    }
    issues = settings_issues(make_settings(resources=resources))
    assert paths(issues) == ["bistro_settings.resources.db.slots"]
    assert 'already defined on level "host"' in issues[0].message


@pytest.mark.parametrize(
    ("spec", "bad_path"),
    [
        pytest.param({"default": 1}, "bistro_settings.resources.db.r.limit", id="no-limit"),
        pytest.param({"limit": 1}, "bistro_settings.resources.db.r.default", id="no-default"),
        pytest.param(
            {"limit": "1", "default": 1}, "bistro_settings.resources.db.r.limit", id="str"
        ),
        pytest.param(
            {"limit": 1, "default": 0, "weight": -1},
            "bistro_settings.resources.db.r.weight",
            id="negative-weight",
        ),
    ],
)
def test_resource_spec_invalid(spec: dict[str, Any], bad_path: str) -> None:
    assert paths(settings_issues(make_settings(resources={"db": {"r": spec}}))) == [bad_path]


def test_default_over_limit_can_never_fit() -> None:
    resources = {"host": {"host_slots": {"limit": 2, "default": 3}}}
    issues = settings_issues(make_settings(resources=resources))
    assert paths(issues) == ["bistro_settings.resources.host.host_slots.default"]
    assert issues[0].message.startswith(
        "can never fit: needs 3 of host_slots but the limit on level host is 2"
    )


def test_worker_default_over_limit_fits_overridden_worker() -> None:
    settings = make_settings(
        resources={"worker": {"gpu": {"limit": 0, "default": 1}}},
        worker_resources_override={"gpu-host": {"gpu": 4}},
    )
    assert parse_config(make_config(settings=settings)).settings.resources["worker"]["gpu"]


def test_invalid_settings_list_every_issue() -> None:
    settings = make_settings(
        enabled="yes",
        scheduler="fifo",
        backoff=[3, 2],
        idle_wait=-1,
        resources={"rack": {}},
        nodes={"levels": ["host", "host"], "node_order": "sorted"},
    )
    assert sorted(paths(settings_issues(settings))) == [
        "bistro_settings.backoff[1]",
        "bistro_settings.enabled",
        "bistro_settings.idle_wait",
        "bistro_settings.nodes.levels[1]",
        "bistro_settings.nodes.node_order",
        "bistro_settings.resources.rack",
        "bistro_settings.scheduler",
    ]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param({}, id="missing"),
        pytest.param({"bistro_settings": []}, id="not-object"),
    ],
)
def test_settings_required(data: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert paths(caught.value.issues) == ["bistro_settings"]


@pytest.mark.parametrize(
    ("key", "bad_path"),
    [
        pytest.param("nodes", "bistro_settings.nodes", id="nodes"),
        pytest.param("resources", "bistro_settings.resources", id="resources"),
    ],
)
def test_settings_required_keys(key: str, bad_path: str) -> None:
    settings = make_settings()
    del settings[key]
    assert paths(settings_issues(settings)) == [bad_path]


def test_settings_error_names_path_and_value() -> None:
    issues = settings_issues(make_settings(working_wait="fast"))
    assert str(issues[0]) == 'bistro_settings.working_wait: must be a number, got "fast" (a string)'


# --- warnings for unknown keys ------------------------------------------------------------


def test_unknown_keys_give_warnings() -> None:
    settings = make_settings(colour="blue")
    settings["nodes"] = {**settings["nodes"], "node_source": "manual"}
    settings["resources"] = {"db": {"db_lock": {"limit": 1, "default": 1, "max": 3}}}
    job = {"owner": "o", "priortiy": 3, "filters": {"db": {"whitelist": ["db1"], "regex": "x"}}}
    config = parse_config(make_config({"j": job}, settings, comment="hi"))
    assert sorted(paths(config.warnings)) == [
        "bistro_job->j.filters.db.regex",
        "bistro_job->j.priortiy",
        "bistro_settings.colour",
        "bistro_settings.nodes.node_source",
        "bistro_settings.resources.db.db_lock.max",
        "comment",
    ]


def test_unknown_job_key_warning_names_known_keys() -> None:
    config = parse_job({"owner": "o", "priortiy": 3})
    assert "known keys: " in config.warnings[0].message
    assert "priority" in config.warnings[0].message
    assert config.jobs["j"].can_run


# --- jobs --------------------------------------------------------------------------------


def test_job_defaults_come_from_settings() -> None:
    settings = make_settings(level_for_tasks="host", kill_orphan_tasks_after_sec=3)
    job = parse_job({"owner": "o"}, settings).jobs["j"]
    assert job.enabled is True
    assert job.priority == 1.0
    assert job.level_for_tasks == "host"
    assert job.kill_orphan_tasks_after_sec == 3.0
    assert job.resources == {}
    assert job.config == {}
    assert job.command == ()
    assert job.can_run


def test_job_fields_parsed() -> None:
    job = parse_job(
        {
            "owner": "o",
            "enabled": False,
            "priority": 2.5,
            "config": {"k": [1]},
            "command": ["/bin/task", "--fast"],
            "kill_orphan_tasks_after_sec": False,
            "level_for_tasks": "host",
            "level_for_host_placement": "host",
        }
    ).jobs["j"]
    assert (job.enabled, job.priority, job.config) == (False, 2.5, {"k": [1]})
    assert job.command == ("/bin/task", "--fast")
    assert job.kill_orphan_tasks_after_sec is None
    assert (job.level_for_tasks, job.level_for_host_placement) == ("host", "host")
    assert not job.errors
    assert not job.can_run


def test_unknown_resource_in_job_message() -> None:
    settings = make_settings(
        resources={
            "host": {"a": {"limit": 2, "default": 1}},
            "db": {"b": {"limit": 1, "default": 0}},
        }
    )
    job = parse_job({"owner": "o", "resources": {"db_lok": 1}}, settings, name="nightly")
    errors = [str(issue) for issue in job.jobs["nightly"].errors]
    assert errors == [
        'bistro_job->nightly.resources.db_lok: unknown resource "db_lok"; defined resources: a, b'
    ]


def test_invalid_job_is_isolated() -> None:
    config = parse_config(
        make_config(
            {
                "bad": {"owner": "o", "resources": {"nope": 1}},
                "good": {"owner": "o"},
                "also_good": {"owner": "p", "depends_on": ["good"]},
            }
        )
    )
    assert not config.jobs["bad"].can_run
    assert config.jobs["good"].can_run
    assert config.jobs["also_good"].can_run
    assert paths(config.job_errors()) == ["bistro_job->bad.resources.nope"]


@pytest.mark.parametrize(
    ("job", "bad_path"),
    [
        pytest.param({}, "bistro_job->j.owner", id="owner-missing"),
        pytest.param({"owner": ""}, "bistro_job->j.owner", id="owner-empty"),
        pytest.param({"owner": 3}, "bistro_job->j.owner", id="owner-number"),
        pytest.param({"owner": "o", "enabled": 1}, "bistro_job->j.enabled", id="enabled-number"),
        pytest.param({"owner": "o", "priority": "hi"}, "bistro_job->j.priority", id="priority"),
        pytest.param({"owner": "o", "config": []}, "bistro_job->j.config", id="config-list"),
        pytest.param({"owner": "o", "command": "ls"}, "bistro_job->j.command", id="command-str"),
        pytest.param({"owner": "o", "command": ["ls", ""]}, "bistro_job->j.command[1]", id="arg"),
        pytest.param({"owner": "o", "backoff": [0]}, "bistro_job->j.backoff[0]", id="backoff"),
        pytest.param(
            {"owner": "o", "resources": {"db_lock": -1}},
            "bistro_job->j.resources.db_lock",
            id="negative-amount",
        ),
        pytest.param(
            {"owner": "o", "level_for_tasks": "rack"}, "bistro_job->j.level_for_tasks", id="level"
        ),
        pytest.param(
            {"owner": "o", "level_for_tasks": "worker"},
            "bistro_job->j.level_for_tasks",
            id="level-worker",
        ),
        pytest.param(
            {"owner": "o", "level_for_host_placement": "rack"},
            "bistro_job->j.level_for_host_placement",
            id="host-level",
        ),
        pytest.param({"owner": "o", "depends_on": "x"}, "bistro_job->j.depends_on", id="deps"),
        pytest.param(
            {"owner": "o", "kill_subprocess": {"method": "x"}},
            "bistro_job->j.kill_subprocess.method",
            id="kill-method",
        ),
        pytest.param(
            {"owner": "o", "errors": ["old"]}, "bistro_job->j.errors", id="pre-existing-errors"
        ),
        pytest.param("not a job", "bistro_job->j", id="not-object"),
    ],
)
def test_job_error(job: Any, bad_path: str) -> None:
    config = parse_job(job)
    assert paths(config.jobs["j"].errors) == [bad_path]
    assert not config.jobs["j"].can_run


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        pytest.param("nightly_db-2", True, id="letters-digits-dash-underscore"),
        pytest.param("x" * 239, True, id="239-chars"),
        pytest.param("x" * 240, False, id="240-chars"),
        pytest.param("has space", False, id="space"),
        pytest.param("dot.name", False, id="dot"),
        pytest.param("", False, id="empty"),
    ],
)
def test_job_name_rule(name: str, valid: bool) -> None:
    job = parse_job({"owner": "o"}, name=name).jobs[name]
    assert job.can_run is valid


def test_job_over_limit_can_never_fit() -> None:
    job = parse_job({"owner": "o", "resources": {"host_slots": 3}}).jobs["j"]
    assert [str(issue) for issue in job.errors] == [
        "bistro_job->j.resources.host_slots: "
        "can never fit: needs 3 of host_slots but the limit on level host is 2"
    ]


def test_job_over_worker_limit_fits_overridden_worker() -> None:
    settings = make_settings(worker_resources_override={"big": {"worker_slots": 16}})
    job = parse_job({"owner": "o", "resources": {"worker_slots": 10}}, settings).jobs["j"]
    assert job.can_run


def test_job_amount_below_its_level_is_not_checked() -> None:
    job = {"owner": "o", "level_for_tasks": "host", "resources": {"db_lock": 5}}
    assert parse_job(job).jobs["j"].can_run


def test_job_filters_compiled() -> None:
    filters = {
        "host": {
            "whitelist": ["h1", "h2"],
            "whitelist_regex": "^h",
            "blacklist": ["h3"],
            "blacklist_regex": "bad$",
            "fraction_of_nodes": 0.5,
            "tag_whitelist": ["ssd"],
        }
    }
    job = parse_job({"owner": "o", "filters": filters}).jobs["j"]
    assert job.filters == {
        "host": LevelFilter(
            whitelist=frozenset({"h1", "h2"}),
            whitelist_regex=re.compile("^h"),
            blacklist=frozenset({"h3"}),
            blacklist_regex=re.compile("bad$"),
            fraction_of_nodes=0.5,
            tag_whitelist=frozenset({"ssd"}),
        )
    }


@pytest.mark.parametrize("fraction", [0, -0.5])
def test_filter_fraction_not_positive_means_all_nodes(fraction: float) -> None:
    filters = {"host": {"fraction_of_nodes": fraction, "whitelist": ["h1"]}}
    job = parse_job({"owner": "o", "filters": filters}).jobs["j"]
    assert job.filters["host"].fraction_of_nodes == 1.0


def test_trivial_filter_dropped() -> None:
    filters = {"host": {"fraction_of_nodes": 1.0, "whitelist_regex": ""}}
    assert parse_job({"owner": "o", "filters": filters}).jobs["j"].filters == {}


@pytest.mark.parametrize(
    ("filters", "bad_path"),
    [
        pytest.param(
            {"db": {"whitelist_regex": "(db"}},
            "bistro_job->j.filters.db.whitelist_regex",
            id="bad-regex",
        ),
        pytest.param(
            {"db": {"fraction_of_nodes": 1.5}},
            "bistro_job->j.filters.db.fraction_of_nodes",
            id="fraction-over-one",
        ),
        pytest.param({"rack": {}}, "bistro_job->j.filters.rack", id="unknown-level"),
        pytest.param(
            {"db": {"whitelist": "db1"}}, "bistro_job->j.filters.db.whitelist", id="whitelist-str"
        ),
    ],
)
def test_job_filter_error(filters: dict[str, Any], bad_path: str) -> None:
    job = parse_job({"owner": "o", "filters": filters}).jobs["j"]
    assert paths(job.errors) == [bad_path]


def test_filter_regex_error_names_regex() -> None:
    job = parse_job({"owner": "o", "filters": {"db": {"blacklist_regex": "[x"}}}).jobs["j"]
    assert '"[x"' in job.errors[0].message


def test_worker_filter_allowed() -> None:
    job = parse_job({"owner": "o", "filters": {"worker": {"whitelist": ["w1"]}}}).jobs["j"]
    assert job.filters["worker"].whitelist == frozenset({"w1"})


def test_depends_on_unknown_job_is_warning() -> None:
    config = parse_config(make_config({"j": {"owner": "o", "depends_on": ["ghost"]}}))
    assert config.jobs["j"].can_run
    assert config.jobs["j"].depends_on == ("ghost",)
    assert paths(config.warnings) == ["bistro_job->j.depends_on[0]"]


def test_depends_on_cycle_errors_every_member() -> None:
    jobs = {
        "a": {"owner": "o", "depends_on": ["b"]},
        "b": {"owner": "o", "depends_on": ["c"]},
        "c": {"owner": "o", "depends_on": ["a"]},
        "d": {"owner": "o", "depends_on": ["a"]},
    }
    config = parse_config(make_config(jobs))
    assert [str(issue) for issue in config.jobs["a"].errors] == [
        "bistro_job->a.depends_on: cycle a -> b -> c -> a; "
        "a job on a cycle waits for itself and never runs"
    ]
    assert paths(config.jobs["b"].errors) == ["bistro_job->b.depends_on"]
    assert "b -> c -> a -> b" in config.jobs["b"].errors[0].message
    assert paths(config.jobs["c"].errors) == ["bistro_job->c.depends_on"]
    assert config.jobs["d"].errors == ()


def test_depends_on_self_is_cycle() -> None:
    config = parse_config(make_config({"a": {"owner": "o", "depends_on": ["a"]}}))
    assert "cycle a -> a" in config.jobs["a"].errors[0].message


def test_host_placement_wins_over_level_with_warning() -> None:
    job = {"owner": "o", "host_placement": "h1", "level_for_host_placement": "host"}
    config = parse_job(job)
    assert config.jobs["j"].host_placement == "h1"
    assert paths(config.warnings) == ["bistro_job->j.level_for_host_placement"]


def test_job_subprocess_settings_merge_over_settings() -> None:
    settings = make_settings(
        kill_subprocess={"method": "kill", "kill_wait_ms": 100},
        task_subprocess={"poll_ms": 20, "cgroups": {"slice": "s", "subsystems": ["cpu"]}},
    )
    job = {
        "owner": "o",
        "kill_subprocess": {"kill_wait_ms": 5},
        "task_subprocess": {"use_canary_pipe": False, "cgroups": {"subsystems": ["memory"]}},
    }
    parsed = parse_job(job, settings).jobs["j"]
    assert parsed.kill_subprocess == {"method": "kill", "kill_wait_ms": 5}
    assert parsed.task_subprocess == {
        "poll_ms": 20,
        "use_canary_pipe": False,
        "cgroups": {"slice": "s", "subsystems": ["memory"]},
    }


def test_informational_job_keys_kept_in_raw() -> None:
    job = {"owner": "o", "create_time": 5, "modify_time": 6, "version_id": 7}
    config = parse_job(job)
    assert config.jobs["j"].raw == job
    assert config.warnings == ()


# --- text, YAML and files ----------------------------------------------------------------


def rich_config() -> dict[str, Any]:
    return make_config(
        {
            "nightly": {
                "owner": "ops",
                "priority": 3,
                "resources": {"db_lock": 1, "worker_slots": 2},
                "filters": {"host": {"whitelist_regex": "^host", "fraction_of_nodes": 0.5}},
                "depends_on": ["hourly"],
                "command": ["/bin/run", "x"],
                "backoff": [5, 10, "repeat"],
            },
            "hourly": {"owner": "ops", "level_for_tasks": "host", "config": {"k": "v"}},
        },
        make_settings(
            backoff=[1, 2, "fail"],
            kill_orphan_tasks_after_sec=30,
            worker_resources_override={"w1": {"worker_slots": 6}},
        ),
    )


def test_yaml_parses_identically_to_json() -> None:
    data = rich_config()
    from_json = parse_config(json.dumps(data))
    from_yaml = parse_config(yaml.safe_dump(data))
    assert from_yaml == from_json
    assert from_json == parse_config(copy.deepcopy(data))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param('{"bistro_settings": ', "not valid JSON or YAML: line 1 column", id="json"),
        pytest.param("a: [1\nb: 2\n", "not valid JSON or YAML: line", id="yaml"),
        pytest.param("   \n", "the config is empty", id="empty"),
        pytest.param("- 1\n- 2\n", "must be an object", id="yaml-list"),
    ],
)
def test_unparsable_text(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, origin="cfg.txt")
    assert paths(caught.value.issues) == ["cfg.txt"]
    assert fragment in caught.value.issues[0].message


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml", ".conf"])
def test_load_config_reads_file(tmp_path: Path, suffix: str) -> None:
    data = rich_config()
    text = yaml.safe_dump(data) if suffix in (".yaml", ".yml") else json.dumps(data)
    path = tmp_path / f"bistro{suffix}"
    path.write_text(text)
    assert load_config(path) == parse_config(data)


def test_json_file_never_parsed_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bistro.json"
    path.write_text(yaml.safe_dump(rich_config()))
    with pytest.raises(ConfigError, match="not valid JSON: line 1"):
        load_config(path)


def test_load_config_rejects_large_file(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_config(tmp_path / "absent.json")


def test_load_config_rejects_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# --- effective config --------------------------------------------------------------------


def test_config_to_json_round_trip() -> None:
    exported = config_to_json(parse_config(rich_config()))
    reparsed = parse_config(json.loads(json.dumps(exported)))
    assert config_to_json(reparsed) == exported
    assert reparsed.settings == parse_config(rich_config()).settings


def test_config_to_json_job_shape() -> None:
    exported = config_to_json(parse_config(rich_config()))["bistro_job->nightly"]
    assert exported["backoff"] == [5, 10, "repeat"]
    assert exported["kill_orphan_tasks_after_sec"] == 30.0
    assert exported["resources"] == {
        "global": 1,
        "host_slots": 1,
        "db_lock": 1,
        "worker_slots": 2,
    }
    assert exported["filters"] == {"host": {"whitelist_regex": "^host", "fraction_of_nodes": 0.5}}
    assert exported["depends_on"] == ["hourly"]
    assert exported["command"] == ["/bin/run", "x"]
    assert "errors" not in exported


def test_config_to_json_never_kill_is_false() -> None:
    exported = config_to_json(parse_job({"owner": "o"}))
    assert exported["bistro_job->j"]["kill_orphan_tasks_after_sec"] is False
    assert exported["bistro_job->j"]["backoff"][-1] == "repeat"


def test_config_to_json_lists_job_errors() -> None:
    exported = config_to_json(parse_job({"owner": "o", "resources": {"nope": 1}}))
    assert exported["bistro_job->j"]["errors"] == [
        'bistro_job->j.resources.nope: unknown resource "nope"; '
        "defined resources: db_lock, global, host_slots, worker_slots"
    ]


def test_effective_resources_use_defaults() -> None:
    config = parse_job({"owner": "o", "resources": {"global": 0}})
    amounts = effective_resources(config.settings, config.jobs["j"])
    assert amounts == {"global": 0, "host_slots": 1, "db_lock": 1, "worker_slots": 1}
