"""Tasks as RPC requests: an Airflow DAG that POSTs once per node to an HTTP service.

The job ``rpc_per_node`` is defined here (``job_config=``). The Bistro config provides the
levels ``host`` and ``node`` and a host limit, so the service never gets more requests for
one host at once than that limit. Each task runs `BistroHttpOperator`, which POSTs
``{"job", "host", "node"}`` as JSON to ``<URL>/task/<node>``. The service answers with an
empty body or ``{"status": "done"}``, or with another Bistro status such as
``{"status": "incomplete"}``.

Airflow's DAG discovery safe mode reads only files that mention both "airflow" and "dag",
which this docstring does. The DAG is built only when both environment variables are set:
``BISTRO_EXAMPLE_RPC_CONFIG`` names the Bistro config (a path, ``variable:NAME`` or
``plugin:NAME``), and ``BISTRO_EXAMPLE_RPC_URL`` is the service's base URL, for example
``http://127.0.0.1:8000``. Without them this file defines nothing.
"""

from __future__ import annotations

import os

CONFIG_ENV = "BISTRO_EXAMPLE_RPC_CONFIG"
URL_ENV = "BISTRO_EXAMPLE_RPC_URL"
JOB = "rpc_per_node"


def build_dag(location: str, base_url: str):
    """Return the job's DAG, reading the Bistro config at `location`."""
    from bistro_provider.dag_factory import bistro_job_dag
    from bistro_provider.operators.http import BistroHttpOperator

    return bistro_job_dag(
        JOB,
        config_source=location,
        operator=BistroHttpOperator,
        operator_kwargs={
            "url": base_url.rstrip("/") + "/task/{{ bistro.node | urlencode }}",
            "body": {
                "job": "{{ bistro.job }}",
                "host": "{{ bistro.ancestor('host') }}",
                "node": "{{ bistro.node }}",
            },
            "timeout": 30,
        },
        job_config={"owner": "rpc-team", "level_for_tasks": "node", "backoff": [5, 10, "fail"]},
    )


if os.environ.get(CONFIG_ENV) and os.environ.get(URL_ENV):
    dag = build_dag(os.environ[CONFIG_ENV], os.environ[URL_ENV])
