"""The `script` node source: children listed by an external program.

For each node on `parent_level` the source runs ``[script, *args, parent_name]`` directly
(an argv list, never a shell, so a parent name reaches the program as one argument). Each
non-blank line of its standard output, stripped of surrounding whitespace, is one child:

* a line that starts with ``{`` is a JSON object ``{"name": "db1", "enabled": true,
  "tags": ["ssd"], "capacity": {"db_slots": 2}}``. Only ``name`` is required. ``capacity``
  sets per-node limits, so each key must be a resource of the children's level and each
  amount a whole number >= 0.
* any other line is the name of an enabled child without tags, as in Bistro.

Both kinds of line may be mixed in one output. A failure of any run fails the whole fetch,
so the caller keeps its last good forest instead of losing the nodes of one parent.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bistro_provider.core.errors import ConfigIssue, NodeSourceError
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import Settings
from bistro_provider.nodes.base import (
    CONFIG_DIR_KEY,
    FetchContext,
    check_parent_level,
    check_unknown_keys,
    node_name_problem,
    raise_for_issues,
)
from bistro_provider.nodes.node_fields import (
    ChildSpec,
    NodeFieldError,
    add_child_specs,
    check_capacity_resources,
    parse_node_object,
)

log = logging.getLogger(__name__)

SOURCE_NAME = "script"
KNOWN_KEYS = frozenset({"parent_level", "script"})
STDERR_TAIL_LINES = 5
# Seconds to wait for the pipes to close after the process group was killed on timeout.
DRAIN_AFTER_KILL_SECONDS = 5.0


@dataclass(frozen=True)
class ScriptPrefs:
    """Validated prefs of one `script` source: the program with its extra arguments."""

    parent_level: str
    argv: tuple[str, ...]
    config_dir: str | None


def parse_script_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> tuple[ScriptPrefs | None, list[ConfigIssue]]:
    """Return the prefs as a `ScriptPrefs`, or None with every problem found."""
    issues = check_unknown_keys(prefs, KNOWN_KEYS, path)
    issues += check_parent_level(prefs, settings.levels, path)
    argv = _parse_argv(prefs, f"{path}.script", issues)
    config_dir = prefs.get(CONFIG_DIR_KEY)
    if config_dir is not None and not isinstance(config_dir, str):
        message = f"must be a directory path (string), got {config_dir!r}"
        issues.append(ConfigIssue(f"{path}.{CONFIG_DIR_KEY}", message))
    if issues or argv is None:
        return None, issues
    return ScriptPrefs(prefs["parent_level"], argv, config_dir), []


def _parse_argv(
    prefs: Mapping[str, Any], path: str, issues: list[ConfigIssue]
) -> tuple[str, ...] | None:
    if "script" not in prefs:
        issues.append(ConfigIssue(path, "missing; set it to the path of an executable"))
        return None
    value = prefs["script"]
    argv = [value] if isinstance(value, str) else value
    valid = (
        isinstance(argv, list)
        and bool(argv)
        and all(isinstance(arg, str) and "\0" not in arg for arg in argv)
        and bool(argv[0].strip())
    )
    if not valid:
        message = (
            "must be a path, or a list of a path and extra arguments, all non-empty strings "
            f"without NUL, got {value!r}"
        )
        issues.append(ConfigIssue(path, message))
        return None
    return tuple(argv)


def resolve_script(script: str, config_dir: str | None) -> Path:
    """Return the absolute script path: a relative one is taken from the config file's
    directory when the parser passed it, else from the current directory."""
    path = Path(script)
    if path.is_absolute():
        return path
    base = Path(config_dir) if config_dir else Path.cwd()
    return base / path


def check_executable(path: Path) -> None:
    """Raise NodeSourceError unless `path` is a file that this process may execute."""
    if not path.exists():
        message = f"script {str(path)!r} not found; set prefs.script to an existing executable"
        raise NodeSourceError(SOURCE_NAME, message)
    if path.is_dir():
        message = f"script {str(path)!r} is a directory; set prefs.script to an executable file"
        raise NodeSourceError(SOURCE_NAME, message)
    if not os.access(path, os.X_OK):
        message = f"script {str(path)!r} is not executable; fix it with: chmod +x {path}"
        raise NodeSourceError(SOURCE_NAME, message)


def run_script(argv: list[str], timeout: float) -> bytes:
    """Run `argv` without a shell and return its standard output.

    The program gets its own process group, so a timeout kills the programs it started too.

    :raises NodeSourceError: when it cannot start, times out, or exits with a non-zero code.
    """
    try:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise NodeSourceError(SOURCE_NAME, f"cannot start {argv!r}: {exc}") from exc
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_process_group(process)
        message = (
            f"{argv!r} timed out after {timeout:g} s and was killed; make the script faster "
            "or raise [bistro] script_timeout"
        )
        raise NodeSourceError(SOURCE_NAME, message) from exc
    if process.returncode != 0:
        raise NodeSourceError(SOURCE_NAME, _exit_message(argv, process.returncode, stderr))
    return stdout


def _kill_process_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.communicate(timeout=DRAIN_AFTER_KILL_SECONDS)
    except subprocess.TimeoutExpired:
        # A descendant that left the process group keeps the pipes open, so stop reading.
        log.warning("Script %d was killed, but its output pipes stayed open", process.pid)
    process.wait()


def _exit_message(argv: list[str], returncode: int, stderr: bytes) -> str:
    if returncode < 0:
        outcome = f"was killed by signal {-returncode}"
    else:
        outcome = f"exited with code {returncode}"
    lines = [line for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    tail = " | ".join(lines[-STDERR_TAIL_LINES:]) or "(no stderr output)"
    return f"{argv!r} {outcome}; last stderr lines: {tail}"


def parse_output(stdout: bytes, parent: str, level: str, settings: Settings) -> list[ChildSpec]:
    """Return the children in `stdout`, one per non-blank line, in output order.

    :param level: the children's level, whose resources a ``capacity`` may name.
    :raises NodeSourceError: on invalid UTF-8, a name that is not a valid node name, or an
        invalid JSON line.
    """
    try:
        text = stdout.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"output for parent {parent!r} is not valid UTF-8 at byte offset {exc.start}"
        raise NodeSourceError(SOURCE_NAME, message) from exc
    children = []
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        try:
            children.append(_parse_line(stripped, level, settings))
        except NodeFieldError as exc:
            message = f"line {number} of the output for parent {parent!r}: {exc}"
            raise NodeSourceError(SOURCE_NAME, message) from exc
    return children


def _parse_line(line: str, level: str, settings: Settings) -> ChildSpec:
    if not line.startswith("{"):
        problem = node_name_problem(line)
        if problem:
            raise NodeFieldError(problem)
        return ChildSpec(line)
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        message = (
            f"a line that starts with '{{' must be a JSON object, but column {exc.colno}: {exc.msg}"
        )
        raise NodeFieldError(message) from exc
    spec = parse_node_object(obj)
    check_capacity_resources(spec.capacity, level, settings)
    return spec


def validate_script_prefs(
    prefs: Mapping[str, Any], settings: Settings, path: str
) -> list[ConfigIssue]:
    return parse_script_prefs(prefs, settings, path)[1]


def fetch_script(forest: Forest, prefs: dict[str, Any], context: FetchContext) -> None:
    """Add the children that the script lists for every node of `parent_level`.

    Replicas share a name, so the script runs once per distinct parent name in one fetch.
    """
    parsed, issues = parse_script_prefs(prefs, context.settings, context.prefs_path)
    raise_for_issues(SOURCE_NAME, issues)
    if parsed is None:
        return
    program = resolve_script(parsed.argv[0], parsed.config_dir)
    check_executable(program)
    child_level = forest.levels[forest.level_index(parsed.parent_level) + 1]
    children_by_parent: dict[str, list[ChildSpec]] = {}
    for parent in forest.nodes(parsed.parent_level):
        if parent.name not in children_by_parent:
            argv = [str(program), *parsed.argv[1:], parent.name]
            stdout = run_script(argv, context.script_timeout)
            children = parse_output(stdout, parent.name, child_level, context.settings)
            children_by_parent[parent.name] = children
            log.debug("Script %s listed %d nodes", argv, len(children))
        add_child_specs(forest, parent, children_by_parent[parent.name], source=SOURCE_NAME)
