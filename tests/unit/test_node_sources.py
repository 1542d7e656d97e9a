"""Rules of the built-in node sources, the registry and `fetch_forest`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bistro_provider.core.errors import ConfigIssue, NodeSourceError
from bistro_provider.core.filters import task_eligibility
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import Job, NodeSourceSpec, Settings
from bistro_provider.nodes import (
    SOURCES,
    FetchContext,
    fetch_forest,
    register_source,
    validate_source_prefs,
)

LEVELS = ("instance", "host", "db", "worker")


def make_settings(
    *sources: tuple[str, dict[str, Any]],
    levels: tuple[str, ...] = LEVELS,
    instance: str = "H",
) -> Settings:
    specs = tuple(
        NodeSourceSpec(name, prefs, index) for index, (name, prefs) in enumerate(sources)
    )
    return Settings(
        levels=levels,
        resources={level: {} for level in levels},
        node_sources=specs,
        instance_node_name=instance,
    )


def fetch(*sources: tuple[str, dict[str, Any]], **kwargs: Any) -> Forest:
    timeout = kwargs.pop("script_timeout", 60.0)
    return fetch_forest(make_settings(*sources, **kwargs), now=0.0, script_timeout=timeout)


def names(forest: Forest, level: str) -> list[str]:
    return [node.name for node in forest.nodes(level)]


def parents(forest: Forest, level: str) -> list[tuple[str, str | None]]:
    return [(n.name, n.parent.name if n.parent else None) for n in forest.nodes(level)]


def issues_for(name: str, prefs: dict[str, Any], levels: tuple[str, ...] = LEVELS) -> list[str]:
    spec = NodeSourceSpec(name, prefs, 0)
    return [str(issue) for issue in validate_source_prefs(spec, make_settings(levels=levels))]


# ---- registry and fetch_forest ----


def test_builtin_sources_are_registered() -> None:
    assert {"empty", "manual", "range_label", "script"} <= set(SOURCES)


def test_empty_source_adds_nothing() -> None:
    forest = fetch(("empty", {}))

    assert len(forest) == 1
    assert forest.instance.name == "H"


def test_unknown_source_fails_fetch() -> None:
    with pytest.raises(NodeSourceError) as info:
        fetch(("empty", {}), ("tier_services", {}))

    assert "bistro_settings.nodes.node_sources[1] (tier_services)" in str(info.value)
    assert "range_label" in str(info.value)


def test_unknown_source_is_a_config_issue() -> None:
    issues = validate_source_prefs(NodeSourceSpec("nope", {}, 2), make_settings())

    assert [issue.path for issue in issues] == ["bistro_settings.nodes.node_sources[2].source"]
    assert "manual" in issues[0].message


def test_source_exception_names_source_and_index() -> None:
    def broken(forest: Forest, prefs: dict[str, Any], context: FetchContext) -> None:
        raise KeyError("boom")

    register_source("test_broken", broken)
    try:
        with pytest.raises(NodeSourceError) as info:
            fetch(("empty", {}), ("test_broken", {}))
    finally:
        del SOURCES["test_broken"]

    assert "bistro_settings.nodes.node_sources[1] (test_broken)" in str(info.value)
    assert isinstance(info.value.__cause__, KeyError)


def test_source_error_prefixed_once() -> None:
    with pytest.raises(NodeSourceError) as info:
        fetch(("range_label", {"parent_level": "nope", "start": 0, "end": 1}))

    assert str(info.value).count("node source") == 1
    assert "unknown level 'nope'" in str(info.value)


def test_register_taken_name_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_source("manual", lambda forest, prefs, context: None)


def test_later_source_sees_earlier_nodes() -> None:
    forest = fetch(
        ("manual", {"h1": [], "h2": []}),
        ("range_label", {"parent_level": "host", "start": 0, "end": 1}),
    )

    assert names(forest, "db") == ["h1__0", "h1__1", "h2__0", "h2__1"]


def test_source_gets_context() -> None:
    seen: list[FetchContext] = []
    register_source("test_context", lambda forest, prefs, context: seen.append(context))
    try:
        fetch_forest(make_settings(("empty", {}), ("test_context", {})), now=12.5, script_timeout=3)
    finally:
        del SOURCES["test_context"]

    assert seen[0].now == 12.5
    assert seen[0].script_timeout == 3
    assert seen[0].source_index == 1


# ---- range_label ----


def test_range_label_under_instance() -> None:
    forest = fetch(("range_label", {"parent_level": "instance", "start": 3, "end": 5}))

    assert names(forest, "host") == ["H__3", "H__4", "H__5"]
    assert {parent for _, parent in parents(forest, "host")} == {"H"}


def test_range_label_custom_format_negative_start() -> None:
    prefs = {"parent_level": "instance", "start": -1, "end": 1, "format": "c{i}"}

    assert names(fetch(("range_label", prefs)), "host") == ["c-1", "c0", "c1"]


def test_range_label_start_after_end_gives_none() -> None:
    forest = fetch(("range_label", {"parent_level": "instance", "start": 5, "end": 3}))

    assert names(forest, "host") == []


def test_range_label_all_placeholders() -> None:
    prefs = {
        "parent_level": "instance",
        "start": "1",
        "end": " 2 ",
        "format": "{parent}-{i}-of-{start}..{end}",
    }

    assert names(fetch(("range_label", prefs)), "host") == ["H-1-of-1..2", "H-2-of-1..2"]


def test_range_label_keeps_braces_of_parent_names() -> None:
    forest = fetch(
        ("manual", {"a{i}{x}": []}),
        ("range_label", {"parent_level": "host", "start": 7, "end": 7, "format": "{parent}/{i}"}),
    )

    assert names(forest, "db") == ["a{i}{x}/7"]


def test_range_label_disabled_nodes() -> None:
    prefs = {"parent_level": "instance", "start": 0, "end": 0, "enabled": False}
    forest = fetch(("range_label", prefs))

    assert [node.enabled for node in forest.nodes("host")] == [False]


def test_range_label_repeated_name_kept_once() -> None:
    prefs = {"parent_level": "instance", "start": 0, "end": 2, "format": "same"}

    assert names(fetch(("range_label", prefs)), "host") == ["same"]


@pytest.mark.parametrize(
    ("prefs", "fragment"),
    [
        pytest.param({"start": 0, "end": 1}, "parent_level: missing", id="no-parent-level"),
        pytest.param(
            {"parent_level": "rack", "start": 0, "end": 1}, "unknown level 'rack'",
            id="unknown-level",
        ),
        pytest.param(
            {"parent_level": "db", "start": 0, "end": 1}, "deepest configured level",
            id="children-below-last-level",
        ),
        pytest.param({"parent_level": "host", "end": 1}, "prefs.start: missing", id="no-start"),
        pytest.param(
            {"parent_level": "host", "start": "x", "end": 1}, "prefs.start: must be an integer",
            id="start-not-int",
        ),
        pytest.param(
            {"parent_level": "host", "start": True, "end": 1}, "prefs.start: must be an integer",
            id="start-bool",
        ),
        pytest.param(
            {"parent_level": "host", "start": 0, "end": 1, "format": 3}, "prefs.format",
            id="format-not-string",
        ),
        pytest.param(
            {"parent_level": "host", "start": 0, "end": 1, "format": ""}, "empty",
            id="format-empty",
        ),
        pytest.param(
            {"parent_level": "host", "start": 0, "end": 1, "enabled": "yes"}, "prefs.enabled",
            id="enabled-not-bool",
        ),
        pytest.param(
            {"parent_level": "host", "start": 0, "end": 1, "step": 2}, "unknown key 'step'",
            id="unknown-key",
        ),
        pytest.param(
            {"parent_level": "host", "start": 0, "end": 10**9}, "the maximum is",
            id="range-too-large",
        ),
    ],
)
def test_range_label_invalid_prefs(prefs: dict[str, Any], fragment: str) -> None:
    issues = issues_for("range_label", prefs)

    assert any(fragment in issue for issue in issues), issues
    assert all(issue.startswith("bistro_settings.nodes.node_sources[0].prefs") for issue in issues)


def test_range_label_invalid_prefs_fail_fetch() -> None:
    with pytest.raises(NodeSourceError, match="parent_level"):
        fetch(("range_label", {"start": 0, "end": 1}))


def test_range_label_valid_prefs_have_no_issues() -> None:
    assert issues_for("range_label", {"parent_level": "host", "start": 0, "end": 1}) == []


def test_config_dir_key_is_not_an_unknown_key() -> None:
    prefs = {"parent_level": "host", "start": 0, "end": 1, "__config_dir__": "/etc"}

    assert issues_for("range_label", prefs) == []


# ---- manual ----


def test_manual_roots_and_children() -> None:
    forest = fetch(("manual", {"h1": ["d1", "d2"], "h2": "d3", "h3": {"children": []}}))

    assert parents(forest, "host") == [("h1", "H"), ("h2", "H"), ("h3", "H")]
    assert parents(forest, "db") == [("d1", "h1"), ("d2", "h1"), ("d3", "h2")]


def test_manual_mutual_children_is_error() -> None:
    with pytest.raises(NodeSourceError, match="no top-level nodes; check for cycles"):
        fetch(("manual", {"a": ["b"], "b": ["a"]}))


def test_manual_cycle_below_root_is_error() -> None:
    levels = ("instance", "l1", "l2", "l3", "l4", "worker")

    with pytest.raises(NodeSourceError, match="cycle a -> b -> a"):
        fetch(("manual", {"root": ["a"], "a": ["b"], "b": ["a"]}), levels=levels)


def test_manual_chain_deeper_than_levels_is_error() -> None:
    with pytest.raises(NodeSourceError) as info:
        fetch(("manual", {"a": ["b"], "b": ["c"]}))

    message = str(info.value)
    assert "node 'c'" in message
    assert "would be at level 3 but the deepest configured level is 2 (db)" in message
    assert "a -> b -> c" in message


def test_manual_chain_error_is_a_config_issue() -> None:
    issues = issues_for("manual", {"a": ["b"], "b": ["c"]})

    assert len(issues) == 1
    assert issues[0].startswith("bistro_settings.nodes.node_sources[0].prefs: node 'c'")


def test_manual_disabled_key_presence_disables() -> None:
    prefs = {"h1": {"children": ["d1"], "disabled": False}, "h2": ["d2"]}
    forest = fetch(("manual", prefs))

    assert [(node.name, node.enabled) for node in forest.nodes("host")] == [
        ("h1", False),
        ("h2", True),
    ]


def test_manual_disabled_parent_excludes_enabled_child() -> None:
    forest = fetch(("manual", {"h1": {"children": ["d1"], "disabled": True}}))
    child = forest.nodes("db")[0]

    assert child.enabled is True
    assert task_eligibility(Job("job"), child, LEVELS) == "disabled"


def test_manual_replicas_share_name() -> None:
    forest = fetch(("manual", {"h1": ["db"], "h2": ["db"]}))

    assert parents(forest, "db") == [("db", "h1"), ("db", "h2")]
    assert len(forest.replicas(2, "db")) == 2


def test_manual_empty_prefs_adds_nothing() -> None:
    assert len(fetch(("manual", {}))) == 1


@pytest.mark.parametrize(
    ("prefs", "path", "fragment"),
    [
        pytest.param({"h1": 3}, "prefs.h1", "must be a list", id="value-int"),
        pytest.param({"h1": None}, "prefs.h1", "must be a list", id="value-null"),
        pytest.param({"h1": ["d", 2]}, "prefs.h1[1]", "must be strings", id="child-int"),
        pytest.param({"h1": ["d", "d"]}, "prefs.h1[1]", "listed twice", id="child-twice"),
        pytest.param({"h1": [""]}, "prefs.h1[0]", "empty", id="child-empty"),
        pytest.param({"h1": ["a\nb"]}, "prefs.h1[0]", "line break", id="child-newline"),
        pytest.param({"h1": ["x" * 1025]}, "prefs.h1[0]", "maximum is 1024", id="child-long"),
        pytest.param({" ": []}, "prefs. ", "empty", id="name-blank"),
        pytest.param(
            {"h1": {"children": ["d"], "disable": True}}, "prefs.h1.disable", "unknown key",
            id="object-unknown-key",
        ),
        pytest.param(
            {"h1": {"children": 5}}, "prefs.h1.children", "must be a list",
            id="object-children-int",
        ),
    ],
)
def test_manual_invalid_prefs(prefs: dict[str, Any], path: str, fragment: str) -> None:
    issues = issues_for("manual", prefs)
    expected_prefix = f"bistro_settings.nodes.node_sources[0].{path}: "

    assert any(issue.startswith(expected_prefix) and fragment in issue for issue in issues), issues


def test_manual_ignores_config_dir_key() -> None:
    forest = fetch(("manual", {"h1": [], "__config_dir__": "/etc"}))

    assert names(forest, "host") == ["h1"]


# ---- script ----


def write_script(directory: Path, body: str, name: str = "list.sh", mode: int = 0o755) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


def fetch_script_nodes(script: str | list[str], **kwargs: Any) -> Forest:
    return fetch(
        ("manual", {"h1": [], "h2": []}),
        ("script", {"parent_level": "host", "script": script}),
        **kwargs,
    )


def test_script_lines_become_nodes(tmp_path: Path) -> None:
    script = write_script(tmp_path, 'printf "%s_a\\n\\n  %s_b  \\n" "$1" "$1"\n')
    forest = fetch_script_nodes(str(script))

    assert parents(forest, "db") == [
        ("h1_a", "h1"),
        ("h1_b", "h1"),
        ("h2_a", "h2"),
        ("h2_b", "h2"),
    ]
    assert all(node.enabled for node in forest.nodes("db"))


def test_script_extra_args_come_before_parent(tmp_path: Path) -> None:
    script = write_script(tmp_path, 'echo "$1-$2-$#"\n')
    forest = fetch_script_nodes([str(script), "--flag"])

    assert names(forest, "db") == ["--flag-h1-2", "--flag-h2-2"]


def test_script_repeated_line_kept_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    script = write_script(tmp_path, "echo x; echo y; echo x\n")
    forest = fetch_script_nodes(str(script))

    assert names(forest, "db") == ["x", "y", "x", "y"]
    assert "repeated" in caplog.text


def test_script_nonzero_exit_fails(tmp_path: Path) -> None:
    script = write_script(tmp_path, "echo early >&2; echo 'disk on fire' >&2; exit 3\n")

    with pytest.raises(NodeSourceError) as info:
        fetch_script_nodes(str(script))

    message = str(info.value)
    assert "bistro_settings.nodes.node_sources[1] (script)" in message
    assert "exited with code 3" in message
    assert "disk on fire" in message


def test_script_timeout_fails(tmp_path: Path) -> None:
    script = write_script(tmp_path, "sleep 5\n")

    with pytest.raises(NodeSourceError, match=r"timed out after 0\.5 s"):
        fetch_script_nodes(str(script), script_timeout=0.5)


def test_script_invalid_utf8_names_offset(tmp_path: Path) -> None:
    script = write_script(tmp_path, "printf 'ok\\nab\\377\\n'\n")

    with pytest.raises(NodeSourceError, match="not valid UTF-8 at byte offset 5"):
        fetch_script_nodes(str(script))


def test_script_nul_in_line_fails(tmp_path: Path) -> None:
    script = write_script(tmp_path, "printf 'a\\000b\\n'\n")

    with pytest.raises(NodeSourceError, match="line 1 .* contains a line break or NUL"):
        fetch_script_nodes(str(script))


def test_script_too_long_line_fails(tmp_path: Path) -> None:
    script = write_script(tmp_path, f"echo {'x' * 1025}\n")

    with pytest.raises(NodeSourceError, match="the maximum is 1024"):
        fetch_script_nodes(str(script))


def test_script_missing_path_fails(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sh"

    with pytest.raises(NodeSourceError) as info:
        fetch_script_nodes(str(missing))

    assert f"script '{missing}' not found" in str(info.value)


def test_script_not_executable_fails(tmp_path: Path) -> None:
    script = write_script(tmp_path, "echo x\n", mode=0o644)

    with pytest.raises(NodeSourceError) as info:
        fetch_script_nodes(str(script))

    assert "is not executable" in str(info.value)
    assert f"chmod +x {script}" in str(info.value)


def test_script_parent_name_is_one_argument(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    script = write_script(tmp_path, 'echo "$#:$1"\n')
    forest = fetch(
        ("manual", {"$(touch pwned)": [], "a b;touch pwned2": []}),
        ("script", {"parent_level": "host", "script": str(script)}),
    )

    assert names(forest, "db") == ["1:$(touch pwned)", "1:a b;touch pwned2"]
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


def test_script_relative_path_uses_config_dir(tmp_path: Path) -> None:
    write_script(tmp_path, "echo child\n", name="rel.sh")
    prefs = {"parent_level": "instance", "script": "rel.sh", "__config_dir__": str(tmp_path)}

    assert names(fetch(("script", prefs)), "host") == ["child"]


def test_script_relative_path_uses_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_script(tmp_path, "echo child\n", name="rel.sh")
    monkeypatch.chdir(tmp_path)
    prefs = {"parent_level": "instance", "script": "rel.sh"}

    assert names(fetch(("script", prefs)), "host") == ["child"]


def test_script_runs_once_per_replica_name(tmp_path: Path) -> None:
    log_file = tmp_path / "calls"
    script = write_script(tmp_path, f'echo "$1" >> {log_file}; echo "$1.t"\n')
    forest = fetch(
        ("manual", {"h1": ["db"], "h2": ["db"]}),
        ("script", {"parent_level": "db", "script": str(script)}),
        levels=("instance", "host", "db", "table", "worker"),
    )

    assert parents(forest, "table") == [("db.t", "db"), ("db.t", "db")]
    assert log_file.read_text().splitlines() == ["db"]


def test_script_stdin_is_empty(tmp_path: Path) -> None:
    script = write_script(tmp_path, 'if read line; then echo got; else echo eof; fi\n')
    prefs = {"parent_level": "instance", "script": str(script)}

    assert names(fetch(("script", prefs)), "host") == ["eof"]


@pytest.mark.parametrize(
    ("prefs", "fragment"),
    [
        pytest.param({"parent_level": "host"}, "prefs.script: missing", id="no-script"),
        pytest.param({"script": "/bin/true"}, "prefs.parent_level: missing", id="no-level"),
        pytest.param(
            {"parent_level": "host", "script": []}, "prefs.script: must be a path", id="empty-list"
        ),
        pytest.param(
            {"parent_level": "host", "script": ["/bin/x", 3]}, "prefs.script: must be a path",
            id="arg-not-string",
        ),
        pytest.param(
            {"parent_level": "host", "script": ""}, "prefs.script: must be a path",
            id="empty-path",
        ),
        pytest.param(
            {"parent_level": "host", "script": "/bin/x", "timeout": 3}, "unknown key 'timeout'",
            id="unknown-key",
        ),
    ],
)
def test_script_invalid_prefs(prefs: dict[str, Any], fragment: str) -> None:
    issues = issues_for("script", prefs)

    assert any(fragment in issue for issue in issues), issues


def test_script_valid_prefs_have_no_issues() -> None:
    prefs = {"parent_level": "host", "script": ["./list.sh", "--all"]}

    assert issues_for("script", prefs) == []


def test_validate_returns_config_issues() -> None:
    issues = validate_source_prefs(NodeSourceSpec("script", {}, 1), make_settings())

    assert all(isinstance(issue, ConfigIssue) for issue in issues)
    assert {issue.path for issue in issues} == {
        "bistro_settings.nodes.node_sources[1].prefs.parent_level",
        "bistro_settings.nodes.node_sources[1].prefs.script",
    }

