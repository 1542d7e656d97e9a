from __future__ import annotations

import json

import pytest

from bistro_provider.core.errors import StatusParseError
from bistro_provider.core.model import Backoff
from bistro_provider.core.status import (
    KIND_BITS,
    MAX_STATUS_LINE_BYTES,
    NO_DELAY_FALLBACK_SEC,
    TaskStatus,
    apply_result,
    forgive,
    in_backoff_until,
    is_eligible,
    parse_status_line,
)

FAIL_LIST = Backoff((1, 2, 4), repeat=False)
REPEAT_LIST = Backoff((1, 2), repeat=True)


@pytest.mark.parametrize(
    ("kind", "bits"),
    [
        pytest.param("running", 2, id="running"),
        pytest.param("done", 4, id="done"),
        pytest.param("incomplete", 8, id="incomplete"),
        pytest.param("incomplete_backoff", 8 | 64 | 512, id="incomplete_backoff"),
        pytest.param("error_backoff", 32 | 64, id="error_backoff"),
        pytest.param("failed", 16, id="failed"),
    ],
)
def test_kind_bits_match_bistro(kind: str, bits: int) -> None:
    assert KIND_BITS[kind] == bits
    assert TaskStatus(kind, 0.0).bits == bits


def test_backoff_alias_means_error_backoff() -> None:
    assert TaskStatus("backoff", 0.0).kind == "error_backoff"


@pytest.mark.parametrize(
    ("kind", "backoff", "match"),
    [
        pytest.param("unsure", 0, "unknown task status kind", id="unknown-kind"),
        pytest.param("done", -1, "backoff must be", id="negative-backoff"),
        pytest.param("done", 1.5, "backoff must be", id="fractional-backoff"),
    ],
)
def test_task_status_rejects_invalid_fields(kind: str, backoff: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TaskStatus(kind, 0.0, backoff)


# --- parse_status_line -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        pytest.param("done", "done", id="done"),
        pytest.param("incomplete", "incomplete", id="incomplete"),
        pytest.param("incomplete_backoff", "incomplete_backoff", id="incomplete_backoff"),
        pytest.param("error_backoff", "error_backoff", id="error_backoff"),
        pytest.param("backoff", "error_backoff", id="backoff-alias"),
        pytest.param("failed", "failed", id="failed"),
        pytest.param("  done \r\n", "done", id="surrounding-whitespace"),
        pytest.param(b"done\n", "done", id="bytes"),
    ],
)
def test_status_label_parses(line: str | bytes, kind: str) -> None:
    assert parse_status_line(line) == (kind, None)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param('{"result": "done"}', ("done", None), id="result-without-data"),
        pytest.param(
            '{"result": "failed", "data": {"why": "disk"}}',
            ("failed", {"why": "disk"}),
            id="result-with-data",
        ),
        pytest.param('{"result": "backoff"}', ("error_backoff", None), id="result-alias"),
        pytest.param('{"result": "done", "data": {}}', ("done", None), id="empty-data-dropped"),
        pytest.param('{"result": "done", "data": null}', ("done", None), id="null-data"),
        pytest.param(
            '{"result": "done", "data": {"__bistro_saved_backoff": 5, "x": 1}}',
            ("done", {"x": 1}),
            id="saved-backoff-key-dropped",
        ),
        pytest.param(
            '{"result": "done", "time": 5, "backoff_duration": 9}',
            ("done", None),
            id="time-and-backoff-ignored",
        ),
    ],
)
def test_status_json_result_parses(line: str, expected: tuple[str, object]) -> None:
    assert parse_status_line(line) == expected


@pytest.mark.parametrize(
    ("bits", "kind"),
    [
        pytest.param(4, "done", id="done"),
        pytest.param(8, "incomplete", id="incomplete"),
        pytest.param(8 | 64, "incomplete_backoff", id="incomplete-uses-backoff"),
        pytest.param(8 | 64 | 512, "incomplete_backoff", id="incomplete-backoff-full"),
        pytest.param(32 | 64, "error_backoff", id="error-backoff"),
        pytest.param(32, "error_backoff", id="error-without-backoff-bit"),
        pytest.param(16, "failed", id="failed"),
        pytest.param(4 | 1024, "done", id="overwriteable-ignored"),
    ],
)
def test_status_result_bits_parse(bits: int, kind: str) -> None:
    line = json.dumps({"result_bits": bits, "data": {"n": 1}})
    assert parse_status_line(line) == (kind, {"n": 1})


@pytest.mark.parametrize(
    "bits",
    [
        pytest.param(1, id="unstarted"),
        pytest.param(4 | 128, id="avoided"),
        pytest.param(4 | 256, id="disabled"),
        pytest.param(32 | 2048, id="saved-backoff"),
        pytest.param(4096 | 4, id="unknown-bit"),
        pytest.param(-4, id="negative"),
        pytest.param(2, id="running"),
        pytest.param(4 | 8, id="two-current-bits"),
        pytest.param(0, id="no-bits"),
        pytest.param(64, id="modifier-only"),
        pytest.param("4", id="string"),
        pytest.param(True, id="boolean"),
    ],
)
def test_status_result_bits_rejected(bits: object) -> None:
    with pytest.raises(StatusParseError):
        parse_status_line(json.dumps({"result_bits": bits}))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("hello", id="unknown-label"),
        pytest.param("running", id="running-label"),
        pytest.param("DONE", id="wrong-case"),
        pytest.param("done please", id="trailing-words"),
        pytest.param("{not json", id="broken-json"),
        pytest.param('["done"]', id="json-list"),
        pytest.param('{"data": {}}', id="no-result"),
        pytest.param('{"result": "done", "result_bits": 4}', id="result-and-bits"),
        pytest.param('{"result": 4}', id="result-not-string"),
        pytest.param('{"result": "done", "data": [1]}', id="data-list"),
        pytest.param('{"result": "done", "data": "x"}', id="data-string"),
    ],
)
def test_status_garbage_rejected(text: str) -> None:
    with pytest.raises(StatusParseError):
        parse_status_line(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty-string"),
        pytest.param("\n \n\t\n", id="blank-lines"),
        pytest.param(b"", id="empty-bytes"),
    ],
)
def test_status_empty_rejected(text: str | bytes) -> None:
    with pytest.raises(StatusParseError, match="no status line"):
        parse_status_line(text)


def test_status_oversized_line_rejected() -> None:
    line = json.dumps({"result": "done", "data": {"x": "a" * MAX_STATUS_LINE_BYTES}})
    with pytest.raises(StatusParseError, match="bytes, over"):
        parse_status_line(line)


def test_status_line_at_size_limit_accepted() -> None:
    prefix = '{"result": "done", "data": {"x": "'
    padding = "a" * (MAX_STATUS_LINE_BYTES - len(prefix) - 3)
    line = prefix + padding + '"}}'
    assert len(line.encode()) == MAX_STATUS_LINE_BYTES
    assert parse_status_line(line)[0] == "done"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(b"\xff\xfedone", id="invalid-utf8-bytes"),
        pytest.param(b"done\n\x80\x81\n", id="binary-last-line"),
        pytest.param(b"\xffdone".decode("utf-8", "surrogateescape"), id="escaped-str"),
        pytest.param("done\ud800", id="lone-surrogate"),
    ],
)
def test_status_binary_rejected(text: str | bytes) -> None:
    with pytest.raises(StatusParseError, match="not UTF-8"):
        parse_status_line(text)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        pytest.param("failed\ndone\n", "done", id="labels"),
        pytest.param("garbage\nincomplete\n\n  \n", "incomplete", id="garbage-then-label"),
        pytest.param('done\n{"result": "failed"}', "failed", id="json-last"),
    ],
)
def test_status_last_line_wins(text: str, kind: str) -> None:
    assert parse_status_line(text)[0] == kind


def test_status_valid_line_before_garbage_does_not_count() -> None:
    with pytest.raises(StatusParseError):
        parse_status_line("done\ngarbage\n")


def test_status_error_shows_raw_text_shortened() -> None:
    with pytest.raises(StatusParseError) as caught:
        parse_status_line("x" * 500)
    assert "x" * 200 in str(caught.value)
    assert "x" * 201 not in str(caught.value)


# --- apply_result ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backoff", "results", "expected"),
    [
        pytest.param(
            FAIL_LIST,
            ["error_backoff"] * 2 + ["incomplete"] + ["error_backoff"] * 4,
            [
                ("error_backoff", 1),
                ("error_backoff", 2),
                ("incomplete", 0),
                ("error_backoff", 1),
                ("error_backoff", 2),
                ("error_backoff", 4),
                ("failed", 0),
            ],
            id="fail-list-1-2-4",
        ),
        pytest.param(
            REPEAT_LIST,
            ["error_backoff"] * 4,
            [
                ("error_backoff", 1),
                ("error_backoff", 2),
                ("error_backoff", 2),
                ("error_backoff", 2),
            ],
            id="repeat-list-keeps-last-delay",
        ),
        pytest.param(
            FAIL_LIST,
            ["incomplete_backoff"] * 5,
            [
                ("incomplete_backoff", 1),
                ("incomplete_backoff", 2),
                ("incomplete_backoff", 4),
                ("incomplete_backoff", 4),
                ("incomplete_backoff", 4),
            ],
            id="incomplete-backoff-never-fails",
        ),
        pytest.param(
            FAIL_LIST,
            ["error_backoff", "done", "error_backoff", "failed", "error_backoff"],
            [
                ("error_backoff", 1),
                ("done", 0),
                ("error_backoff", 1),
                ("failed", 0),
                ("error_backoff", 1),
            ],
            id="done-and-failed-reset-backoff",
        ),
        pytest.param(
            Backoff((), repeat=False),
            ["incomplete_backoff", "error_backoff"],
            [("incomplete_backoff", NO_DELAY_FALLBACK_SEC), ("failed", 0)],
            id="no-retries",
        ),
    ],
)
def test_apply_result_sequence(
    backoff: Backoff, results: list[str], expected: list[tuple[str, int]]
) -> None:
    status = None
    seen = []
    for now, kind in enumerate(results):
        status = apply_result(status, kind, backoff, float(now))
        seen.append((status.kind, status.backoff))
    assert seen == expected


def test_apply_result_running_keeps_base_for_next_error() -> None:
    status = apply_result(None, "error_backoff", FAIL_LIST, 0.0)
    status = apply_result(status, "running", FAIL_LIST, 5.0)
    status = apply_result(status, "error_backoff", FAIL_LIST, 6.0)
    assert (status.kind, status.backoff) == ("error_backoff", 2)


def test_apply_result_running_is_not_in_backoff() -> None:
    status = apply_result(None, "error_backoff", FAIL_LIST, 0.0)
    running = apply_result(status, "running", FAIL_LIST, 5.0)
    assert in_backoff_until(running) is None
    assert not is_eligible(running, 100.0)


def test_apply_result_keeps_time_and_data() -> None:
    status = apply_result(None, "done", FAIL_LIST, 12.5, data={"rows": 3})
    assert status == TaskStatus("done", 12.5, 0, {"rows": 3})


# --- eligibility, backoff end, forgive ----------------------------------------------------


@pytest.mark.parametrize(
    ("status", "now", "eligible"),
    [
        pytest.param(None, 0.0, True, id="no-status"),
        pytest.param(TaskStatus("running", 0.0), 99.0, False, id="running"),
        pytest.param(TaskStatus("done", 0.0), 99.0, False, id="done"),
        pytest.param(TaskStatus("failed", 0.0), 99.0, False, id="failed"),
        pytest.param(TaskStatus("incomplete", 10.0), 10.0, True, id="incomplete"),
        pytest.param(TaskStatus("error_backoff", 10.0, 5), 14.999, False, id="in-backoff"),
        pytest.param(TaskStatus("error_backoff", 10.0, 5), 15.0, True, id="backoff-ends-exactly"),
        pytest.param(TaskStatus("incomplete_backoff", 10.0, 5), 14.0, False, id="incomplete-wait"),
        pytest.param(TaskStatus("incomplete_backoff", 10.0, 5), 16.0, True, id="incomplete-over"),
        pytest.param(TaskStatus("error_backoff", 10.0, 0), 10.0, True, id="zero-backoff"),
    ],
)
def test_is_eligible(status: TaskStatus | None, now: float, eligible: bool) -> None:
    assert is_eligible(status, now) is eligible


@pytest.mark.parametrize(
    ("status", "until"),
    [
        pytest.param(None, None, id="no-status"),
        pytest.param(TaskStatus("error_backoff", 10.0, 5), 15.0, id="error-backoff"),
        pytest.param(TaskStatus("incomplete_backoff", 10.0, 7), 17.0, id="incomplete-backoff"),
        pytest.param(TaskStatus("error_backoff", 10.0, 0), None, id="zero-backoff"),
        pytest.param(TaskStatus("done", 10.0), None, id="done"),
        pytest.param(TaskStatus("running", 10.0, 4), None, id="running-with-base"),
    ],
)
def test_in_backoff_until(status: TaskStatus | None, until: float | None) -> None:
    assert in_backoff_until(status) == until


def test_forgive_makes_failed_task_eligible_now() -> None:
    failed = TaskStatus("failed", 10.0, 0, {"why": "x"})
    forgiven = forgive(failed)
    assert forgiven == TaskStatus("error_backoff", 10.0, 0, {"why": "x"})
    assert is_eligible(forgiven, 10.0)


def test_forgive_restarts_retries_from_first_delay() -> None:
    forgiven = forgive(TaskStatus("error_backoff", 10.0, 4))
    after = apply_result(forgiven, "error_backoff", FAIL_LIST, 11.0)
    assert after.backoff == 1


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(None, id="no-status"),
        pytest.param(TaskStatus("done", 1.0), id="done"),
        pytest.param(TaskStatus("running", 1.0, 2), id="running"),
        pytest.param(TaskStatus("incomplete", 1.0), id="incomplete"),
    ],
)
def test_forgive_leaves_other_statuses(status: TaskStatus | None) -> None:
    assert forgive(status) == status


# --- JSON --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(TaskStatus("running", 1.0, 2), id="running"),
        pytest.param(TaskStatus("done", 1.5), id="done"),
        pytest.param(TaskStatus("incomplete", 2.0, 0, {"a": [1]}), id="incomplete-data"),
        pytest.param(TaskStatus("incomplete_backoff", 3.0, 15), id="incomplete-backoff"),
        pytest.param(TaskStatus("error_backoff", 4.0, 30, {"e": "x"}), id="error-backoff"),
        pytest.param(TaskStatus("failed", 5.0), id="failed"),
    ],
)
def test_status_json_round_trip(status: TaskStatus) -> None:
    encoded = json.loads(json.dumps(status.to_json()))
    assert TaskStatus.from_json(encoded) == status


def test_status_json_has_bistro_fields() -> None:
    encoded = TaskStatus("error_backoff", 4.0, 30).to_json()
    assert encoded == {
        "result": "error_backoff",
        "result_bits": 96,
        "time": 4.0,
        "backoff_duration": 30,
    }


def test_status_from_json_accepts_bits_only() -> None:
    status = TaskStatus.from_json({"result_bits": 16, "time": 3})
    assert status == TaskStatus("failed", 3.0)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        pytest.param([], "must be a JSON object", id="not-object"),
        pytest.param({"result": "done"}, "numeric time", id="no-time"),
        pytest.param({"result": "done", "time": "now"}, "numeric time", id="time-string"),
        pytest.param({"result": "maybe", "time": 1}, "unknown task status kind", id="unknown-kind"),
        pytest.param({"time": 1}, "result_bits must be", id="no-result"),
        pytest.param({"result": "done", "time": 1, "data": [1]}, "object data", id="data-list"),
        pytest.param(
            {"result": "done", "time": 1, "backoff_duration": -1},
            "backoff must be",
            id="negative-backoff",
        ),
    ],
)
def test_status_from_json_rejects_invalid(value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TaskStatus.from_json(value)
