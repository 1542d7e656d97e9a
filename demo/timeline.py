"""Measure how many demo tasks ran at once, from the times the tasks recorded themselves.

Each task of ``demo/maintain_db.py`` writes ``OUTDIR/timeline/<node>.json`` with its own
``start`` and ``end`` (``time.time()`` inside the task process). Because those times lie inside
the span in which the executor counted the task as running, the maximum overlap found here
can only be lower than, or equal to, what the executor admitted, never higher.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any

Interval = Mapping[str, Any]


def _key_function(key: str | Callable[[Interval], Hashable]) -> Callable[[Interval], Hashable]:
    if callable(key):
        return key
    return lambda interval: interval[key]


def max_concurrency(
    intervals: Iterable[Interval], key: str | Callable[[Interval], Hashable]
) -> dict[Hashable, int]:
    """Return the maximum number of overlapping intervals for each key.

    :param intervals: mappings with numeric ``start`` and ``end``.
    :param key: a field name such as ``"host"``, or a function of the interval.

    Intervals are closed at the start and open at the end: an interval that ends at the same
    instant another starts does not overlap it, because a freed slot may be reused at once.
    """
    key_of = _key_function(key)
    events: dict[Hashable, list[tuple[float, int]]] = {}
    for interval in intervals:
        start, end = float(interval["start"]), float(interval["end"])
        if end < start:
            raise ValueError(f"interval {dict(interval)!r} ends before it starts")
        bucket = events.setdefault(key_of(interval), [])
        bucket.append((start, 1))
        bucket.append((end, -1))

    result: dict[Hashable, int] = {}
    for name, bucket in events.items():
        # At equal times, -1 sorts before +1, so ends are counted before starts.
        bucket.sort()
        running = peak = 0
        for _, delta in bucket:
            running += delta
            peak = max(peak, running)
        result[name] = peak
    return result


def _read_records(directory: Path) -> list[dict[str, Any]]:
    if not directory.is_dir():
        return []
    return [
        json.loads(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.json"))
    ]


def summarize(outdir: Path) -> dict[str, int]:
    """Return the maximum tasks running at once per host and per db, and the task count."""
    records = _read_records(Path(outdir) / "timeline")
    per_host = max_concurrency(records, "host")
    per_db = max_concurrency(records, "node")
    return {
        "max_running_per_host": max(per_host.values(), default=0),
        "max_running_per_db": max(per_db.values(), default=0),
        "tasks": len(records),
    }


def write_report(outdir: Path) -> Path:
    """Merge ``OUTDIR/report/*.json`` into ``OUTDIR/report.json``, sorted by node."""
    outdir = Path(outdir)
    reports = sorted(_read_records(outdir / "report"), key=lambda record: record["node"])
    unhealthy = [record["node"] for record in reports if record.get("integrity") != "ok"]
    merged = {"databases": len(reports), "integrity_failures": unhealthy, "reports": reports}
    path = outdir / "report.json"
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path
