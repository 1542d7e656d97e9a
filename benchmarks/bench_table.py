"""The printed table of `benchmarks/run.py`: our figures beside the targets and Bistro's."""

from __future__ import annotations

from typing import Any

Row = tuple[str, str, str, str, str]
"""(figure, our wall time or value, our CPU time, target, Bistro's figure)."""

BRUTE = "~10 s (brute force)"


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:,.0f}x" if denominator > 0 else "n/a"


def table_rows(results: dict[str, Any]) -> list[Row]:
    """Return (figure, wall, CPU, target, Bistro) rows for the printed table."""
    return [*_pass_rows(results), *_ratio_rows(results), *_other_rows(results)]


def _pass_rows(results: dict[str, Any]) -> list[Row]:
    scale = results["scale"]
    leaves = f"{scale['hosts'] * scale['dbs']:,}"
    full, reference = results["p1_full_pass"], results["p1_reference_pass"]
    mid, incremental = results["p1_mid_scale"], results["p2_incremental"]
    mid_leaves = f"{mid['leaves']:,}"
    p95, longest = incremental["p95_wall_seconds"], incremental["max_wall_seconds"]
    extremes = f"{_seconds(p95)} / {_seconds(longest)}"
    return [
        _timed(
            f"P1 full pass, {leaves} leaves, {scale['jobs']} jobs", full["pass"], "<= 1 s", BRUTE
        ),
        _timed(
            f"P1 reference plan_jobs + admit_pass, {leaves} leaves", reference["pass"], "-", BRUTE
        ),
        _timed(f"P1 full pass, {mid_leaves} leaves", mid["full_pass"]["pass"], "-", "~5 s"),
        _timed(
            f"P1 reference pass, {mid_leaves} leaves", mid["reference_pass"]["pass"], "-", "~5 s"
        ),
        _timed("admitter build (index and candidates)", full["build"], "-", "-"),
        _timed(
            "P2 re-admission after one end, median",
            incremental["median"],
            "<= 1 ms",
            "almost zero (tree-based)",
        ),
        _row("P2 p95 / max", extremes),
    ]


def _ratio_rows(results: dict[str, Any]) -> list[Row]:
    incremental = results["p2_incremental"]["median"]["wall_seconds"]
    full = results["p1_full_pass"]["pass"]["wall_seconds"]
    after_end = results["p2_incremental"]["full_pass_after_one_ending"]["wall_seconds"]
    reference = results["p1_reference_pass"]["pass"]["wall_seconds"]
    return [
        _row("ratio P1 full pass / P2", _ratio(full, incremental)),
        _row("ratio full pass after one end / P2", _ratio(after_end, incremental)),
        _row("ratio reference pass / P2", _ratio(reference, incremental)),
    ]


def _other_rows(results: dict[str, Any]) -> list[Row]:
    rows = [_throughput_row("P3 normalized throughput", results["p3_throughput"], ">= 0.97")]
    for mode, report in results["p3_stress"].items():
        rows.append(_throughput_row(f"P3 stress, {mode}", report, "-"))
    memory, per_node = results["p6_memory"], results["memory_per_node"]
    traced = f"{per_node['forest_bytes_per_node']:.0f} / {per_node['admitter_bytes_per_node']:.0f}"
    rows += [
        _row("P4 Airflow end-to-end vs LocalExecutor", "not measured here"),
        _row("P5 makespan vs lower bound", "not measured here"),
        _row(
            f"P6 peak RSS, {memory['nodes']:,} nodes",
            f"{memory['peak_kib'] / 1024:.0f} MiB",
            target="<= 1 GiB",
        ),
        _row("bytes per node: forest / admitter (tracemalloc)", traced),
        _row(
            "bytes per leaf, sys.getsizeof estimate (forest)",
            f"{per_node['sizeof_forest_bytes_per_node']:.0f}",
        ),
    ]
    return rows


def _row(label: str, value: str, *, target: str = "-", bistro: str = "-") -> Row:
    return (label, value, "-", target, bistro)


def _timed(label: str, timing: dict[str, float], target: str, bistro: str) -> Row:
    return (
        label,
        _seconds(timing["wall_seconds"]),
        _seconds(timing["cpu_seconds"]),
        target,
        bistro,
    )


def _throughput_row(label: str, report: dict[str, Any], target: str) -> Row:
    mean = report["normalized_throughput_mean"]
    midpoint = report["normalized_throughput_midpoint"]
    shown = "n/a" if mean is None else f"{mean:.4f} mean, {midpoint:.4f} midpoint"
    label = f"{label} (d = {report['duration_mean']:g} s)"
    return (label, shown, "-", target, "-")


def format_table(results: dict[str, Any]) -> str:
    header = ("figure", "ours (wall)", "ours (CPU)", "target", "Bistro C++ (paper)")
    rows = [header, *table_rows(results)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
