"""Exceptions that an operator run by a Bistro operator job raises to report its status.

`BistroOperatorTask` runs an ordinary Airflow operator on one node. Returning from
``execute`` means ``done`` and any other exception means ``error_backoff``. These two name
the other results of Bistro's task protocol, so an operator can report them explicitly.
Outside a Bistro job they are ordinary exceptions, and the task fails.
"""

from __future__ import annotations

from typing import Any


class BistroTaskResult(Exception):
    """Base class of the exceptions that report a Bistro status other than done or error.

    :param message: why the task ended this way; stored in the status data as ``message``.
    :param data: more JSON data stored with the status, which the next try reads as
        ``prev_status.data``.
    """

    kind = ""

    def __init__(self, message: str = "", *, data: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.data = dict(data) if data else {}

    def status_data(self) -> dict[str, Any] | None:
        """Return the data to store with the status: `data` plus the message, or None."""
        data = dict(self.data)
        if self.message:
            data.setdefault("message", self.message)
        return data or None


class BistroIncomplete(BistroTaskResult):
    """The task made progress but is not finished; Bistro runs it again.

    :param backoff: False reschedules the task at once (``incomplete``). True waits the
        job's next backoff delay first (``incomplete_backoff``), which never fails the task.
    """

    def __init__(
        self, message: str = "", *, backoff: bool = False, data: dict[str, Any] | None = None
    ):
        super().__init__(message, data=data)
        self.backoff = backoff
        self.kind = "incomplete_backoff" if backoff else "incomplete"


class BistroFailed(BistroTaskResult):
    """The task failed for good (``failed``): no retry until someone forgives the job."""

    kind = "failed"
