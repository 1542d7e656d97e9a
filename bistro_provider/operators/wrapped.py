"""Run any Airflow operator as the per-node task of a Bistro job.

``bistro_job_dag(job, operator=SomeOperator, operator_kwargs={...})`` maps
`BistroOperatorTask` over the job's nodes, under the same admission as a command job. At
run time each task builds ``SomeOperator(**kwargs)`` for its node and calls its
``execute``:

* a kwarg named in the operator's ``template_fields`` is passed as given, and the operator
  renders it itself, as Airflow renders any task (template files such as ``x.sql``
  included);
* every other kwarg is rendered by this task before the operator is built, because Airflow
  never renders those, and a connection id chosen by node is the common case.

Both see the task's own template context plus ``bistro`` (a `BistroTemplateValues`), so
``{{ bistro.node }}``, ``{{ bistro.ancestor('host') }}`` and
``{{ bistro.path_by_level.host }}`` work in any kwarg.

The operator's outcome becomes the task's Bistro status: returning is ``done``;
`BistroIncomplete` and `BistroFailed` report ``incomplete`` (or ``incomplete_backoff``)
and ``failed``; any other exception is ``error_backoff``. `BistroNodeTask` then maps the
status to Airflow.
"""

from __future__ import annotations

import contextvars
import socket
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import TaskDeferred

from bistro_provider.core.status import TaskStatus
from bistro_provider.exceptions import BistroTaskResult
from bistro_provider.operators.node_task import BistroNodeTask, TaskResult

OPERATOR_TASK_SUFFIX = "__operator"


@dataclass(frozen=True)
class BistroTemplateValues:
    """The ``bistro`` template variable of an operator job's task.

    :param path: node names from the instance node down to the task's node.
    :param levels: level names, top first, aligned with `path`.
    :param config: the job's ``config`` object.
    :param resources_by_node: node name to the amounts granted to the task on that node.
    :param prev_status: the task's previous Bistro status as JSON, or None.
    """

    job: str
    node: str
    path: list[str]
    levels: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    resources_by_node: dict[str, dict[str, int]] = field(default_factory=dict)
    prev_status: dict[str, Any] | None = None
    worker_host: str = ""

    @property
    def path_by_level(self) -> dict[str, str]:
        """Level name to the node of that level on the path."""
        return dict(zip(self.levels, self.path, strict=False))

    @property
    def level(self) -> str:
        """The level of the task's node."""
        return self.levels[len(self.path) - 1] if 0 < len(self.path) <= len(self.levels) else ""

    def ancestor(self, level: str) -> str:
        """Return the node of `level` on the path; the task's own node for its own level.

        :raises ValueError: naming the levels on the path when `level` is not one of them.
        """
        by_level = self.path_by_level
        if level not in by_level:
            raise ValueError(
                f"level {level!r} is not on the path of node {self.node!r}; levels on the "
                f"path: {', '.join(by_level) or 'none'}"
            )
        return by_level[level]


def template_values(job: str, admission: dict[str, Any], levels: list[str]) -> BistroTemplateValues:
    """Build the ``bistro`` template variable from a task's admission record."""
    path = [str(name) for name in admission.get("path") or []]
    return BistroTemplateValues(
        job=job,
        node=path[-1] if path else "",
        path=path,
        levels=list(levels),
        config=dict(admission.get("config") or {}),
        resources_by_node=dict(admission.get("resources_by_node") or {}),
        prev_status=admission.get("prev_status"),
        worker_host=str(admission.get("worker_host") or socket.gethostname()),
    )


def run_execute(operator: BaseOperator, context: dict[str, Any]) -> Any:
    """Call ``operator.execute(context)`` as Airflow's task runner calls a task's own.

    Airflow 3.3's task runner marks the running operator in the ``ExecutorSafeguard``
    context variable, and an ``execute`` called without that mark logs that it "cannot be
    called outside of the Task Runner". Marking the nested operator the same way, in a
    copy of the context, keeps every task log free of that false warning.
    """
    from airflow.sdk.bases.operator import ExecutorSafeguard

    tracker = getattr(ExecutorSafeguard, "tracker", None)
    if tracker is None:
        return operator.execute(context)
    copied = contextvars.copy_context()
    copied.run(tracker.set, operator)
    return copied.run(operator.execute, context)


class BistroOperatorTask(BistroNodeTask):
    """Run `operator` on one node of a Bistro job; see the module docstring.

    Parameters other than these two are those of `BistroNodeTask`.

    :param operator: the Airflow operator class to run, built once per task with
        ``task_id`` set to this task's id plus ``__operator`` and no DAG.
    :param operator_kwargs: keyword arguments of `operator`, templated.
    """

    ui_color = "#fde8d7"

    def __init__(
        self,
        *,
        operator: type[BaseOperator],
        operator_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.operator = operator
        self.operator_kwargs = dict(operator_kwargs or {})
        self._running: BaseOperator | None = None
        self._result: Any = None

    def _task_result(self, admission: dict[str, Any], context: Any) -> TaskResult:
        self._result = None
        values = template_values(self.job, admission, self._levels(admission))
        task_context = {**context, "bistro": values}
        try:
            self._running = self.build_operator(task_context)
            self._result = run_execute(self._running, task_context)
        except BistroTaskResult as exc:
            self.log.info("%s on %s reported %s: %s", self.job, self.node, exc.kind, exc)
            return exc.kind, exc.status_data()
        except TaskDeferred:
            message = (
                f"{self.operator.__name__} deferred itself, which a Bistro task cannot "
                "do because it must hold its resources until it ends; pass deferrable=False"
            )
            self.log.error("%s", message)
            return "error_backoff", {"exception": message}
        except Exception as exc:
            self.log.exception("%s raised on node %s", self.operator.__name__, self.node)
            return "error_backoff", {"exception": repr(exc)}
        finally:
            self._running = None
        return "done", None

    def build_operator(self, context: dict[str, Any]) -> BaseOperator:
        """Render the non-template kwargs, build the operator, and let it render the rest."""
        env = self.get_template_env()
        own_fields = set(getattr(self.operator, "template_fields", ()))
        kwargs = {
            name: value if name in own_fields else self.render_template(value, context, env)
            for name, value in self.operator_kwargs.items()
        }
        operator = self.operator(task_id=self.task_id + OPERATOR_TASK_SUFFIX, **kwargs)
        operator.render_template_fields(context, jinja_env=env)
        return operator

    def _levels(self, admission: dict[str, Any]) -> list[str]:
        if admission.get("levels"):
            return [str(level) for level in admission["levels"]]
        # An admission recorded by an executor that did not write the levels yet.
        from bistro_provider.config_store import load_config_at

        return list(load_config_at(self.config_location).settings.levels)

    def _finish(self, status: TaskStatus) -> Any:
        value = super()._finish(status)
        return self._result if status.kind == "done" else value

    def on_kill(self) -> None:
        """Pass Airflow's stop on to the operator that is running."""
        if self._running is not None:
            self._running.on_kill()
