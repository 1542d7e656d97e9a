"""A sensor that waits until a Bistro node graph changes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from bistro_provider.triggers.node_graph import (
    GRAPH_ERRORS,
    GraphSnapshot,
    NodeGraphChangeTrigger,
    change_payload,
    read_graph,
)


class NodeGraphSensor(BaseSensorOperator):
    """Wait until the node graph (or one level of it) differs from a fingerprint.

    The fingerprint is `since` when given, else the graph's fingerprint when the sensor
    starts. The sensor returns the change payload of the trigger module (``fingerprint``,
    ``previous``, ``nodes``, ``added``, ``removed``, ...), which goes to XCom.

    Deferrable by default: the worker slot is freed and the triggerer polls with
    `NodeGraphChangeTrigger`. With ``deferrable=False`` it pokes every `poke_interval`
    seconds; a poke whose config or node fetch fails is logged and counts as "no change".

    :param config_file: the Bistro config; defaults to `[bistro] config_file`.
    :param level: watch only the nodes of this level; None watches every level.
    :param since: the fingerprint to wait away from (templated).
    :param script_timeout: seconds each node-source script may run.
    :param deferrable: defer to the triggerer instead of poking.
    :raises ValueError: for ``mode="reschedule"`` without `since`, because every reschedule
        starts a new process that would take the current graph as its starting point.
    """

    template_fields = ("config_file", "level", "since")
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        config_file: str | None = None,
        level: str | None = None,
        since: str | None = None,
        script_timeout: float = 60.0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if self.mode == "reschedule" and not deferrable and since is None:
            raise ValueError(
                f"{self.task_id}: mode='reschedule' needs since= (a graph fingerprint), because "
                "each reschedule would start from the current graph; use deferrable=True instead"
            )
        self.config_file = config_file
        self.level = level
        self.since = since
        self.script_timeout = script_timeout
        self.deferrable = deferrable
        self._baseline: GraphSnapshot | None = None

    def _resolved_config_file(self) -> str:
        if self.config_file:
            return self.config_file
        from bistro_provider.options import BistroOptions

        config_file = BistroOptions.from_airflow().config_file
        if not config_file:
            raise ValueError(
                f"{self.task_id}: no Bistro config file: pass config_file= or set "
                "[bistro] config_file (AIRFLOW__BISTRO__CONFIG_FILE)"
            )
        self.config_file = config_file
        return config_file

    def _start_fingerprint(self) -> str:
        """Return `since`, or the current fingerprint; read failures raise only without `since`."""
        try:
            self._baseline = read_graph(
                self._resolved_config_file(), self.level, self.script_timeout
            )
        except GRAPH_ERRORS as exc:
            if not self.since:
                raise
            self.log.warning(
                "Reading the node graph failed; waiting from since=%s: %s", self.since, exc
            )
            return self.since
        return self.since or self._baseline.fingerprint

    def execute(self, context: Any) -> Any:
        since = self._start_fingerprint()
        self.since = since
        baseline = self._baseline
        if baseline is not None and baseline.fingerprint != since:
            self.log.info("Node graph already differs from %s: %s", since, baseline.fingerprint)
            return change_payload(baseline, since, None, self.level)
        if not self.deferrable:
            return super().execute(context)
        self.log.info("Deferring until the node graph differs from %s", since)
        self.defer(
            trigger=NodeGraphChangeTrigger(
                config_file=self._resolved_config_file(),
                since=since,
                level=self.level,
                poll_interval=self.poke_interval,
                script_timeout=self.script_timeout,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Return the trigger's change payload as the task's result."""
        self.log.info(
            "Node graph changed from %s to %s", event.get("previous"), event.get("fingerprint")
        )
        return event

    def poke(self, context: Any) -> bool | PokeReturnValue:
        if not self.since:
            raise ValueError(f"{self.task_id}: poke() requires since=, which execute() sets")
        try:
            current = read_graph(self._resolved_config_file(), self.level, self.script_timeout)
        except GRAPH_ERRORS as exc:
            self.log.warning("Reading the node graph failed, so this poke is no change: %s", exc)
            return False
        if current.fingerprint == self.since:
            return False
        baseline = self._baseline
        names = baseline.names if baseline and baseline.fingerprint == self.since else None
        return PokeReturnValue(True, change_payload(current, self.since, names, self.level))
