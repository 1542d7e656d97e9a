"""Rules of the `file` and `plugin` node sources, and of the `script` JSON output lines."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from bistro_provider.core.errors import NodeSourceError
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import NodeSourceSpec, ResourceSpec, Settings
from bistro_provider.nodes import SOURCES, fetch_forest, validate_source_prefs
from bistro_provider.nodes import file as file_source
from bistro_provider.nodes import plugin as plugin_source

LEVELS = ("instance", "host", "db", "worker")
RESOURCES = {
    "instance": {},
    "host": {"host_concurrency": ResourceSpec("host_concurrency", "host", 4, 1)},
    "db": {"db_slots": ResourceSpec("db_slots", "db", 2, 1)},
    "worker": {},
}


def make_settings(*sources: tuple[str, dict[str, Any]]) -> Settings:
    specs = tuple(NodeSourceSpec(name, prefs, index) for index, (name, prefs) in enumerate(sources))
    return Settings(levels=LEVELS, resources=RESOURCES, node_sources=specs)


def fetch(*sources: tuple[str, dict[str, Any]], now: float = 1000.0) -> Forest:
    return fetch_forest(make_settings(*sources), now=now)


def issues_for(name: str, prefs: dict[str, Any]) -> list[str]:
    spec = NodeSourceSpec(name, prefs, 0)
    return [str(issue) for issue in validate_source_prefs(spec, make_settings())]


def tree(forest: Forest, level: str) -> list[tuple[str, str | None]]:
    return [(n.name, n.parent.name if n.parent else None) for n in forest.nodes(level)]


def test_new_sources_are_registered() -> None:
    assert {"add_time", "file", "plugin"} <= set(SOURCES)


# ---- file ----


def write_nodes(path: Path, nodes: list[dict[str, Any]], mtime_ns: int | None = None) -> Path:
    path.write_text(json.dumps({"nodes": nodes}))
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def fetch_file(path: Path, *earlier: tuple[str, dict[str, Any]], **prefs: Any) -> Forest:
    return fetch(*earlier, ("file", {"path": str(path), **prefs}))


@pytest.fixture(autouse=True)
def empty_file_cache() -> Iterator[None]:
    file_source._cache.clear()
    yield
    file_source._cache.clear()


def test_file_nodes_with_fields(tmp_path: Path) -> None:
    nodes = [
        {"name": "h1", "parent": None, "tags": ["ssd"], "capacity": {"host_concurrency": 3}},
        {"name": "h2", "enabled": False},
        {"name": "db1", "parent": "h1", "capacity": {"db_slots": 0}},
    ]
    forest = fetch_file(write_nodes(tmp_path / "nodes.json", nodes))
    by_name = {node.name: node for node in forest}

    assert tree(forest, "host") == [("h1", "instance"), ("h2", "instance")]
    assert tree(forest, "db") == [("db1", "h1")]
    assert by_name["h1"].capacity == {"host_concurrency": 3}
    assert by_name["db1"].capacity == {"db_slots": 0}
    assert by_name["h2"].capacity == {}
    assert by_name["h1"].tags == frozenset({"ssd"})
    assert by_name["h2"].enabled is False
    assert by_name["db1"].enabled is True


def test_file_capacity_in_json_output(tmp_path: Path) -> None:
    nodes = [{"name": "h1", "capacity": {"host_concurrency": 3}}, {"name": "h2"}]
    items = fetch_file(write_nodes(tmp_path / "nodes.json", nodes)).to_json()

    assert items[1]["capacity"] == {"host_concurrency": 3}
    assert "capacity" not in items[2]


def test_file_yaml_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "nodes.yml"
    path.write_text("nodes:\n  - name: h1\n  - name: db1\n    parent: h1\n")

    assert tree(fetch_file(path), "db") == [("db1", "h1")]


def test_file_format_pref_overrides_extension(tmp_path: Path) -> None:
    path = tmp_path / "nodes.txt"
    path.write_text("nodes: [{name: h1}]\n")

    assert tree(fetch_file(path, format="yaml"), "host") == [("h1", "instance")]


def test_file_explicit_level(tmp_path: Path) -> None:
    nodes = [{"name": "h1", "level": "host"}, {"name": "x", "parent": "h1", "level": "db"}]

    assert tree(fetch_file(write_nodes(tmp_path / "n.json", nodes)), "db") == [("x", "h1")]


def test_file_parent_from_earlier_source(tmp_path: Path) -> None:
    path = write_nodes(tmp_path / "n.json", [{"name": "db1", "parent": "h1"}])
    forest = fetch_file(path, ("manual", {"h1": []}))

    assert tree(forest, "db") == [("db1", "h1")]


def test_file_child_under_every_parent_replica(tmp_path: Path) -> None:
    path = write_nodes(tmp_path / "n.json", [{"name": "db1", "parent": "h1"}])
    forest = fetch_file(path, ("manual", {"h1": []}), ("manual", {"h1": []}))

    assert [node.parent for node in forest.nodes("db")] == forest.nodes("host")


def test_file_parent_after_child_fails(tmp_path: Path) -> None:
    path = write_nodes(tmp_path / "n.json", [{"name": "db1", "parent": "h1"}, {"name": "h1"}])

    with pytest.raises(NodeSourceError) as info:
        fetch_file(path)

    message = str(info.value)
    assert str(path) in message
    assert "nodes[0] (name 'db1')" in message
    assert "parent 'h1' not found" in message
    assert "list the parent before its children" in message


def test_file_reread_when_changed(tmp_path: Path) -> None:
    path = write_nodes(tmp_path / "n.json", [{"name": "h1"}], mtime_ns=10**18)
    first = fetch_file(path)
    write_nodes(path, [{"name": "h1"}, {"name": "h2"}], mtime_ns=10**18 + 10**9)
    second = fetch_file(path)

    assert tree(first, "host") == [("h1", "instance")]
    assert tree(second, "host") == [("h1", "instance"), ("h2", "instance")]


def test_file_not_reparsed_when_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_nodes(tmp_path / "n.json", [{"name": "h1"}], mtime_ns=10**18)
    reads: list[Path] = []
    original = file_source._read_document

    def counting_read(read_path: Path, file_format: str) -> Any:
        reads.append(read_path)
        return original(read_path, file_format)

    monkeypatch.setattr(file_source, "_read_document", counting_read)
    fetch_file(path)
    forest = fetch_file(path)

    assert len(reads) == 1
    assert tree(forest, "host") == [("h1", "instance")]


def test_file_same_size_new_mtime_rereads(tmp_path: Path) -> None:
    path = write_nodes(tmp_path / "n.json", [{"name": "ha"}], mtime_ns=10**18)
    fetch_file(path)
    write_nodes(path, [{"name": "hb"}], mtime_ns=10**18 + 10**9)

    assert tree(fetch_file(path), "host") == [("hb", "instance")]


def test_file_relative_path_uses_config_dir(tmp_path: Path) -> None:
    write_nodes(tmp_path / "n.json", [{"name": "h1"}])
    prefs = {"path": "n.json", "__config_dir__": str(tmp_path)}

    assert tree(fetch(("file", prefs)), "host") == [("h1", "instance")]


@pytest.mark.parametrize(
    ("nodes", "fragment"),
    [
        pytest.param(
            [{"name": "h1", "capacity": {"db_slots": 1}}],
            "nodes[0] (name 'h1'): unknown resource 'db_slots' in 'capacity' for level 'host'; "
            "resources defined on that level: host_concurrency",
            id="resource-of-another-level",
        ),
        pytest.param(
            [{"name": "h1", "capacity": {"host_concurrency": -1}}],
            "nodes[0]: capacity of 'host_concurrency' must be 0 or more, got -1",
            id="negative-capacity",
        ),
        pytest.param(
            [{"name": "h1", "capacity": {"host_concurrency": 1.5}}],
            "must be a whole number",
            id="fractional-capacity",
        ),
        pytest.param(
            [{"name": "h1"}, {"name": "h2", "colour": "red"}],
            "nodes[1]: unknown key 'colour'",
            id="unknown-entry-key",
        ),
        pytest.param([{"parent": None}], "nodes[0]: missing 'name'", id="no-name"),
        pytest.param(
            [{"name": "h1", "enabled": "yes"}], "'enabled' must be true or false", id="enabled-str"
        ),
        pytest.param([{"name": "h1", "tags": [""]}], "'tags' must be a list", id="empty-tag"),
        pytest.param(["h1"], "nodes[0]: a node must be an object", id="entry-not-object"),
        pytest.param(
            [{"name": "h1"}, {"name": "h1"}],
            "nodes[1] (name 'h1'): node 'h1' already exists under 'instance'",
            id="repeated-entry",
        ),
        pytest.param(
            [{"name": "h1", "level": "db"}],
            "a node without a parent is on level 'host', not 'db'",
            id="root-on-deep-level",
        ),
        pytest.param(
            [{"name": "h1", "level": "rack"}],
            "unknown level 'rack'; configured levels: host, db",
            id="unknown-level",
        ),
        pytest.param(
            [{"name": "h1"}, {"name": "d1", "parent": "h1"}, {"name": "x", "parent": "d1"}],
            "parent 'd1' is on the deepest configured level 'db'",
            id="too-deep",
        ),
        pytest.param(
            [
                {"name": "h1"},
                {"name": "h2"},
                {"name": "h1", "parent": "h2"},
                {"name": "x", "parent": "h1"},
            ],
            "parent 'h1' exists on levels 'host', 'db'; set 'level'",
            id="ambiguous-parent",
        ),
        pytest.param(
            [{"name": "x", "parent": "h9", "level": "db"}],
            "parent 'h9' not found on level 'host'",
            id="missing-parent-on-level",
        ),
    ],
)
def test_file_invalid_entries(tmp_path: Path, nodes: list[Any], fragment: str) -> None:
    path = write_nodes(tmp_path / "n.json", nodes)

    with pytest.raises(NodeSourceError) as info:
        fetch_file(path)

    assert fragment in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param('{"nodes": [', "is not valid JSON: line 1 column 12", id="broken-json"),
        pytest.param('[{"name": "h1"}]', 'must contain an object {"nodes": [...]}', id="list"),
        pytest.param('{"nodes": [], "node": []}', "unknown top-level key 'node'", id="typo-key"),
        pytest.param(b"\xff", "is not UTF-8 text", id="not-utf8"),
    ],
)
def test_file_invalid_documents(tmp_path: Path, text: str | bytes, fragment: str) -> None:
    path = tmp_path / "n.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)

    with pytest.raises(NodeSourceError, match="node source") as info:
        fetch_file(path)

    assert fragment in str(info.value)


def test_file_missing_fails(tmp_path: Path) -> None:
    with pytest.raises(NodeSourceError, match="No such file or directory; check prefs.path"):
        fetch_file(tmp_path / "absent.json")


@pytest.mark.parametrize(
    ("prefs", "fragment"),
    [
        pytest.param({}, "prefs.path: missing", id="no-path"),
        pytest.param({"path": ""}, "must be a non-empty file path", id="empty-path"),
        pytest.param({"path": "n.txt"}, "cannot tell the format", id="unknown-extension"),
        pytest.param({"path": "n.json", "format": "xml"}, 'must be "json" or "yaml"', id="xml"),
        pytest.param({"path": "n.json", "paht": 1}, "unknown key 'paht'", id="unknown-key"),
    ],
)
def test_file_invalid_prefs(prefs: dict[str, Any], fragment: str) -> None:
    issues = issues_for("file", prefs)

    assert any(fragment in issue for issue in issues), issues


def test_file_valid_prefs_have_no_issues() -> None:
    assert issues_for("file", {"path": "nodes.yaml", "__config_dir__": "/etc"}) == []


# ---- plugin ----

PLUGIN_CALLS: list[tuple[list[str], dict[str, Any], float]] = []


def fake_plugin(parents: list[Node], prefs: dict[str, Any], now: float) -> list[Any]:
    PLUGIN_CALLS.append(([parent.name for parent in parents], prefs, now))
    return [
        {"name": "db1", "parent": "h1", "tags": ["big"], "capacity": {"db_slots": 5}},
        {"name": "db2", "parent": "h2", "enabled": False},
    ]


def single_parent_plugin(parents: list[Node], prefs: dict[str, Any], now: float) -> list[Any]:
    return ["a", {"name": "b", "tags": ["t"]}]


def raising_plugin(parents: list[Node], prefs: dict[str, Any], now: float) -> list[Any]:
    raise RuntimeError("inventory service unavailable")


def lazy_raising_plugin(parents: list[Node], prefs: dict[str, Any], now: float) -> Iterator[str]:
    yield "a"
    raise ConnectionError("lost the connection")


def bad_resource_plugin(parents: list[Node], prefs: dict[str, Any], now: float) -> list[Any]:
    return [{"name": "ok", "parent": "h1"}, {"name": "x", "parent": "h1", "capacity": {"cpu": 1}}]


def unknown_parent_plugin(parents: list[Node], prefs: dict[str, Any], now: float) -> list[Any]:
    return [{"name": "x", "parent": "h9"}]


def plugin_points(**targets: str) -> dict[str, EntryPoint]:
    group = plugin_source.ENTRY_POINT_GROUP
    return {
        name: EntryPoint(name=name, value=f"{__name__}:{target}", group=group)
        for name, target in targets.items()
    }


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    points = plugin_points(
        inventory="fake_plugin",
        single="single_parent_plugin",
        broken="raising_plugin",
        lazy="lazy_raising_plugin",
        badres="bad_resource_plugin",
        orphan="unknown_parent_plugin",
        missing="no_such_function",
    )
    monkeypatch.setattr(plugin_source, "_plugin_entry_points", lambda: points)
    PLUGIN_CALLS.clear()


def fetch_plugin(name: str, hosts: tuple[str, ...] = ("h1", "h2"), **prefs: Any) -> Forest:
    return fetch(
        ("manual", {host: [] for host in hosts}),
        ("plugin", {"name": name, "parent_level": "host", **prefs}),
        now=1234.5,
    )


@pytest.mark.usefixtures("plugins")
def test_plugin_nodes_with_fields() -> None:
    forest = fetch_plugin("inventory")
    by_name = {node.name: node for node in forest.nodes("db")}

    assert tree(forest, "db") == [("db1", "h1"), ("db2", "h2")]
    assert by_name["db1"].tags == frozenset({"big"})
    assert by_name["db1"].capacity == {"db_slots": 5}
    assert by_name["db2"].enabled is False


@pytest.mark.usefixtures("plugins")
def test_plugin_gets_parents_prefs_and_now() -> None:
    fetch_plugin("inventory", region="eu")

    [(parents, prefs, now)] = PLUGIN_CALLS
    assert parents == ["h1", "h2"]
    assert prefs["region"] == "eu"
    assert now == 1234.5


@pytest.mark.usefixtures("plugins")
def test_plugin_strings_with_one_parent() -> None:
    forest = fetch_plugin("single", hosts=("h1",))

    assert tree(forest, "db") == [("a", "h1"), ("b", "h1")]
    assert forest.nodes("db")[1].tags == frozenset({"t"})


@pytest.mark.usefixtures("plugins")
def test_plugin_strings_with_two_parents_fail() -> None:
    with pytest.raises(NodeSourceError, match=r"item \[0\]: no 'parent', but there are 2"):
        fetch_plugin("single")


@pytest.mark.usefixtures("plugins")
def test_plugin_not_called_without_parents() -> None:
    forest = fetch(("plugin", {"name": "inventory", "parent_level": "host"}))

    assert PLUGIN_CALLS == []
    assert len(forest) == 1


@pytest.mark.usefixtures("plugins")
def test_plugin_exception_is_contained() -> None:
    with pytest.raises(NodeSourceError) as info:
        fetch_plugin("broken")

    message = str(info.value)
    assert "plugin 'broken'" in message
    assert f"entry point {__name__}:raising_plugin" in message
    assert "RuntimeError: inventory service unavailable" in message
    assert isinstance(info.value.__cause__, NodeSourceError)
    assert isinstance(info.value.__cause__.__cause__, RuntimeError)


@pytest.mark.usefixtures("plugins")
def test_plugin_exception_while_iterating_is_contained() -> None:
    with pytest.raises(NodeSourceError, match="ConnectionError: lost the connection"):
        fetch_plugin("lazy", hosts=("h1",))


@pytest.mark.usefixtures("plugins")
def test_plugin_load_failure_is_contained() -> None:
    with pytest.raises(NodeSourceError, match="plugin 'missing' .* failed to load"):
        fetch_plugin("missing")


@pytest.mark.usefixtures("plugins")
def test_plugin_unknown_name_lists_registered() -> None:
    with pytest.raises(NodeSourceError) as info:
        fetch_plugin("nope")

    assert "no entry point 'nope' in group 'bistro_provider.node_sources'" in str(info.value)
    assert "badres, broken, inventory, lazy, missing, orphan, single" in str(info.value)


@pytest.mark.usefixtures("plugins")
def test_plugin_unknown_name_is_config_issue() -> None:
    issues = issues_for("plugin", {"name": "nope", "parent_level": "host"})

    assert len(issues) == 1
    assert "prefs.name: no entry point 'nope'" in issues[0]


@pytest.mark.usefixtures("plugins")
def test_plugin_bad_resource_fails() -> None:
    with pytest.raises(NodeSourceError) as info:
        fetch_plugin("badres")

    assert "invalid item [1]: unknown resource 'cpu'" in str(info.value)
    assert "resources defined on that level: db_slots" in str(info.value)


@pytest.mark.usefixtures("plugins")
def test_plugin_unknown_parent_fails() -> None:
    with pytest.raises(NodeSourceError, match="unknown parent 'h9'; the parents are: 'h1', 'h2'"):
        fetch_plugin("orphan")


@pytest.mark.parametrize(
    ("prefs", "fragment"),
    [
        pytest.param({"parent_level": "host"}, "prefs.name: missing", id="no-name"),
        pytest.param({"name": 3, "parent_level": "host"}, "must be a non-empty string", id="int"),
        pytest.param({"name": "x"}, "prefs.parent_level: missing", id="no-parent-level"),
    ],
)
def test_plugin_invalid_prefs(prefs: dict[str, Any], fragment: str) -> None:
    assert any(fragment in issue for issue in issues_for("plugin", prefs))


# ---- script JSON lines ----


def write_script(directory: Path, body: str) -> Path:
    path = directory / "list.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def fetch_script(script: Path) -> Forest:
    return fetch(
        ("manual", {"h1": []}),
        ("script", {"parent_level": "host", "script": str(script)}),
    )


def test_script_json_lines(tmp_path: Path) -> None:
    body = (
        'echo \'{"name": "db1", "tags": ["ssd", "eu"], "capacity": {"db_slots": 4}}\'\n'
        'echo \'{"name": "db2", "enabled": false}\'\n'
    )
    forest = fetch_script(write_script(tmp_path, body))
    db1, db2 = forest.nodes("db")

    assert (db1.name, db2.name) == ("db1", "db2")
    assert db1.tags == frozenset({"ssd", "eu"})
    assert db1.capacity == {"db_slots": 4}
    assert db1.enabled is True
    assert db2.enabled is False
    assert db2.capacity == {}


def test_script_mixed_plain_and_json_lines(tmp_path: Path) -> None:
    body = 'echo plain1\necho \'  {"name": "json1", "tags": ["t"]}  \'\necho plain2\n'
    forest = fetch_script(write_script(tmp_path, body))

    assert tree(forest, "db") == [("plain1", "h1"), ("json1", "h1"), ("plain2", "h1")]
    assert [node.tags for node in forest.nodes("db")] == [
        frozenset(),
        frozenset({"t"}),
        frozenset(),
    ]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        pytest.param(
            '{"name": "db1", "capacity": {"host_concurrency": 1}}',
            "line 2 of the output for parent 'h1': unknown resource 'host_concurrency' in "
            "'capacity' for level 'db'; resources defined on that level: db_slots",
            id="resource-of-another-level",
        ),
        pytest.param(
            '{"name": "db1", "capacity": {"db_slots": -2}}',
            "line 2 of the output for parent 'h1': capacity of 'db_slots' must be 0 or more",
            id="negative-capacity",
        ),
        pytest.param('{"name": "db1",', "must be a JSON object, but column", id="broken-json"),
        pytest.param(
            '{"tags": []}', "line 2 of the output for parent 'h1': missing 'name'", id="no-name"
        ),
        pytest.param('{"name": "db1", "size": 3}', "unknown key 'size'", id="unknown-key"),
    ],
)
def test_script_invalid_json_line(tmp_path: Path, line: str, fragment: str) -> None:
    script = write_script(tmp_path, f"echo ok\ncat <<'EOF'\n{line}\nEOF\n")

    with pytest.raises(NodeSourceError) as info:
        fetch_script(script)

    assert fragment in str(info.value)
