"""Cron specs of the `add_time` node source: Bistro's JSON form, and the times that match.

A spec is one of two forms:

* ``{"epoch": SELECTOR}`` matches POSIX seconds. SELECTOR is one time, a list of times, or
  ``{"period": P, "start": S, "end": E}`` for S, S + P, ... up to E (defaults: P = 1,
  S = 0, no end).
* Standard fields: ``minute`` (required), ``hour``, ``day_of_month``, ``month``,
  ``day_of_week`` and ``year``. A missing field matches every value. Each field is an
  integer, a list of them, ``"*"``, a ``{"start", "end", "period"}`` selector, or a cron
  field string such as ``"*/15"`` or ``"mon-fri"``. ``day_of_week`` numbers days
  1 = Sunday to 7 = Saturday, as Bistro does, and also takes day names. ``month`` also takes
  month names. A ``day_of_week`` string must use names, because cron numbers Sunday 0 and
  a digit would be ambiguous. ``year`` takes integers, lists, selectors or ``"*"``.
  ``day_of_week`` and ``day_of_month`` cannot be combined, because cron would match
  either one, which surprises readers of Bistro configs, where it is an error.

Standard specs are evaluated by croniter in the item's IANA time zone, so this module
never matches cron fields itself. It only turns the JSON fields into a five-field cron
expression and filters by year.

DST behaviour is croniter's (checked with croniter 7.0.0): a match at a local time that
does not exist (the hour skipped when clocks go forward) fires once, at the first instant
after the gap. A match at an ambiguous local time (the repeated hour when clocks go back)
fires twice, once per UTC offset. Of Bistro's ``dst_fixes`` this is ``["unskip",
"repeat_use_both"]``. Other ``dst_fixes`` are accepted with a warning, because they are not
applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from bistro_provider.core.errors import ConfigIssue

# Node times are POSIX seconds in 1970..9999, the range that `datetime` can represent.
EARLIEST_TIME = 0
LATEST_TIME = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=ZoneInfo("UTC")).timestamp())

CRON_FIELDS = ("minute", "hour", "day_of_month", "month", "day_of_week")
FIELD_RANGES = {
    "minute": (0, 59),
    "hour": (0, 23),
    "day_of_month": (1, 31),
    "month": (1, 12),
    "day_of_week": (1, 7),
    "year": (1970, 9999),
}
STANDARD_KEYS = frozenset({*CRON_FIELDS, "year", "dst_fixes"})
SELECTOR_KEYS = frozenset({"start", "end", "period"})

DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTH_NAMES = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
NAMES_BY_FIELD = {"day_of_week": DAY_NAMES, "month": MONTH_NAMES}

# Bistro's dst_fixes take one rule for clocks going forward and one for clocks going back.
DST_FORWARD = frozenset({"skip", "unskip"})
DST_REWIND = frozenset({"repeat_use_both", "repeat_use_only_early", "repeat_use_only_late"})
CRONITER_DST = frozenset({"unskip", "repeat_use_both"})


@dataclass(frozen=True)
class EpochCron:
    """An epoch spec: explicit `values`, or `start`, `start + period`, ... up to `end`."""

    values: tuple[int, ...] | None = None
    start: int = 0
    end: int | None = None
    period: int = 1

    def times(self, low: int, high: int, limit: int) -> list[int]:
        """Return the matches t with low < t <= high, ascending, at most `limit` + 1."""
        if self.values is not None:
            return [value for value in self.values if low < value <= high][: limit + 1]
        high = high if self.end is None else min(high, self.end)
        first = max(low + 1, self.start)
        first += -(first - self.start) % self.period
        return list(range(first, high + 1, self.period)[: limit + 1])


@dataclass(frozen=True)
class StandardCron:
    """A standard spec: a five-field cron `expression` in `zone`, and the allowed years."""

    expression: str
    zone: ZoneInfo
    years: range | frozenset[int] | None = None

    def times(self, low: int, high: int, limit: int) -> list[int]:
        """Return the matches t with low < t <= high, ascending, at most `limit` + 1."""
        low = max(low, EARLIEST_TIME - 1)
        high = min(high, LATEST_TIME)
        matches: list[int] = []
        for window_low, window_high in self._year_windows(low, high):
            start = datetime.fromtimestamp(window_low, self.zone)
            iterator = croniter(self.expression, start)
            while len(matches) <= limit:
                match = self._next(iterator)
                if match is None or match > window_high:
                    break
                matches.append(match)
        return matches[: limit + 1]

    @staticmethod
    def _next(iterator: croniter) -> int | None:
        try:
            return int(iterator.get_next(datetime).timestamp())
        except CroniterBadDateError:
            # croniter gives up when no date matches within its search range (Feb 30).
            return None

    def _year_windows(self, low: int, high: int) -> list[tuple[int, int]]:
        """Split (low, high] into one window per local year in `years`."""
        if low >= high:
            return []
        if self.years is None:
            return [(low, high)]
        first_year = datetime.fromtimestamp(low + 1, self.zone).year
        last_year = datetime.fromtimestamp(high, self.zone).year
        windows = []
        for year in range(first_year, last_year + 1):
            if year not in self.years:
                continue
            year_start = int(datetime(year, 1, 1, tzinfo=self.zone).timestamp())
            next_start = high + 1
            if year < 9999:
                next_start = int(datetime(year + 1, 1, 1, tzinfo=self.zone).timestamp())
            windows.append((max(low, year_start - 1), min(high, next_start - 1)))
        return windows


CronSpec = EpochCron | StandardCron


def parse_cron(
    value: Any, zone: ZoneInfo, path: str, issues: list[ConfigIssue], warnings: list[ConfigIssue]
) -> CronSpec | None:
    """Return the spec that `value` describes, or None after adding its problems to `issues`."""
    if not isinstance(value, Mapping):
        example = '{"epoch": {"period": 300}} or {"minute": 0}'
        message = f"must be an object such as {example}, got {value!r}"
        issues.append(ConfigIssue(path, message))
        return None
    if "epoch" in value:
        return _parse_epoch(value, path, issues)
    return _parse_standard(value, zone, path, issues, warnings)


# --- epoch ---------------------------------------------------------------------------


def _parse_epoch(
    value: Mapping[str, Any], path: str, issues: list[ConfigIssue]
) -> EpochCron | None:
    extra = sorted(key for key in value if key != "epoch")
    if extra:
        message = (
            f"an epoch spec takes no other keys, got {', '.join(map(repr, extra))}; remove them"
        )
        issues.append(ConfigIssue(path, message))
        return None
    selector = value["epoch"]
    key_path = f"{path}.epoch"
    if _is_int(selector):
        selector = [selector]
    if isinstance(selector, list):
        return _parse_epoch_list(selector, key_path, issues)
    if isinstance(selector, Mapping):
        return _parse_epoch_range(selector, key_path, issues)
    message = (
        "must be a time in POSIX seconds, a list of them, or "
        f'{{"period": P, "start": S, "end": E}}, got {selector!r}'
    )
    issues.append(ConfigIssue(key_path, message))
    return None


def _parse_epoch_list(values: list[Any], path: str, issues: list[ConfigIssue]) -> EpochCron | None:
    if not values or not all(_is_int(item) and item >= EARLIEST_TIME for item in values):
        message = f"must be a non-empty list of POSIX seconds (integers >= 0), got {values!r}"
        issues.append(ConfigIssue(path, message))
        return None
    return EpochCron(values=tuple(sorted(set(values))))


def _parse_epoch_range(
    selector: Mapping[str, Any], path: str, issues: list[ConfigIssue]
) -> EpochCron | None:
    count = len(issues)
    _check_selector_keys(selector, path, issues)
    start = _selector_int(selector, "start", EARLIEST_TIME, EARLIEST_TIME, path, issues)
    period = _selector_int(selector, "period", 1, 1, path, issues)
    end = None
    if "end" in selector:
        end = _selector_int(selector, "end", 0, EARLIEST_TIME, path, issues)
    if start is not None and end is not None and end < start:
        issues.append(ConfigIssue(f"{path}.end", f"must be >= start ({start}), got {end}"))
    if len(issues) > count or start is None or period is None:
        return None
    return EpochCron(start=start, end=end, period=period)


def _selector_int(
    selector: Mapping[str, Any],
    key: str,
    default: int,
    minimum: int,
    path: str,
    issues: list[ConfigIssue],
) -> int | None:
    value = selector.get(key, default)
    if not _is_int(value) or value < minimum:
        message = f"must be an integer >= {minimum}, got {value!r}"
        issues.append(ConfigIssue(f"{path}.{key}", message))
        return None
    return int(value)


def _check_selector_keys(selector: Mapping[str, Any], path: str, issues: list[ConfigIssue]) -> None:
    for key in selector:
        if key not in SELECTOR_KEYS:
            message = f"unknown key {key!r}; a selector may contain: end, period, start"
            issues.append(ConfigIssue(f"{path}.{key}", message))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- standard fields -----------------------------------------------------------------


def _parse_standard(
    value: Mapping[str, Any],
    zone: ZoneInfo,
    path: str,
    issues: list[ConfigIssue],
    warnings: list[ConfigIssue],
) -> StandardCron | None:
    count = len(issues)
    for key in value:
        if key not in STANDARD_KEYS:
            expected = ", ".join(sorted(STANDARD_KEYS | {"epoch"}))
            issues.append(
                ConfigIssue(
                    f"{path}.{key}", f"unknown key {key!r}; a cron spec may contain: {expected}"
                )
            )
    if "minute" not in value:
        issues.append(
            ConfigIssue(
                f"{path}.minute",
                'missing; set it, for example "minute": 0 for the top of each hour',
            )
        )
    if "day_of_week" in value and "day_of_month" in value:
        message = "day_of_week and day_of_month cannot be combined; keep one of them"
        issues.append(ConfigIssue(path, message))
    fields = [_cron_field(key, value, path, issues) for key in CRON_FIELDS]
    years = _parse_years(value.get("year", "*"), f"{path}.year", issues)
    _check_dst_fixes(value.get("dst_fixes"), f"{path}.dst_fixes", issues, warnings)
    if len(issues) > count:
        return None
    expression = " ".join(field for field in fields if field is not None)
    return _checked_standard(StandardCron(expression, zone, years), path, issues)


def _checked_standard(
    spec: StandardCron, path: str, issues: list[ConfigIssue]
) -> StandardCron | None:
    """Return `spec` unless croniter rejects its expression as a whole."""
    try:
        croniter(spec.expression)
    except CroniterBadCronError as exc:
        issues.append(ConfigIssue(path, f"invalid cron expression {spec.expression!r}: {exc}"))
        return None
    return spec


def _cron_field(
    key: str, spec: Mapping[str, Any], path: str, issues: list[ConfigIssue]
) -> str | None:
    """Return one field of the cron expression, in cron's numbering."""
    if key not in spec:
        return "*"
    key_path = f"{path}.{key}"
    value = spec[key]
    if isinstance(value, str) and not _name_value(key, value):
        return _cron_string_field(key, value, key_path, issues)
    if isinstance(value, Mapping):
        bounds = _parse_selector(key, value, key_path, issues)
        if bounds is None:
            return None
        start, end, period = (_to_cron(key, bounds[0]), _to_cron(key, bounds[1]), bounds[2])
        return f"{start}-{end}/{period}"
    items = value if isinstance(value, list) else [value]
    numbers = _parse_values(key, items, key_path, issues)
    if numbers is None:
        return None
    return ",".join(str(_to_cron(key, number)) for number in sorted(set(numbers)))


def _cron_string_field(key: str, value: str, path: str, issues: list[ConfigIssue]) -> str | None:
    text = value.strip().lower()
    if key == "day_of_week" and any(char.isdigit() for char in text):
        message = (
            f"{value!r} uses digits, but cron numbers Sunday 0 while Bistro numbers it 1; "
            'use day names such as "mon-fri", or integers 1 (Sunday) to 7 (Saturday)'
        )
        issues.append(ConfigIssue(path, message))
        return None
    position = CRON_FIELDS.index(key)
    probe = ["*"] * len(CRON_FIELDS)
    probe[position] = text
    if not text or " " in text or not croniter.is_valid(" ".join(probe)):
        message = (
            f'invalid cron field {value!r}; use forms such as "*", "*/15", "1-5", "0,30" '
            "or 3-letter names"
        )
        issues.append(ConfigIssue(path, message))
        return None
    return text


def _parse_selector(
    key: str, selector: Mapping[str, Any], path: str, issues: list[ConfigIssue]
) -> tuple[int, int, int] | None:
    count = len(issues)
    _check_selector_keys(selector, path, issues)
    low, high = FIELD_RANGES[key]
    start = _parse_values(key, [selector.get("start", low)], f"{path}.start", issues)
    end = _parse_values(key, [selector.get("end", high)], f"{path}.end", issues)
    period = _selector_int(selector, "period", 1, 1, path, issues)
    if len(issues) > count or start is None or end is None or period is None:
        return None
    if end[0] < start[0]:
        issues.append(ConfigIssue(f"{path}.end", f"must be >= start ({start[0]}), got {end[0]}"))
        return None
    return start[0], end[0], period


def _parse_values(
    key: str, items: list[Any], path: str, issues: list[ConfigIssue]
) -> list[int] | None:
    """Return `items` as integers in Bistro's numbering; names become their numbers."""
    low, high = FIELD_RANGES[key]
    numbers: list[int] = []
    for item in items:
        number = _name_value(key, item) if isinstance(item, str) else item
        if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
            names = " or names" if key in NAMES_BY_FIELD else ""
            message = (
                f"must be integers {low}..{high}{names}, a list of them, a selector or a "
                f"cron field string, got {item!r}"
            )
            issues.append(ConfigIssue(path, message))
            return None
        numbers.append(number)
    if not numbers:
        issues.append(
            ConfigIssue(path, "must not be an empty list; leave the key out to match every value")
        )
        return None
    return numbers


def _name_value(key: str, text: str) -> int | None:
    """Return the number for a day or month name (full, or its first 3 letters), else None."""
    names = NAMES_BY_FIELD.get(key, ())
    lowered = text.strip().lower()
    for number, name in enumerate(names, start=1):
        if lowered in (name, name[:3]):
            return number
    return None


def _to_cron(key: str, number: int) -> int:
    # Bistro numbers days 1 = Sunday .. 7 = Saturday; cron numbers them 0 = Sunday .. 6.
    return number - 1 if key == "day_of_week" else number


def _parse_years(value: Any, path: str, issues: list[ConfigIssue]) -> range | frozenset[int] | None:
    if value == "*":
        return None
    if isinstance(value, Mapping):
        bounds = _parse_selector("year", value, path, issues)
        return None if bounds is None else range(bounds[0], bounds[1] + 1, bounds[2])
    if isinstance(value, str):
        message = (
            'must be "*", an integer year, a list of years or {"start", "end", "period"}, '
            f"got {value!r}"
        )
        issues.append(ConfigIssue(path, message))
        return None
    numbers = _parse_values("year", value if isinstance(value, list) else [value], path, issues)
    return None if numbers is None else frozenset(numbers)


def _check_dst_fixes(
    value: Any, path: str, issues: list[ConfigIssue], warnings: list[ConfigIssue]
) -> None:
    """Check Bistro's `dst_fixes`, and warn when it requests behaviour other than croniter's."""
    if value is None:
        return
    known = DST_FORWARD | DST_REWIND
    if not isinstance(value, list) or not all(
        isinstance(item, str) and item in known for item in value
    ):
        message = f"must be a list of {', '.join(sorted(known))}, got {value!r}"
        issues.append(ConfigIssue(path, message))
        return
    for group in (DST_FORWARD, DST_REWIND):
        if len(group & set(value)) > 1:
            message = f"names more than one of {', '.join(sorted(group))}; keep one"
            issues.append(ConfigIssue(path, message))
            return
    ignored = sorted(set(value) - CRONITER_DST)
    if ignored:
        message = (
            f"{', '.join(ignored)} not applied: croniter fires a nonexistent local time once "
            "at the end of the DST gap (unskip) and an ambiguous one at both offsets "
            '(repeat_use_both); set ["unskip", "repeat_use_both"] to silence this warning'
        )
        warnings.append(ConfigIssue(path, message))
