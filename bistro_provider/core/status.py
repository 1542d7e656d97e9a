"""Task statuses as Bistro defines them, and the rules that move a task between them.

A task (one job on one node) has no status until it first runs. A task reports its result
as the last line it writes to its status pipe: a label such as ``done`` or a JSON object.
`apply_result` then turns that result into the stored status, counting retries along the
job's backoff list, and `is_eligible` returns whether the scheduler may start the task again.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field, replace
from typing import Any

from bistro_provider.core.errors import StatusParseError
from bistro_provider.core.model import Backoff

# Bit values of Bistro's task status bit set, kept identical so that `result_bits` written
# by existing Bistro tasks keep their meaning.
UNSTARTED = 1
RUNNING = 2
DONE = 4
INCOMPLETE = 8
FAILED = 16
ERROR = 32
USES_BACKOFF = 64
AVOIDED = 128
DISABLED = 256
DOES_NOT_ADVANCE_BACKOFF = 512
OVERWRITEABLE = 1024
HAS_SAVED_BACKOFF = 2048
ALL_BITS = 4095
CURRENT_BITS = RUNNING | DONE | INCOMPLETE | FAILED | ERROR
# Bits that only the scheduler or its monitor sets, so a task must not report them.
SCHEDULER_ONLY_BITS = UNSTARTED | AVOIDED | DISABLED | HAS_SAVED_BACKOFF

KIND_BITS: dict[str, int] = {
    "running": RUNNING,
    "done": DONE,
    "incomplete": INCOMPLETE,
    "incomplete_backoff": INCOMPLETE | USES_BACKOFF | DOES_NOT_ADVANCE_BACKOFF,
    "error_backoff": ERROR | USES_BACKOFF,
    "failed": FAILED,
}
KINDS = tuple(KIND_BITS)
KIND_ALIASES = {"backoff": "error_backoff"}
BACKOFF_KINDS = ("incomplete_backoff", "error_backoff")
# Kinds a task may report as its result. Only the scheduler sets "running".
RESULT_KINDS = ("done", "incomplete", "incomplete_backoff", "error_backoff", "failed")
MAX_STATUS_LINE_BYTES = 64 * 1024
# Wait used by incomplete_backoff when the backoff list has no delay at all (["fail"]).
# Bistro uses the same 60 s when its list has no next delay.
NO_DELAY_FALLBACK_SEC = 60
_SAVED_BACKOFF_KEY = "__bistro_saved_backoff"
_PREVIEW_CHARS = 200


def normalize_kind(kind: str) -> str:
    """Return the canonical kind for `kind`, mapping the alias ``backoff`` to error_backoff.

    :raises ValueError: for an unknown kind.
    """
    canonical = KIND_ALIASES.get(kind, kind)
    if canonical not in KIND_BITS:
        allowed = ", ".join([*KINDS, *KIND_ALIASES])
        raise ValueError(f"unknown task status kind {kind!r}; allowed kinds: {allowed}")
    return canonical


@dataclass(frozen=True)
class TaskStatus:
    """The stored status of one task.

    :param kind: one of `KINDS`.
    :param time: when the status was set, in seconds since the epoch.
    :param backoff: for a backoff kind, the seconds to wait after `time` before a retry.
        For ``running``, the backoff of the status before the run, which the next error
        advances from. 0 for every other kind.
    :param data: the JSON object the task reported, or None.
    """

    kind: str
    time: float
    backoff: int = 0
    data: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", normalize_kind(self.kind))
        if isinstance(self.backoff, bool) or not isinstance(self.backoff, int) or self.backoff < 0:
            raise ValueError(f"backoff must be an integer >= 0 seconds, got {self.backoff!r}")

    @property
    def bits(self) -> int:
        """Bistro's bit set for this kind."""
        return KIND_BITS[self.kind]

    def to_json(self) -> dict[str, Any]:
        """Return the status as a JSON object in the shape of Bistro's ``prev_status``."""
        result: dict[str, Any] = {
            "result": self.kind,
            "result_bits": self.bits,
            "time": self.time,
            "backoff_duration": self.backoff,
        }
        if self.data is not None:
            result["data"] = self.data
        return result

    @classmethod
    def from_json(cls, value: Any) -> TaskStatus:
        """Build a status from `to_json` output.

        :raises ValueError: when a field is missing or has the wrong type.
        """
        if not isinstance(value, dict):
            raise ValueError(f"a stored task status must be a JSON object, got {value!r}")
        if "result" in value:
            kind = value["result"]
        else:
            kind = _kind_from_bits(value.get("result_bits"))
        time = value.get("time")
        if isinstance(time, bool) or not isinstance(time, int | float) or not math.isfinite(time):
            raise ValueError(f"a stored task status needs a numeric time, got {time!r}")
        data = value.get("data")
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"a stored task status needs object data, got {data!r}")
        return cls(kind, float(time), value.get("backoff_duration", 0), data)


class _InvalidStatus(ValueError):
    """Reason that a status line is invalid, without the line, which `parse_status_line` adds."""


def parse_status_line(text: str | bytes) -> tuple[str, dict[str, Any] | None]:
    """Parse what a task wrote to its status pipe, where the last non-empty line counts.

    The line is a bare label (``done``, ``incomplete``, ``incomplete_backoff``,
    ``error_backoff`` or its alias ``backoff``, ``failed``) or a JSON object with either
    ``"result": LABEL`` or ``"result_bits": INT`` and an optional ``"data"`` object.

    :returns: the kind and the reported data (None when absent or empty).
    :raises StatusParseError: naming the line, shortened to 200 characters, and the reason.
    """
    raw = _to_bytes(text)
    line = _last_line(raw)
    try:
        if line is None:
            raise _InvalidStatus("the task wrote no status line")
        return _parse_line(line)
    except _InvalidStatus as exc:
        shown = (line if line is not None else raw).decode("utf-8", "replace")
        preview = shown.strip()[:_PREVIEW_CHARS]
        raise StatusParseError(f"cannot parse status {preview!r}: {exc}") from None


def _to_bytes(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    try:
        # surrogateescape restores the original bytes of text that was decoded with it.
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        preview = text[:_PREVIEW_CHARS]
        raise StatusParseError(f"cannot parse status {preview!r}: not UTF-8 text") from None


def _last_line(raw: bytes) -> bytes | None:
    for line in reversed(raw.split(b"\n")):
        if line.strip():
            return line.strip()
    return None


def _parse_line(line: bytes) -> tuple[str, dict[str, Any] | None]:
    if len(line) > MAX_STATUS_LINE_BYTES:
        raise _InvalidStatus(f"the line is {len(line)} bytes, over {MAX_STATUS_LINE_BYTES}")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise _InvalidStatus("not UTF-8 text") from None
    if not text.startswith("{"):
        return _kind_from_label(text), None
    try:
        status = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _InvalidStatus(f"invalid JSON at column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _InvalidStatus("the JSON is nested too deeply to read") from None
    except ValueError:
        # The decoder raises a plain ValueError for an integer over the digit limit.
        digits = sys.get_int_max_str_digits()
        raise _InvalidStatus(f"the JSON has a number of more than {digits} digits") from None
    if ("result" in status) == ("result_bits" in status):
        raise _InvalidStatus('the JSON needs exactly one of "result" and "result_bits"')
    if "result" in status:
        kind = _kind_from_label(status["result"])
    else:
        kind = _kind_from_bits(status["result_bits"])
    return kind, _reported_data(status.get("data"))


def _kind_from_label(label: Any) -> str:
    allowed = "done, incomplete, incomplete_backoff, error_backoff, backoff, failed"
    if not isinstance(label, str):
        raise _InvalidStatus(f"the result must be a string, one of: {allowed}")
    kind = KIND_ALIASES.get(label, label)
    if kind not in RESULT_KINDS:
        raise _InvalidStatus(f"unknown result; expected one of: {allowed}")
    return kind


def _kind_from_bits(bits: Any) -> str:
    """Map a Bistro bit set to a kind.

    ERROR without USES_BACKOFF also becomes error_backoff. Bistro would retry such a task
    at once without using up a retry, and here every reported error waits and counts.
    """
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise _InvalidStatus(f"result_bits must be an integer, got {bits!r}")
    if bits & ~ALL_BITS or bits < 0:
        raise _InvalidStatus(f"result_bits {bits} has unknown bits; known bits are 1 to 2048")
    if bits & SCHEDULER_ONLY_BITS:
        forbidden = bits & SCHEDULER_ONLY_BITS
        raise _InvalidStatus(f"result_bits {bits} contains scheduler-only bits {forbidden}")
    current = bits & CURRENT_BITS
    if current == RUNNING:
        raise _InvalidStatus("a task cannot report RUNNING (2) as its result")
    if current not in (DONE, INCOMPLETE, FAILED, ERROR):
        message = (
            f"result_bits {bits} needs exactly one of DONE 4, INCOMPLETE 8, FAILED 16, ERROR 32"
        )
        raise _InvalidStatus(message)
    if current == INCOMPLETE:
        return "incomplete_backoff" if bits & USES_BACKOFF else "incomplete"
    return {DONE: "done", FAILED: "failed", ERROR: "error_backoff"}[current]


def _reported_data(data: Any) -> dict[str, Any] | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise _InvalidStatus(f'"data" must be a JSON object, got {type(data).__name__}')
    # The scheduler's own bookkeeping key, which a task must not set.
    kept = {key: value for key, value in data.items() if key != _SAVED_BACKOFF_KEY}
    return kept or None


def apply_result(
    previous: TaskStatus | None,
    kind: str,
    backoff: Backoff,
    now: float,
    data: dict[str, Any] | None = None,
) -> TaskStatus:
    """Return the status that follows `previous` when the task reports `kind` at `now`.

    error_backoff waits the delay after the previous one and becomes failed when the list
    ends in "fail" and is used up. incomplete_backoff waits the same next delay but never
    fails. running keeps the previous backoff as the base for the next delay. Every other
    kind resets the backoff, so the next error waits the first delay again.
    """
    kind = normalize_kind(kind)
    base = previous.backoff if previous is not None else 0
    if kind == "running":
        return TaskStatus(kind, now, base, data)
    if kind == "error_backoff":
        delay = backoff.next_delay(base)
        if delay is None:
            return TaskStatus("failed", now, 0, data)
        return TaskStatus(kind, now, delay, data)
    if kind == "incomplete_backoff":
        delay = backoff.next_delay(base)
        if delay is None:
            delay = backoff.delays[-1] if backoff.delays else NO_DELAY_FALLBACK_SEC
        return TaskStatus(kind, now, delay, data)
    return TaskStatus(kind, now, 0, data)


def in_backoff_until(status: TaskStatus | None) -> float | None:
    """Return the time when the backoff of `status` ends, or None if it has no backoff."""
    if status is None or status.kind not in BACKOFF_KINDS or status.backoff == 0:
        return None
    return status.time + status.backoff


def is_eligible(status: TaskStatus | None, now: float) -> bool:
    """Return True when the scheduler may start the task at `now`.

    A task is in backoff while ``time + backoff > now``, so at exactly the end it may start.
    """
    if status is None:
        return True
    if status.kind in ("running", "done", "failed"):
        return False
    until = in_backoff_until(status)
    return until is None or until <= now


def forgive(status: TaskStatus | None) -> TaskStatus | None:
    """Return the status after an operator forgives the task.

    A failed task becomes an error with no wait, and a backoff status loses its wait, so
    the task is eligible at once and its retries start again from the first delay. Other
    statuses, and None, are returned unchanged.
    """
    if status is None:
        return None
    if status.kind == "failed":
        return replace(status, kind="error_backoff", backoff=0)
    if status.kind in BACKOFF_KINDS:
        return replace(status, backoff=0)
    return status
