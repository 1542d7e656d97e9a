"""Implementations of `airflow bistro` commands; output formats are kept stable for scripts.

Exit status: 0 success, 1 the config or a node source has errors, 2 bad arguments.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any, NoReturn

from bistro_provider.core.config import load_config
from bistro_provider.core.errors import ConfigError, NodeSourceError
from bistro_provider.core.forest import Forest
from bistro_provider.core.model import Config
from bistro_provider.core.resources import Holdings, Ledger, holdings_from_json, level_capacity, task_needs
from bistro_provider.core.scheduler import admit_pass, availability, plan_jobs
from bistro_provider.nodes import fetch_forest


def _config_path(args: Any) -> str:
    if args.config:
        return str(args.config)
    from airflow.configuration import conf

    path = conf.get("bistro", "config_file", fallback="")
    if not path:
        print(
            "error: no config file; pass --config FILE or set [bistro] config_file",
            file=sys.stderr,
        )
        sys.exit(2)
    return str(path)


def _emit(args: Any, payload: Any, text_lines: list[str]) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=False))
    else:
        for line in text_lines:
            print(line)


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


def _load(args: Any) -> Config:
    path = _config_path(args)
    try:
        return load_config(path)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        sys.exit(1)
    except (OSError, ValueError) as exc:
        _fail(str(exc))


def _fetch(config: Config, now: float | None) -> Forest:
    try:
        return fetch_forest(config.settings, now=now if now is not None else time.time())
    except NodeSourceError as exc:
        _fail(str(exc))


def validate(args: Any) -> None:
    path = _config_path(args)
    errors: list[dict[str, str]] = []
    warnings: list[dict[str, str]] = []
    jobs: dict[str, Any] = {}
    try:
        config = load_config(path)
    except ConfigError as exc:
        errors = [{"path": issue.path, "message": issue.message} for issue in exc.issues]
    except (OSError, ValueError) as exc:
        errors = [{"path": path, "message": str(exc)}]
    else:
        errors = [{"path": i.path, "message": i.message} for i in config.job_errors()]
        warnings = [{"path": i.path, "message": i.message} for i in config.warnings]
        jobs = {name: {"can_run": job.can_run, "enabled": job.enabled} for name, job in config.jobs.items()}
    lines = [f"error: {item['path']}: {item['message']}" for item in errors]
    lines += [f"warning: {item['path']}: {item['message']}" for item in warnings]
    lines.append(f"{path}: {'valid' if not errors else f'{len(errors)} error(s)'}")
    payload = {"config": path, "valid": not errors, "errors": errors, "warnings": warnings, "jobs": jobs}
    _emit(args, payload, lines)
    if errors:
        sys.exit(1)


def nodes(args: Any) -> None:
    config = _load(args)
    forest = _fetch(config, args.now)
    items = forest.to_json()
    lines = [
        f"{item['level']:<12} {item['name']:<30} parent={item['parent'] or '-'} "
        f"enabled={str(item['enabled']).lower()} tags={','.join(item['tags']) or '-'}"
        for item in items
    ]
    _emit(args, items, lines)


def _read_running_file(path: str) -> Any:
    """Return the parsed --running file; an unreadable file or invalid JSON exits with 2."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as exc:
        print(f"error: --running {path}: cannot read it as JSON: {exc}", file=sys.stderr)
        sys.exit(2)


def _running_holdings(config: Config, forest: Forest, path: str) -> dict[tuple[str, str], Holdings]:
    entries = _read_running_file(path)
    if not isinstance(entries, list):
        _fail(f"{path}: expected a JSON list of {{job, node, holdings?}} objects")
    running: dict[tuple[str, str], Holdings] = {}
    settings = config.settings
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "job" not in entry or "node" not in entry:
            _fail(f"{path}[{index}]: expected an object with 'job' and 'node'")
        key = (str(entry["job"]), str(entry["node"]))
        if "holdings" in entry:
            try:
                running[key] = holdings_from_json(entry["holdings"])
            except (KeyError, TypeError, ValueError) as exc:
                _fail(
                    f"{path}[{index}].holdings: invalid ({type(exc).__name__}: {exc}); expected "
                    "a list of {level, node, resources} objects"
                )
            continue
        job = config.jobs.get(key[0])
        if job is None:
            _fail(f"{path}[{index}].job: unknown job {key[0]!r}; defined jobs: {', '.join(config.jobs)}")
        level = settings.level_index(job.level_for_tasks or settings.level_for_tasks)
        replicas = forest.replicas(level, key[1])
        if not replicas:
            _fail(f"{path}[{index}].node: node {key[1]!r} is not on level {settings.levels[level]}")
        running[key] = task_needs(settings, job, replicas[0].path_to_root())
    return running


def plan(args: Any) -> None:
    config = _load(args)
    forest = _fetch(config, args.now)
    node_capacity = {
        (config.settings.levels[node.level], node.name): node.capacity for node in forest if node.capacity
    }
    ledger = Ledger(level_capacity(config.settings, node_capacity))
    running = _running_holdings(config, forest, args.running) if args.running else {}
    for key, holdings in running.items():
        ledger.force_acquire(key, holdings)
    before = availability(forest, ledger, config.settings)
    rng = random.Random(args.seed)
    jobs = plan_jobs(config, forest, {}, time.time(), rng, args.job_order, running=set(running))
    result = admit_pass(config.settings, jobs, ledger, rng)
    starts = [
        {
            "job": item.job,
            "node": item.node,
            "path": list(item.path),
            "takes": {name: amounts for (_level, name), amounts in item.holdings.items()},
        }
        for item in result.started
    ]
    payload = {"availability_before": before, "starts": starts}
    lines = [f"{index + 1:>4}. {item['job']} on {item['node']}  takes {item['takes']}" for index, item in enumerate(starts)]
    lines.append(f"{len(starts)} task(s) would start")
    _emit(args, payload, lines)
