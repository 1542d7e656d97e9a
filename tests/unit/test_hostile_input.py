"""Hostile and broken input, one class per section: the config, node sources and the task
protocol. Each case must end in a clear error that names the value and the fix, or, where
the input is valid but unusual, in correct behaviour.

Scripts are real tiny shell scripts in a temporary directory, run without a shell between
the provider and them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from bistro_provider.core.config import MAX_CONFIG_BYTES, load_config, parse_config
from bistro_provider.core.errors import ConfigError, NodeSourceError, StatusParseError
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import Config
from bistro_provider.core.protocol import MAX_STATUS_BYTES, CommandResult, run_task_command
from bistro_provider.core.status import parse_status_line
from bistro_provider.nodes import fetch_forest


def make_settings(**overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "enabled": True,
        "nodes": {
            "levels": ["host", "db"],
            "node_sources": [{"source": "manual", "prefs": {"host1": ["db1", "db2"]}}],
        },
        "resources": {"host": {"host_slots": {"limit": 2, "default": 1}}},
    }
    settings.update(overrides)
    return settings


def make_config(settings: dict[str, Any] | None = None, **jobs: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"bistro_settings": settings or make_settings()}
    for name, job in jobs.items():
        data[f"bistro_job->{name}"] = {"owner": "ops", **job}
    return data


def config_error(data: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return str(caught.value)


def job_errors(config: Config) -> str:
    return "; ".join(str(issue) for issue in config.job_errors())


# --- config -----------------------------------------------------------------------------


def test_config_not_json_names_position(tmp_path: Path) -> None:
    path = tmp_path / "bistro.json"
    path.write_text('{"bistro_settings": {"enabled": true,}}')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "not valid JSON: line 1 column 38" in message


@pytest.mark.parametrize(
    ("resources", "fragment"),
    [
        pytest.param(
            {"host": {"host_slots": {"limit": "3", "default": 1}}},
            'resources.host.host_slots.limit: must be an integer, got "3" (a string)',
            id="limit-string",
        ),
        pytest.param(
            {"host": {"host_slots": {"limit": 2, "default": -1}}},
            "resources.host.host_slots.default: must be at least 0, got -1",
            id="default-negative",
        ),
        pytest.param(
            {"host": {"host_slots": {"limit": True, "default": 1}}},
            "resources.host.host_slots.limit: must be an integer, got true (a boolean)",
            id="limit-boolean",
        ),
        pytest.param(
            {"host": ["host_slots"]},
            'resources.host: must be an object, got ["host_slots"] (a list)',
            id="level-list",
        ),
    ],
)
def test_wrong_type_names_path_and_value(resources: dict[str, Any], fragment: str) -> None:
    message = config_error(make_config(make_settings(resources=resources)))
    assert f"bistro_settings.{fragment}" in message


def test_priority_too_large_for_float_is_job_error() -> None:
    config = parse_config(make_config(big={"priority": 10**400}))
    errors = job_errors(config)
    assert "bistro_job->big.priority: must be a finite number" in errors
    assert "too large for a float" in errors


def test_unknown_level_lists_defined_levels() -> None:
    resources = {"rack": {"rack_slots": {"limit": 1, "default": 0}}}
    message = config_error(make_config(make_settings(resources=resources)))
    assert 'bistro_settings.resources.rack: unknown level "rack"' in message
    assert "defined levels: instance, host, db, worker" in message


def test_unknown_resource_lists_defined_resources() -> None:
    config = parse_config(make_config(j={"resources": {"cpu": 1}}))
    errors = job_errors(config)
    assert 'bistro_job->j.resources.cpu: unknown resource "cpu"' in errors
    assert "defined resources: host_slots" in errors


def test_unknown_keys_are_warnings_with_hints() -> None:
    config = parse_config(make_config(make_settings(node_order="random"), j={"prioirty": 3}))
    warnings = [str(issue) for issue in config.warnings]
    assert config.jobs["j"].can_run
    assert any(
        warning.startswith("bistro_settings.node_order: unknown key, ignored")
        and "bistro_settings.nodes.node_order" in warning
        for warning in warnings
    ), warnings
    assert any(
        warning.startswith("bistro_job->j.prioirty: unknown key") and "priority" in warning
        for warning in warnings
    ), warnings


def test_depends_on_cycle_is_error_on_each_job() -> None:
    config = parse_config(make_config(a={"depends_on": ["b"]}, b={"depends_on": ["a"]}))
    errors = job_errors(config)
    assert "bistro_job->a.depends_on: cycle a -> b -> a" in errors
    assert "bistro_job->b.depends_on: cycle b -> a -> b" in errors
    assert not config.jobs["a"].can_run
    assert not config.jobs["b"].can_run


def test_job_over_level_capacity_can_never_fit() -> None:
    config = parse_config(make_config(big={"resources": {"host_slots": 3}}, small={}))
    errors = job_errors(config)
    assert "bistro_job->big.resources.host_slots: can never fit: needs 3 of host_slots" in errors
    assert "the limit on level host is 2" in errors
    assert config.jobs["small"].can_run, "one job's error must not stop the others"


def test_default_over_limit_can_never_fit() -> None:
    resources = {"host": {"host_slots": {"limit": 1, "default": 2}}}
    message = config_error(make_config(make_settings(resources=resources)))
    assert "bistro_settings.resources.host.host_slots.default: can never fit" in message
    assert "lower the default or raise the limit" in message


def test_file_over_ten_mib_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    data = make_config(j={"config": {"blob": "x" * MAX_CONFIG_BYTES}})
    path.write_text(json.dumps(data))
    with pytest.raises(
        ConfigError, match=r"larger than 10485760 bytes \(10 MiB\); split or shrink"
    ):
        load_config(path)


def test_file_just_under_ten_mib_loads(tmp_path: Path) -> None:
    path = tmp_path / "large.json"
    text = json.dumps(make_config(j={"config": {"blob": ""}}))
    filler = "x" * (MAX_CONFIG_BYTES - len(text) - 100)
    path.write_text(json.dumps(make_config(j={"config": {"blob": filler}})))
    assert len(load_config(path).jobs["j"].config["blob"]) == len(filler)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param(
            "[" * 10_000 + "]" * 10_000,
            ["not valid JSON: nested too deeply to read; keep values under 100 levels"],
            id="json-lists",
        ),
        pytest.param(
            '{"a":' * 10_000 + "0" + "}" * 10_000,
            ["not valid JSON: nested too deeply to read; keep values under 100 levels"],
            id="json-objects",
        ),
        pytest.param(
            "x: " + "[" * 10_000 + "]" * 10_000,
            ["not valid JSON or YAML: line 1 column", "exceeded maximum nesting depth"],
            id="yaml-flow",
        ),
        pytest.param(
            json.dumps(make_config(j={"config": json.loads("[" * 150 + "]" * 150)})),
            ["bistro_job->j.config[0][0]", "nested more than 100 levels deep"],
            id="json-150-levels",
        ),
    ],
)
def test_deep_nesting_is_config_error(text: str, fragments: list[str]) -> None:
    message = config_error(text)
    for fragment in fragments:
        assert fragment in message


YAML_ALIAS_BOMB = "\n".join(
    [
        "a: &a [x, x, x, x, x, x, x, x, x, x]",
        *(
            f"{name}: &{name} [{', '.join([f'*{previous}'] * 10)}]"
            for previous, name in zip("abcdefgh", "bcdefghi", strict=True)
        ),
        "bistro_settings: *i",
    ]
)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(YAML_ALIAS_BOMB, "values once YAML aliases are expanded", id="alias-bomb"),
        pytest.param("bistro_settings: &a [*a]", "refers to its own anchor", id="self-alias"),
        pytest.param("bistro_settings: 2001-02-30", "day is out of range", id="bad-date"),
        pytest.param("n: 1" + "0" * 5000, "more than 4300 digits", id="huge-int"),
        pytest.param(
            "a: !!python/object:os.system x", "could not determine a constructor", id="tag"
        ),
    ],
)
def test_hostile_yaml_is_config_error(text: str, fragment: str) -> None:
    assert fragment in config_error(text)


def test_huge_json_number_is_config_error() -> None:
    message = config_error('{"bistro_settings": {"enabled": 1' + "0" * 5000 + "}}")
    assert "a number has more than 4300 digits; shorten it or quote it" in message


def test_regex_repeat_overflow_is_job_error() -> None:
    job = {"filters": {"db": {"whitelist_regex": "a{4294967296}"}}}
    errors = job_errors(parse_config(make_config(j=job)))
    assert (
        'bistro_job->j.filters.db.whitelist_regex: invalid regular expression "a{4294967296}"'
        in errors
    )


def test_overlong_regex_is_job_error() -> None:
    job = {"filters": {"db": {"blacklist_regex": "a" * 100_001}}}
    errors = job_errors(parse_config(make_config(j=job)))
    assert "blacklist_regex: regular expression" in errors
    assert "is 100001 characters long; the maximum is 100000" in errors


# --- node sources -----------------------------------------------------------------------


def write_script(directory: Path, body: str, name: str = "nodes.sh", mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def script_config(hosts: dict[str, list[str]], script: str | list[str]) -> Config:
    sources = [
        {"source": "manual", "prefs": hosts},
        {"source": "script", "prefs": {"parent_level": "host", "script": script}},
    ]
    settings = make_settings(nodes={"levels": ["host", "db"], "node_sources": sources})
    return parse_config(make_config(settings))


def fetch_script(script: Path | list[str], timeout: float = 30.0, **hosts: list[str]) -> Forest:
    argv = script if isinstance(script, list) else str(script)
    config = script_config(hosts or {"host1": []}, argv)
    return fetch_forest(config.settings, now=0.0, script_timeout=timeout)


def db_names(forest: Forest) -> list[str]:
    return [node.name for node in forest.nodes("db")]


def test_script_nonzero_exit_shows_code_and_stderr(tmp_path: Path) -> None:
    script = write_script(tmp_path, "echo db1; echo 'inventory down' >&2; exit 7\n")
    with pytest.raises(NodeSourceError) as caught:
        fetch_script(script)
    message = str(caught.value)
    assert "node_sources[1] (script)" in message
    assert "exited with code 7" in message
    assert "inventory down" in message


def test_script_hang_is_killed_after_timeout(tmp_path: Path) -> None:
    script = write_script(tmp_path, "echo db1\nsleep 30\n")
    with pytest.raises(NodeSourceError) as caught:
        fetch_script(script, timeout=0.5)
    message = str(caught.value)
    assert "timed out after 0.5 s and was killed" in message
    assert "raise [bistro] script_timeout" in message


def test_script_invalid_utf8_names_offset(tmp_path: Path) -> None:
    script = write_script(tmp_path, "printf 'db1\\ndb\\377\\n'\n")
    with pytest.raises(
        NodeSourceError, match="for parent 'host1' is not valid UTF-8 at byte offset 6"
    ):
        fetch_script(script)


def test_script_hundred_thousand_lines_become_nodes(tmp_path: Path) -> None:
    script = write_script(tmp_path, "seq -f 'db%g' 1 100000\n")
    names = db_names(fetch_script(script))
    assert len(names) == 100_000
    assert names[0] == "db1"
    assert names[-1] == "db100000"


def test_script_duplicate_names_kept_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = write_script(tmp_path, "echo db1; echo db2; echo db1\n")
    assert db_names(fetch_script(script)) == ["db1", "db2"]
    assert "repeated child names under 'host1'" in caplog.text


@pytest.mark.parametrize(
    "parent",
    [
        pytest.param("$(touch pwned)", id="command-substitution"),
        pytest.param("`touch pwned`", id="backticks"),
        pytest.param("; touch pwned", id="semicolon"),
        pytest.param("a b | touch pwned &", id="pipe-and-space"),
        pytest.param("../../etc/passwd", id="path-traversal"),
        pytest.param("a/b\\c", id="path-separators"),
    ],
)
def test_script_parent_name_is_one_argv_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parent: str
) -> None:
    monkeypatch.chdir(tmp_path)
    script = write_script(tmp_path, 'printf "argc=%s last=%s\\n" "$#" "$1"\n')
    names = db_names(fetch_script(script, **{parent: []}))
    assert names == [f"argc=1 last={parent}"]
    assert not (tmp_path / "pwned").exists()


def test_script_parent_rm_reaches_no_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "x"
    victim.mkdir()
    parent = f"; rm -rf {victim}"
    script = write_script(tmp_path, 'echo "argc=$# last=$1"\n')
    assert db_names(fetch_script(script, **{parent: []})) == [f"argc=1 last={parent}"]
    assert victim.is_dir()


def test_script_output_with_metacharacters_is_plain_name(tmp_path: Path) -> None:
    script = write_script(tmp_path, "printf '%s\\n' '$(touch pwned)' 'a/b' '; rm -rf /tmp/x'\n")
    assert db_names(fetch_script(script)) == ["$(touch pwned)", "a/b", "; rm -rf /tmp/x"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        pytest.param('{"name": "a\\nb"}', "contains a line break or NUL", id="newline-in-json"),
        pytest.param('{"name": "' + "n" * 10_240 + '"}', "is 10240 characters long", id="10kb"),
        pytest.param("n" * 10_240, "the maximum is 1024", id="10kb-plain"),
        pytest.param('{"name": 5}', "node names must be strings", id="name-int"),
        pytest.param('{"name": "db1", "rack": 1}', "unknown key 'rack'", id="unknown-key"),
    ],
)
def test_script_invalid_name_line_is_rejected(tmp_path: Path, line: str, fragment: str) -> None:
    (tmp_path / "line.txt").write_text(line + "\n")
    script = write_script(tmp_path, f"cat '{tmp_path / 'line.txt'}'\n")
    with pytest.raises(NodeSourceError) as caught:
        fetch_script(script)
    message = str(caught.value)
    assert "line 1 of the output for parent 'host1'" in message
    assert fragment in message
    assert len(message) < 2000, "the message must not repeat a 10 KB name"


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        pytest.param("a\nb", "contains a line break or NUL", id="newline"),
        pytest.param("n" * 10_240, "is 10240 characters long; the maximum is 1024", id="10kb"),
        pytest.param(" ", "is empty or only whitespace", id="blank"),
    ],
)
def test_manual_invalid_name_is_config_error(name: str, fragment: str) -> None:
    settings = make_settings(
        nodes={"levels": ["host"], "node_sources": [{"source": "manual", "prefs": {name: []}}]}
    )
    message = config_error(make_config(settings))
    assert "bistro_settings.nodes.node_sources[0].prefs." in message
    assert fragment in message
    assert len(message) < 2000, "the message must not repeat a 10 KB name"


def test_script_missing_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "missing.sh"
    with pytest.raises(NodeSourceError) as caught:
        fetch_script([str(missing)])
    assert f"script '{missing}' not found; set prefs.script to an existing executable" in str(
        caught.value
    )


def test_script_not_executable_names_chmod(tmp_path: Path) -> None:
    script = write_script(tmp_path, "echo db1\n", mode=0o644)
    with pytest.raises(NodeSourceError) as caught:
        fetch_script(script)
    assert f"is not executable; fix it with: chmod +x {script}" in str(caught.value)


def test_script_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(NodeSourceError, match="is a directory; set prefs.script"):
        fetch_script([str(tmp_path)])


# --- task protocol ----------------------------------------------------------------------


def run_task(tmp_path: Path, body: str) -> CommandResult:
    """Run a task script; it gets NODE, STATUS_PIPE and JSON as $1, $2 and $3."""
    script = write_script(tmp_path, body, name="task.sh")
    output: list[str] = []
    return run_task_command([str(script)], "db1", {"id": "j"}, timeout=30, on_output=output.append)


def test_status_over_one_mib_is_truncated(tmp_path: Path) -> None:
    result = run_task(tmp_path, "head -c 1200000 /dev/zero | tr '\\0' 'x' > \"$2\"\n")
    assert result.status_truncated
    assert len(result.status_text) == MAX_STATUS_BYTES
    with pytest.raises(StatusParseError, match="the line is 1048576 bytes, over 65536"):
        parse_status_line(result.status_text)


def test_status_under_limit_is_not_truncated(tmp_path: Path) -> None:
    result = run_task(tmp_path, 'printf "progress\\ndone\\n" > "$2"\n')
    assert not result.status_truncated
    assert parse_status_line(result.status_text) == ("done", None)


def test_binary_status_is_parse_error(tmp_path: Path) -> None:
    result = run_task(tmp_path, "printf 'd\\377\\376one\\000' > \"$2\"\n")
    with pytest.raises(StatusParseError, match="unknown result; expected one of: done"):
        parse_status_line(result.status_text)


def test_status_with_unknown_bits_is_parse_error(tmp_path: Path) -> None:
    result = run_task(tmp_path, 'echo \'{"result_bits": 4100}\' > "$2"\n')
    with pytest.raises(StatusParseError, match="result_bits 4100 has unknown bits"):
        parse_status_line(result.status_text)


def test_status_with_scheduler_bits_is_parse_error(tmp_path: Path) -> None:
    result = run_task(tmp_path, 'echo \'{"result_bits": 260}\' > "$2"\n')
    with pytest.raises(StatusParseError, match="contains scheduler-only bits 256"):
        parse_status_line(result.status_text)


def test_status_json_with_unknown_keys_keeps_data(tmp_path: Path) -> None:
    status = '{"result": "done", "data": {"rows": 3}, "extra": [1, 2]}'
    result = run_task(tmp_path, f"echo '{status}' > \"$2\"\n")
    assert parse_status_line(result.status_text) == ("done", {"rows": 3})


def test_pipe_closed_early_gives_no_status(tmp_path: Path) -> None:
    # Python, because dash cannot close a descriptor numbered 10 or more by name.
    script = tmp_path / "close.py"
    script.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        "os.close(int(sys.argv[2].rsplit('/', 1)[1]))\nprint('log line after the close')\n"
    )
    script.chmod(0o755)
    output: list[str] = []
    result = run_task_command([str(script)], "db1", {}, timeout=30, on_output=output.append)
    assert output == ["log line after the close"]
    assert result.status_text == ""
    assert result.returncode == 0
    with pytest.raises(StatusParseError, match="the task wrote no status line"):
        parse_status_line(result.status_text)


def test_task_program_missing_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        run_task_command([str(tmp_path / "nope")], "db1", {}, on_output=lambda line: None)
