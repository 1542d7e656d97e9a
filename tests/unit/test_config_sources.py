"""Config sources: files, Variables and plugins keep the last good config the same way."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bistro_provider.config_store import configured_location
from bistro_provider.core.config_sources import (
    ContentConfigSource,
    FileConfigSource,
    SourceLocation,
    load_from,
    open_source,
    plugin_reader,
)
from bistro_provider.core.errors import ConfigError
from bistro_provider.core.live import LiveForest, RefreshIntervals
from bistro_provider.options import BistroOptions


def config_dict(hosts: dict[str, list[str]] | None = None, **jobs: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": ["host", "db"],
                "node_sources": [{"source": "manual", "prefs": hosts or {"h1": ["d1"]}}],
            },
            "resources": {"host": {"slots": {"limit": 2, "default": 1}}},
        },
        "bistro_job->job": {"owner": "test"},
    }
    for name, job in jobs.items():
        data[f"bistro_job->{name}"] = job
    return data


class FakeVariables:
    """A Variable store: name to text, with a count of reads."""

    def __init__(self, **values: str) -> None:
        self.values = dict(values)
        self.reads = 0

    def __call__(self, name: str) -> str | None:
        self.reads += 1
        return self.values.get(name)


class FakeEntryPoint:
    def __init__(self, name: str, function: Any) -> None:
        self.name = name
        self.value = f"fake_module:{name}"
        self._function = function

    def load(self) -> Any:
        return self._function


def live_for(source: Any) -> LiveForest:
    return LiveForest(source, RefreshIntervals(config_update=0), background=False)


# -- locations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "kind", "name"),
    [
        pytest.param("/etc/bistro.json", "file", "/etc/bistro.json", id="bare-path"),
        pytest.param("file:/etc/bistro.json", "file", "/etc/bistro.json", id="file-prefix"),
        pytest.param("variable:bistro_config", "variable", "bistro_config", id="variable"),
        pytest.param("plugin:cmdb", "plugin", "cmdb", id="plugin"),
        pytest.param("relative/variable.json", "file", "relative/variable.json", id="relative"),
    ],
)
def test_location_parses(location: str, kind: str, name: str) -> None:
    parsed = SourceLocation.parse(location)
    assert parsed.kind == kind
    assert parsed.name == name


@pytest.mark.parametrize("location", ["", "variable:", "plugin:"])
def test_location_without_name_is_rejected(location: str) -> None:
    with pytest.raises(ValueError):
        SourceLocation.parse(location)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param(BistroOptions(config_file="/x.json"), "/x.json", id="file-default"),
        pytest.param(BistroOptions(), None, id="file-unset"),
        pytest.param(BistroOptions(config_source="variable"), "variable:bistro_config", id="var"),
        pytest.param(
            BistroOptions(config_source="variable", config_variable="cfg"),
            "variable:cfg",
            id="named",
        ),
        pytest.param(BistroOptions(config_source="plugin:cmdb"), "plugin:cmdb", id="plugin"),
    ],
)
def test_configured_location(options: BistroOptions, expected: str | None) -> None:
    assert configured_location(options) == expected


@pytest.mark.parametrize("value", ["vault", "plugin:", "plugin: "])
def test_invalid_config_source_names_option(value: str) -> None:
    with pytest.raises(ValueError, match=r"\[bistro\] config_source"):
        configured_location(BistroOptions(config_source=value))


# -- files ---------------------------------------------------------------------------------


def test_file_token_changes_with_mtime(tmp_path: Path) -> None:
    path = tmp_path / "bistro.json"
    path.write_text(json.dumps(config_dict()))
    source = FileConfigSource(str(path))
    before = source.check()
    stamp = path.stat().st_mtime + 5
    os.utime(path, (stamp, stamp))
    assert source.check() != before


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        FileConfigSource(str(tmp_path / "absent.json")).check()


# -- Variables -----------------------------------------------------------------------------


def test_variable_source_loads_config() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    config = load_from(open_source("variable:bistro_config", read_variable=variables))
    assert list(config.jobs) == ["job"]


def test_variable_source_accepts_yaml_text() -> None:
    variables = FakeVariables(
        cfg="bistro_settings:\n  enabled: true\n  nodes: {levels: [host]}\n"
        "  resources: {host: {slots: {limit: 1, default: 1}}}\n"
    )
    config = load_from(open_source("variable:cfg", read_variable=variables))
    assert config.settings.enabled is True


def test_missing_variable_says_how_to_create_it() -> None:
    source = open_source("variable:bistro_config", read_variable=FakeVariables())
    with pytest.raises(ConfigError, match="create the Airflow Variable 'bistro_config'"):
        source.check()


def test_variable_without_reader_is_rejected() -> None:
    with pytest.raises(ValueError, match="reader"):
        open_source("variable:bistro_config")


def test_live_variable_unchanged_content_keeps_config() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    live.poll()
    first = live.config
    live.poll()
    assert live.config is first


def test_live_variable_change_is_loaded() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    live.poll()
    variables.values["bistro_config"] = json.dumps(config_dict(extra={"owner": "x"}))
    live.poll()
    assert live.config is not None
    assert sorted(live.config.jobs) == ["extra", "job"]


def test_live_broken_variable_keeps_last_good() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    live.poll()
    good = live.config
    variables.values["bistro_config"] = '{"bistro_settings": '
    live.poll()
    assert live.config is good
    assert live.config_error is not None
    assert "variable:bistro_config" in live.config_error


def test_live_deleted_variable_keeps_last_good() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    live.poll()
    good = live.config
    del variables.values["bistro_config"]
    live.poll()
    assert live.config is good
    assert "not found" in (live.config_error or "")


def test_live_variable_recovers_after_fix() -> None:
    variables = FakeVariables(bistro_config="{")
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    live.poll()
    variables.values["bistro_config"] = json.dumps(config_dict())
    live.poll()
    assert live.config_error is None
    assert live.config is not None


def test_live_reports_variable_location() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    assert live.config_path == "variable:bistro_config"


# -- plugins -------------------------------------------------------------------------------


def test_plugin_returning_dict_loads() -> None:
    points = {"cmdb": FakeEntryPoint("cmdb", lambda: config_dict())}
    source = ContentConfigSource("plugin:cmdb", plugin_reader("cmdb", lambda: points), "none")
    assert list(load_from(source).jobs) == ["job"]


def test_plugin_returning_text_loads() -> None:
    points = {"cmdb": FakeEntryPoint("cmdb", lambda: json.dumps(config_dict()))}
    source = ContentConfigSource("plugin:cmdb", plugin_reader("cmdb", lambda: points), "none")
    assert list(load_from(source).jobs) == ["job"]


def test_unknown_plugin_lists_registered_names() -> None:
    points = {"cmdb": FakeEntryPoint("cmdb", dict)}
    source = ContentConfigSource("plugin:nope", plugin_reader("nope", lambda: points), "none")
    with pytest.raises(ConfigError, match="registered names: cmdb"):
        source.check()


def test_plugin_found_through_entry_point_group(monkeypatch: pytest.MonkeyPatch) -> None:
    from bistro_provider.core import config_sources

    def fake_entry_points(group: str) -> list[FakeEntryPoint]:
        assert group == "bistro_provider.config_sources"
        return [FakeEntryPoint("cmdb", lambda: config_dict())]

    monkeypatch.setattr(config_sources, "entry_points", fake_entry_points)
    assert list(load_from(open_source("plugin:cmdb")).jobs) == ["job"]


def test_live_failing_plugin_keeps_last_good() -> None:
    calls = {"n": 0}

    def flaky() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("CMDB is down")
        return config_dict()

    points = {"cmdb": FakeEntryPoint("cmdb", flaky)}
    live = live_for(ContentConfigSource("plugin:cmdb", plugin_reader("cmdb", lambda: points), "x"))
    live.poll()
    good = live.config
    live.poll()
    assert live.config is good
    assert "CMDB is down" in (live.config_error or "")


def test_plugin_returning_number_is_error() -> None:
    points = {"cmdb": FakeEntryPoint("cmdb", lambda: 42)}
    source = ContentConfigSource("plugin:cmdb", plugin_reader("cmdb", lambda: points), "none")
    with pytest.raises(ConfigError, match="text or a dict, got int"):
        source.check()


# -- jobs from DAG files -------------------------------------------------------------------


def test_dag_job_joins_config_jobs() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    live.poll()
    live.define_job("adhoc", {"owner": "me", "backoff": [5, "fail"]}, "/dags/adhoc.py")
    assert live.config is not None
    assert live.config.jobs["adhoc"].backoff.delays == (5,)
    assert "job" in live.config.jobs


def test_dag_job_survives_config_reload() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    live.define_job("adhoc", {"owner": "me"}, "/dags/adhoc.py")
    live.poll()
    variables.values["bistro_config"] = json.dumps(config_dict(extra={"owner": "x"}))
    live.poll()
    assert live.config is not None
    assert sorted(live.config.jobs) == ["adhoc", "extra", "job"]


def test_config_job_beats_dag_job() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    live.poll()
    live.define_job("job", {"owner": "from-dag"}, "/dags/job.py")
    assert live.config is not None
    assert live.config.jobs["job"].owner == "test"


def test_invalid_dag_job_carries_errors() -> None:
    variables = FakeVariables(bistro_config=json.dumps(config_dict()))
    live = live_for(open_source("variable:bistro_config", read_variable=variables))
    live.poll()
    live.define_job("adhoc", {"owner": "me", "resources": {"nope": 1}}, "/dags/adhoc.py")
    assert live.config is not None
    assert live.config.jobs["adhoc"].errors


# -- wiring: executor, DAG files, CLI ------------------------------------------------------


def test_executor_polls_configured_variable() -> None:
    from bistro_provider.executors.base import BistroAdmissionMixin

    probe: Any = BistroAdmissionMixin()
    probe._init_bistro(BistroOptions(config_source="variable", config_variable="cfg"))
    assert probe.admission.live.config_path == "variable:cfg"


def test_executor_without_source_has_no_live_config() -> None:
    from bistro_provider.executors.base import BistroAdmissionMixin

    probe: Any = BistroAdmissionMixin()
    probe._init_bistro(BistroOptions())
    assert probe.admission.live is None


def test_dags_from_variable_pass_location_to_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    from bistro_provider import config_store
    from bistro_provider.dag_factory import dags_from_config

    variables = FakeVariables(cfg=json.dumps(config_dict()))
    monkeypatch.setattr(config_store, "read_variable", variables)
    dags = dags_from_config(config_source="variable:cfg")
    snapshot = dags["bistro_job"].task_dict["snapshot_nodes"]
    assert snapshot.config_source == "variable:cfg"
    assert dags["bistro_job"].task_dict["run"].partial_kwargs["config_source"] == "variable:cfg"


def test_continuous_job_needs_file_source(monkeypatch: pytest.MonkeyPatch) -> None:
    from bistro_provider import config_store
    from bistro_provider.dag_factory import bistro_job_dag

    monkeypatch.setattr(config_store, "read_variable", FakeVariables(cfg=json.dumps(config_dict())))
    with pytest.raises(ValueError, match="config_source to file"):
        bistro_job_dag(
            "job", config_source="variable:cfg", options=BistroOptions(), continuous=True
        )


def test_cli_has_job_save_and_delete() -> None:
    from bistro_provider.cli.definition import get_bistro_cli_commands

    group = get_bistro_cli_commands()[0]
    job = next(command for command in group.subcommands if command.name == "job")
    assert sorted(command.name for command in job.subcommands) == ["delete", "save"]
