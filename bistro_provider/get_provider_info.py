"""Provider metadata that Airflow reads through the `apache_airflow_provider` entry point."""

from __future__ import annotations

from typing import Any

from bistro_provider import __version__


def _option(description: str, type_: str, default: str | None, example: str | None) -> dict[str, Any]:
    return {
        "description": description,
        "version_added": "0.1.0",
        "type": type_,
        "default": default,
        "example": example,
    }


CONFIG_OPTIONS: dict[str, dict[str, Any]] = {
    "config_file": _option(
        "Path of the Bistro config (JSON, or YAML with the same keys), read when "
        "[bistro] config_source is file. The DAG file in dags/ builds one DAG per job from it, "
        "and BistroExecutor admits tasks against it.",
        "string",
        "",
        "/etc/bistro/bistro.json",
    ),
    "config_source": _option(
        "Where the Bistro config is read from: file ([bistro] config_file), variable (the "
        "Airflow Variable named by [bistro] config_variable, holding the config as JSON), or "
        "plugin:NAME (a callable registered under the entry point group "
        "bistro_provider.config_sources that returns the config as text or a dict).",
        "string",
        "file",
        "variable",
    ),
    "config_variable": _option(
        "Name of the Airflow Variable that holds the Bistro config as JSON when "
        "[bistro] config_source is variable.",
        "string",
        "bistro_config",
        "bistro_config",
    ),
    "http_allowed_hosts": _option(
        "Comma-separated host names or IP addresses, besides 127.0.0.1, that "
        "BistroHttpOperator may send requests to. Any other host is rejected before a "
        "connection is opened.",
        "string",
        "",
        "tasks.internal.example,10.0.0.5",
    ),
    "config_update_interval": _option(
        "Seconds between checks of the config source: the file's modification time, or the "
        "content of a Variable or plugin source. A changed config is re-read, and a broken one "
        "keeps the last good config in use.",
        "float",
        "10",
        "30",
    ),
    "nodes_update_interval": _option(
        "Seconds between node fetches in the executor (all node sources, in order).",
        "float",
        "60",
        "300",
    ),
    "nodes_retry_interval": _option(
        "Seconds before the next node fetch after a failed one.", "float", "15", "30"
    ),
    "script_timeout": _option(
        "Seconds a node-source script may run for one parent node before it is killed.",
        "float",
        "60",
        "120",
    ),
    "worker_processes": _option(
        "Worker processes of BistroExecutor: the number of tasks that run at once on this "
        "machine. Independent of [core] parallelism, which only bounds dispatched tasks.",
        "integer",
        "8",
        "16",
    ),
    "prefetch_tasks": _option(
        "Admitted tasks that BistroExecutor hands to its worker processes beyond those "
        "free, so that a process that finishes a task starts the next one at once instead "
        "of waiting for the next scheduler loop (up to [scheduler] scheduler_idle_sleep_time "
        "when the scheduler is idle). A prefetched task holds its resources while it waits "
        "for a process. 0 turns prefetching off. Tasks of DAGs without a Bistro job are not "
        "capped: they go to the worker processes as LocalExecutor sends them.",
        "integer",
        "8",
        "0",
    ),
    "max_waiting_tasks": _option(
        "Task instances that may wait in BistroExecutor for resources at once. Waiting tasks "
        "are QUEUED in Airflow but do not count against [core] parallelism.",
        "integer",
        "10000",
        "50000",
    ),
    "pool": _option(
        "Pool of Bistro job tasks. BistroExecutor creates it with unlimited slots on start, "
        "because waiting tasks are QUEUED and would otherwise fill default_pool.",
        "string",
        "bistro_pool",
        "bistro_pool",
    ),
    "dag_id_prefix": _option(
        "Prefix of the DAG id built for each Bistro job.", "string", "bistro_", "nightly_"
    ),
    "max_active_tasks_per_job": _option(
        "max_active_tasks of each job DAG. Leave it above the largest task level so that the "
        "scheduler hands every task to the executor, which does the real admission.",
        "integer",
        "100000",
        "200000",
    ),
    "task_executor": _option(
        "Executor name set on job tasks (executor=...) when BistroExecutor is not the default "
        "executor, for example BistroExecutor. Empty uses the default executor.",
        "string",
        "",
        "BistroExecutor",
    ),
    "grant_check_interval": _option(
        "Seconds between checks that release grants of tasks admitted by an earlier scheduler "
        "process and no longer running, and reload live capacity overrides.",
        "float",
        "30",
        "10",
    ),
    "state_sync_interval": _option(
        "Seconds between reloads of live capacity overrides and publications of the "
        "executor's view (forest, waiting tasks, errors) for the API, CLI and UI.",
        "float",
        "2",
        "5",
    ),
    "full_pass_interval": _option(
        "An admission pass runs whenever tasks arrive, tasks end, or the config, nodes or "
        "capacity change. A pass over every waiting task runs at least this often, in "
        "seconds, which also catches status changes made outside the executor (a forgiven "
        "node, an expired backoff).",
        "float",
        "5",
        "10",
    ),
    "incremental_admission": _option(
        "After a task ends or a task arrives, look only at the waiting tasks that can start "
        "because of it: those whose path passes through a node the ended task freed, those "
        "that waited for a worker when a worker was freed, and the new ones. False tries every "
        "waiting task on every pass.",
        "boolean",
        "True",
        "False",
    ),
    "max_node_deletion_fraction": _option(
        "A node refresh that would remove more than this fraction of any level's nodes is "
        "held back and reported, and the last good node list stays in use; a level that "
        "comes back empty is always held back. 1.0 accepts any shrink except to empty.",
        "float",
        "0.5",
        "0.8",
    ),
    "worker_refresh_interval": _option(
        "Seconds between polls of the Celery workers and their queues (BistroCeleryExecutor).",
        "float",
        "5",
        "10",
    ),
    "worker_lost_after": _option(
        "Seconds without an answer after which a Celery worker is treated as lost: its node "
        "leaves the forest and the resources of its tasks are released.",
        "float",
        "30",
        "60",
    ),
}


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-provider-bistro",
        "name": "Bistro",
        "description": "Bistro resource-forest scheduling for Apache Airflow: per-node resource "
        "limits along the whole path of every task, Bistro's scheduling policies and node sources.",
        "versions": [__version__],
        "executors": [
            "bistro_provider.executors.bistro_executor.BistroExecutor",
            "bistro_provider.executors.celery_executor.BistroCeleryExecutor",
        ],
        "cli": ["bistro_provider.cli.definition.get_bistro_cli_commands"],
        "db-managers": ["bistro_provider.store.db_manager.BistroDBManager"],
        "triggers": [
            {
                "integration-name": "Bistro",
                "python-modules": ["bistro_provider.triggers.node_graph"],
            }
        ],
        "config": {
            "bistro": {
                "description": "Bistro resource-forest scheduling.",
                "options": CONFIG_OPTIONS,
            }
        },
    }
