"""Build one Airflow DAG per Bistro job: a node snapshot, then one mapped task per node."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from airflow.sdk import DAG

from bistro_provider.core.config import load_config
from bistro_provider.operators.job import (
    SNAPSHOT_TASK_ID,
    BistroNodeSnapshotOperator,
    BistroTaskOperator,
)
from bistro_provider.options import BistroOptions

log = logging.getLogger(__name__)

TASK_ID = "run"


def bistro_job_dag(
    job: str,
    *,
    config_file: str | None = None,
    dag_id: str | None = None,
    python_callable: Callable[..., Any] | None = None,
    command_timeout: float | None = None,
    options: BistroOptions | None = None,
    **dag_kwargs: Any,
) -> DAG:
    """Return the DAG that runs Bistro job `job` once on every task node.

    :param job: the job's name in the config (``bistro_job->NAME``).
    :param config_file: the Bistro config; defaults to `[bistro] config_file`.
    :param dag_id: defaults to `[bistro] dag_id_prefix` followed by the job name.
    :param python_callable: run this instead of the job's `command`, as
        ``python_callable(node, argument)``.
    :param dag_kwargs: passed to `DAG`, for example `schedule`.
    """
    options = options or BistroOptions.from_airflow()
    config_file = config_file or options.config_file
    if not config_file:
        raise ValueError(
            "no Bistro config file: pass config_file= or set [bistro] config_file "
            "(AIRFLOW__BISTRO__CONFIG_FILE)"
        )
    dag_kwargs.setdefault("schedule", None)
    dag_kwargs.setdefault("max_active_runs", 1)
    dag_kwargs.setdefault("max_active_tasks", options.max_active_tasks_per_job)
    dag_kwargs.setdefault("tags", ["bistro"])
    dag_kwargs.setdefault("doc_md", f"Bistro job `{job}` from `{config_file}`.")
    task_kwargs: dict[str, Any] = {"pool": options.pool}
    if options.task_executor:
        task_kwargs["executor"] = options.task_executor
    with DAG(dag_id or f"{options.dag_id_prefix}{job}", **dag_kwargs) as dag:
        snapshot = BistroNodeSnapshotOperator(
            task_id=SNAPSHOT_TASK_ID,
            job=job,
            config_file=config_file,
            script_timeout=options.script_timeout,
            **task_kwargs,
        )
        BistroTaskOperator.partial(
            task_id=TASK_ID,
            job=job,
            config_file=config_file,
            python_callable=python_callable,
            command_timeout=command_timeout,
            map_index_template="{{ task.node }}",
            executor_config={"bistro": {"job": job, "snapshot_task": SNAPSHOT_TASK_ID}},
            retries=0,
            **task_kwargs,
        ).expand(node=snapshot.output)
    return dag


def dags_from_config(config_file: str | None = None) -> dict[str, DAG]:
    """Return a DAG for every job of the Bistro config, keyed by DAG id.

    Invalid jobs get a DAG too: its snapshot task fails with the job's config errors, so
    the problem shows in the UI instead of the job silently disappearing.

    :raises ConfigError: when `bistro_settings` is invalid; the DAG file then shows an
        import error that lists every problem.
    """
    options = BistroOptions.from_airflow()
    config_file = config_file or options.config_file
    if not config_file:
        log.warning("[bistro] config_file is not set; no Bistro job DAGs are created")
        return {}
    config = load_config(config_file)
    dags = {}
    for name in config.jobs:
        dag = bistro_job_dag(name, config_file=config_file, options=options)
        dags[dag.dag_id] = dag
    return dags
