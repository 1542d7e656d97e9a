"""The provider's `[bistro]` options, read from Airflow's config when first needed.

Every option is declared with its description, type and default in `get_provider_info`;
the defaults below repeat those so that a missing declaration cannot change behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass

SECTION = "bistro"


@dataclass(frozen=True)
class BistroOptions:
    """Values of the `[bistro]` section."""

    config_file: str = ""
    config_source: str = "file"
    config_variable: str = "bistro_config"
    http_allowed_hosts: str = ""
    config_update_interval: float = 10.0
    nodes_update_interval: float = 60.0
    nodes_retry_interval: float = 15.0
    script_timeout: float = 60.0
    worker_processes: int = 8
    prefetch_tasks: int = 8
    max_waiting_tasks: int = 10000
    pool: str = "bistro_pool"
    dag_id_prefix: str = "bistro_"
    max_active_tasks_per_job: int = 100000
    task_executor: str = ""
    grant_check_interval: float = 30.0
    state_sync_interval: float = 2.0
    full_pass_interval: float = 5.0
    incremental_admission: bool = True
    max_node_deletion_fraction: float = 0.5
    worker_refresh_interval: float = 5.0
    worker_lost_after: float = 30.0

    @classmethod
    def from_airflow(cls) -> BistroOptions:
        """Read the options from Airflow's config (files and AIRFLOW__BISTRO__* variables)."""
        from airflow.configuration import conf

        def get_float(name: str, default: float) -> float:
            return conf.getfloat(SECTION, name, fallback=default)

        def get_int(name: str, default: int) -> int:
            return conf.getint(SECTION, name, fallback=default)

        def get_bool(name: str, default: bool) -> bool:
            return conf.getboolean(SECTION, name, fallback=default)

        def get_str(name: str, default: str) -> str:
            return conf.get(SECTION, name, fallback=default) or default

        return cls(
            config_file=get_str("config_file", cls.config_file),
            config_source=get_str("config_source", cls.config_source),
            config_variable=get_str("config_variable", cls.config_variable),
            http_allowed_hosts=get_str("http_allowed_hosts", cls.http_allowed_hosts),
            config_update_interval=get_float("config_update_interval", cls.config_update_interval),
            nodes_update_interval=get_float("nodes_update_interval", cls.nodes_update_interval),
            nodes_retry_interval=get_float("nodes_retry_interval", cls.nodes_retry_interval),
            script_timeout=get_float("script_timeout", cls.script_timeout),
            worker_processes=get_int("worker_processes", cls.worker_processes),
            prefetch_tasks=max(0, get_int("prefetch_tasks", cls.prefetch_tasks)),
            max_waiting_tasks=get_int("max_waiting_tasks", cls.max_waiting_tasks),
            pool=get_str("pool", cls.pool),
            dag_id_prefix=conf.get(SECTION, "dag_id_prefix", fallback=cls.dag_id_prefix),
            max_active_tasks_per_job=get_int(
                "max_active_tasks_per_job", cls.max_active_tasks_per_job
            ),
            task_executor=get_str("task_executor", cls.task_executor),
            grant_check_interval=get_float("grant_check_interval", cls.grant_check_interval),
            state_sync_interval=get_float("state_sync_interval", cls.state_sync_interval),
            full_pass_interval=get_float("full_pass_interval", cls.full_pass_interval),
            incremental_admission=get_bool("incremental_admission", cls.incremental_admission),
            max_node_deletion_fraction=get_float(
                "max_node_deletion_fraction", cls.max_node_deletion_fraction
            ),
            worker_refresh_interval=get_float(
                "worker_refresh_interval", cls.worker_refresh_interval
            ),
            worker_lost_after=get_float("worker_lost_after", cls.worker_lost_after),
        )
