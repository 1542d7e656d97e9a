"""Run SQL on every database of a PostgreSQL fleet as a Bistro operator job.

The job ``sql_per_database`` is defined here (``job_config=``), not in the Bistro config,
which provides the levels ``host`` and ``db``, their nodes and their limits. Each task runs
``SQLExecuteQueryOperator`` from apache-airflow-providers-common-sql on one node of the
``db`` level. The connection id is the name of the task's host node, and the database is
the name of its db node. Each host therefore needs an Airflow connection of its name, for
example ``AIRFLOW_CONN_PG_A=postgresql://postgres@127.0.0.1:5432/postgres`` for the host
node ``pg_a``.

The statements record the run in the table ``bistro_example_marker`` of every database.

The DAG is built only when the environment variable ``BISTRO_EXAMPLE_SQL_CONFIG`` names
the Bistro config to use (a path, ``variable:NAME`` or ``plugin:NAME``). Without it this
file defines nothing, so it can stay in any dags folder.
"""

from __future__ import annotations

import os

CONFIG_ENV = "BISTRO_EXAMPLE_SQL_CONFIG"
JOB = "sql_per_database"

STATEMENTS = [
    (
        "CREATE TABLE IF NOT EXISTS bistro_example_marker "
        "(job text, host text, db text, recorded_at timestamptz DEFAULT now())"
    ),
    "INSERT INTO bistro_example_marker (job, host, db) VALUES (%(job)s, %(host)s, %(db)s)",
]


def build_dag(location: str):
    """Return the job's DAG, reading the Bistro config at `location`."""
    from airflow.providers.common.sql.operators.sql import SQLExecuteQueryOperator

    from bistro_provider.dag_factory import bistro_job_dag

    return bistro_job_dag(
        JOB,
        config_source=location,
        operator=SQLExecuteQueryOperator,
        operator_kwargs={
            "conn_id": "{{ bistro.ancestor('host') }}",
            "database": "{{ bistro.path_by_level.db }}",
            "sql": STATEMENTS,
            "parameters": {
                "job": "{{ bistro.job }}",
                "host": "{{ bistro.ancestor('host') }}",
                "db": "{{ bistro.node }}",
            },
        },
        job_config={"owner": "dba-team", "level_for_tasks": "db", "backoff": [5, 10, "fail"]},
    )


if os.environ.get(CONFIG_ENV):
    dag = build_dag(os.environ[CONFIG_ENV])
