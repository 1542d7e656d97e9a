"""Build one Airflow DAG per Bistro job: a node snapshot, then one mapped task per node.

A continuous job (``"airflow": {"continuous": true}`` in its config) gets a DAG scheduled on
an asset whose watcher polls the job's task level: each change of the node graph queues a
new run, and runs never overlap.

The per-node task runs the job's command, a Python callable, or any Airflow operator
(``operator=``, see `bistro_provider.operators.wrapped`). A DAG file may also define a job
that the config does not have (``job_config=``); the config still provides the settings.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

from airflow.sdk import DAG, Asset, AssetWatcher, BaseOperator

from bistro_provider.config_store import configured_location, load_config_at
from bistro_provider.core.config import load_config, parse_job_definition
from bistro_provider.core.config_sources import SourceLocation
from bistro_provider.job_dag_parts import (
    JobDefinedTwiceError,
    caller_dag_file,
    check_defined_once,
    check_task_kind,
    per_node_task,
    source_kwargs,
)
from bistro_provider.operators.job import SNAPSHOT_TASK_ID, BistroNodeSnapshotOperator
from bistro_provider.options import BistroOptions
from bistro_provider.triggers.node_graph import NodeGraphTrigger

log = logging.getLogger(__name__)

TASK_ID = "run"

__all__ = ["TASK_ID", "JobDefinedTwiceError", "bistro_job_dag", "dags_from_config"]


def bistro_job_dag(
    job: str,
    *,
    config_file: str | None = None,
    dag_id: str | None = None,
    python_callable: Callable[..., Any] | None = None,
    command_timeout: float | None = None,
    options: BistroOptions | None = None,
    continuous: bool = False,
    poll_interval: float = 60.0,
    level: str | None = None,
    operator: type[BaseOperator] | None = None,
    operator_kwargs: dict[str, Any] | None = None,
    job_config: dict[str, Any] | None = None,
    config_source: str | None = None,
    **dag_kwargs: Any,
) -> DAG:
    """Return the DAG that runs Bistro job `job` once on every task node.

    :param job: the job's name in the config (``bistro_job->NAME``), or of the job that
        `job_config` defines.
    :param config_file: the Bistro config; defaults to the configured source
        (`[bistro] config_source`, `[bistro] config_file`).
    :param config_source: a config location (a path, ``variable:NAME`` or ``plugin:NAME``)
        used instead of `config_file`.
    :param dag_id: defaults to `[bistro] dag_id_prefix` followed by the job name.
    :param python_callable: run this instead of the job's `command`, as
        ``python_callable(node, argument)``.
    :param command_timeout: seconds after which a task's command is killed and the task
        ends as ``error_backoff``; `dags_from_config` passes the job's
        ``airflow.task_timeout_sec``.
    :param continuous: schedule the DAG on the job's node-graph asset (`node_graph_asset`),
        so every change of the nodes on the job's task level starts a run.
    :param poll_interval: seconds between node-graph polls of a continuous job.
    :param level: the level a continuous job watches; defaults to the job's level_for_tasks,
        read from the config.
    :param operator: an Airflow operator class to run on every node instead of the job's
        command, under the same admission.
    :param operator_kwargs: the operator's keyword arguments, rendered per node with the
        ``bistro`` template variable (``{{ bistro.node }}``, ``{{ bistro.ancestor('host') }}``).
    :param job_config: defines the job here, as its ``bistro_job->NAME`` object would in
        the config; the config must not define a job of the same name.
    :param dag_kwargs: passed to `DAG`, for example `schedule` (not with `continuous`).
    :raises ValueError: when no config is known, `continuous` comes with `schedule`, or the
        task arguments do not fit together.
    :raises JobDefinedTwiceError: when `job_config` defines a job that the config has too.
    """
    options = options or BistroOptions.from_airflow()
    location = config_source or config_file or configured_location(options)
    if not location:
        raise ValueError(
            "no Bistro config: pass config_file= or set [bistro] config_file "
            "(AIRFLOW__BISTRO__CONFIG_FILE), or set [bistro] config_source"
        )
    check_task_kind(python_callable, operator, operator_kwargs)
    marker: dict[str, Any] = {"job": job, "snapshot_task": SNAPSHOT_TASK_ID}
    defined: dict[str, Any] = {}
    if job_config is not None:
        dag_file = caller_dag_file()
        check_defined_once(job, location, dag_file)
        marker.update({"job_config": job_config, "defined_in": dag_file})
        defined["job_config"] = job_config
    config_file = SourceLocation.parse(location).name
    if continuous:
        _check_file_source(job, location)
        level = level or _task_level(config_file, job, job_config)
        dag_kwargs["schedule"] = _continuous_schedule(
            job, config_file, dag_kwargs.get("schedule"), poll_interval, level, options
        )
    dag_kwargs.setdefault("schedule", None)
    # One run at a time. Asset events that arrive during a run stay queued, and Airflow 3.3
    # then starts one run for all of them together.
    # A continuous job's next run starts while the last one still runs, so that a node
    # that appears gets its task at once; the executor never runs one (job, node) twice at
    # the same time and skips nodes a continuous job has already done.
    dag_kwargs.setdefault("max_active_runs", 4 if continuous else 1)
    dag_kwargs.setdefault("max_active_tasks", options.max_active_tasks_per_job)
    dag_kwargs.setdefault("tags", ["bistro"])
    dag_kwargs.setdefault("doc_md", f"Bistro job `{job}` from `{location}`.")
    task_kwargs: dict[str, Any] = {"pool": options.pool, **source_kwargs(location), **defined}
    if options.task_executor:
        task_kwargs["executor"] = options.task_executor
    with DAG(dag_id or f"{options.dag_id_prefix}{job}", **dag_kwargs) as dag:
        snapshot = BistroNodeSnapshotOperator(
            task_id=SNAPSHOT_TASK_ID,
            job=job,
            script_timeout=options.script_timeout,
            **task_kwargs,
        )
        per_node_task(
            operator=operator,
            operator_kwargs=operator_kwargs,
            python_callable=python_callable,
            command_timeout=command_timeout,
            common={
                "task_id": TASK_ID,
                "job": job,
                "map_index_template": "{{ task.node }}",
                "executor_config": {"bistro": marker},
                "retries": 0,
                **task_kwargs,
            },
        ).expand(node=snapshot.output)
    return dag


def _check_file_source(job: str, location: str) -> None:
    if SourceLocation.parse(location).kind != "file":
        # NOTE: the node-graph trigger reads its config from a file; other sources would
        # need the triggerer to read Variables and plugins too.
        raise ValueError(
            f"job {job!r} is continuous, which needs a config file, but its config is "
            f"{location}; set [bistro] config_source to file or set airflow.continuous to false"
        )


def node_graph_asset(
    job: str, *, config_file: str, level: str, poll_interval: float, script_timeout: float
) -> Asset:
    """Return the asset of a continuous job, watched by a `NodeGraphTrigger` on `level`."""
    trigger = NodeGraphTrigger(
        config_file=config_file,
        level=level,
        poll_interval=poll_interval,
        script_timeout=script_timeout,
        job=job,
    )
    watcher = AssetWatcher(name=f"bistro-nodes-{job}-watcher", trigger=trigger)
    uri = f"bistro://{urllib.parse.quote(job, safe='')}/nodes"
    return Asset(name=f"bistro-nodes-{job}", uri=uri, watchers=[watcher])


def _continuous_schedule(
    job: str,
    config_file: str,
    schedule: Any,
    poll_interval: float,
    level: str | None,
    options: BistroOptions,
) -> list[Asset]:
    if schedule is not None:
        raise ValueError(
            f"job {job!r} is continuous, so its DAG runs on node-graph changes; remove "
            f"schedule={schedule!r} or set airflow.continuous to false"
        )
    asset = node_graph_asset(
        job,
        config_file=config_file,
        level=level or _task_level(config_file, job),
        poll_interval=poll_interval,
        script_timeout=options.script_timeout,
    )
    return [asset]


def _task_level(config_file: str, job: str, job_config: dict[str, Any] | None = None) -> str:
    config = load_config(config_file)
    parsed = config.jobs.get(job)
    if job_config is not None:
        parsed, _warnings = parse_job_definition(config, job, job_config)
    if parsed is None:
        raise ValueError(
            f"job {job!r} is not in {config_file}; defined jobs: "
            f"{', '.join(sorted(config.jobs)) or 'none'}"
        )
    return parsed.level_for_tasks or config.settings.level_for_tasks


def dags_from_config(
    config_file: str | None = None, *, config_source: str | None = None
) -> dict[str, DAG]:
    """Return a DAG for every job of the Bistro config, keyed by DAG id.

    Invalid jobs get a DAG too: its snapshot task fails with the job's config errors, so
    the problem shows in the UI instead of the job silently disappearing.

    :param config_file: the config file; defaults to the configured source.
    :param config_source: a config location (``variable:NAME``, ``plugin:NAME``) read
        instead of `config_file`.
    :raises ConfigError: when `bistro_settings` is invalid; the DAG file then shows an
        import error that lists every problem.
    """
    options = BistroOptions.from_airflow()
    location = config_source or config_file or configured_location(options)
    if not location:
        log.warning("No Bistro config is set ([bistro] config_file); no job DAGs are created")
        return {}
    config = load_config_at(location)
    dags = {}
    for name, job in config.jobs.items():
        dag = bistro_job_dag(
            name,
            config_source=location,
            options=options,
            command_timeout=job.task_timeout_sec,
            continuous=job.continuous,
            poll_interval=job.poll_interval,
            level=job.level_for_tasks or config.settings.level_for_tasks,
        )
        dags[dag.dag_id] = dag
    return dags
