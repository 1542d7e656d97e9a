"""Parts of a job DAG that `bistro_provider.dag_factory` assembles: the per-node task, the
config arguments of its operators, and the check that a job is defined only once.

A job is defined either in the config (``bistro_job->NAME``) or in a DAG file
(``bistro_job_dag(NAME, job_config={...})``), never in both, because the two definitions
could disagree about resources and backoff while sharing one status history.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from bistro_provider.config_store import load_config_at
from bistro_provider.core.config_sources import SourceLocation
from bistro_provider.operators.job import BistroTaskOperator

_PACKAGE_DIR = Path(__file__).resolve().parent


class JobDefinedTwiceError(ValueError):
    """A DAG file defines a job (``job_config=``) that the config defines too."""


def source_kwargs(location: str) -> dict[str, Any]:
    """Return the operators' config arguments: ``config_file`` for a file, else both."""
    parsed = SourceLocation.parse(location)
    if parsed.kind == "file":
        return {"config_file": parsed.name}
    return {"config_file": "", "config_source": str(parsed)}


def caller_dag_file() -> str:
    """Return the first file on the call stack outside this package: the DAG file."""
    frame = inspect.currentframe()
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        if path.is_absolute() and _PACKAGE_DIR not in path.resolve().parents:
            return str(path)
        frame = frame.f_back
    return "<unknown DAG file>"


def check_defined_once(job: str, location: str, dag_file: str) -> None:
    """Raise `JobDefinedTwiceError` when the config at `location` also defines `job`.

    :raises ConfigError: when the config cannot be loaded.
    """
    config = load_config_at(location)
    if job in config.jobs:
        raise JobDefinedTwiceError(
            f"job {job!r} is defined twice: with job_config= in the DAG file {dag_file} and "
            f"as bistro_job->{job} in the config {location}. Remove one definition: drop "
            "job_config= to run the config's job, or give the Python-defined job another name"
        )


def check_task_kind(
    python_callable: Callable[..., Any] | None,
    operator: type[BaseOperator] | None,
    operator_kwargs: dict[str, Any] | None,
) -> None:
    """Reject combinations of a callable, an operator and its kwargs that cannot work."""
    if operator is None:
        if operator_kwargs:
            raise ValueError("operator_kwargs= needs operator=, the operator class to run")
        return
    if python_callable is not None:
        raise ValueError("pass either python_callable= or operator=, not both")
    if not (isinstance(operator, type) and issubclass(operator, BaseOperator)):
        raise TypeError(f"operator= must be an Airflow operator class, got {operator!r}")
    if operator_kwargs and "task_id" in operator_kwargs:
        raise ValueError(
            "operator_kwargs must not contain task_id: each node's operator gets the task's "
            "own id plus '__operator'"
        )


def per_node_task(
    *,
    operator: type[BaseOperator] | None,
    operator_kwargs: dict[str, Any] | None,
    python_callable: Callable[..., Any] | None,
    command_timeout: float | None,
    common: dict[str, Any],
) -> Any:
    """Return the partial of the mapped per-node task, ready for ``.expand(node=...)``.

    :param common: arguments both kinds of task take: task_id, job, config, marker, pool...
    """
    if operator is None:
        return BistroTaskOperator.partial(
            python_callable=python_callable, command_timeout=command_timeout, **common
        )
    from bistro_provider.operators.wrapped import BistroOperatorTask

    return BistroOperatorTask.partial(
        operator=operator, operator_kwargs=dict(operator_kwargs or {}), **common
    )
