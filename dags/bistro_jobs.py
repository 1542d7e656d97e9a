"""One Airflow DAG per job of the configured Bistro config (`[bistro] config_source`, by
default the file `[bistro] config_file`).

A Bistro config runs unchanged: each ``bistro_job->NAME`` becomes the DAG
``bistro_NAME`` (the prefix is `[bistro] dag_id_prefix`).
"""

from __future__ import annotations

from bistro_provider.dag_factory import dags_from_config

globals().update(dags_from_config())
