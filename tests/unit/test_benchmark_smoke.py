"""benchmarks/run.py at a tiny scale: every figure is measured and printed.

Only the shape of the output is checked; no timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RUN_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"


def load_benchmarks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bistro_benchmarks_run", RUN_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_benchmarks()


@pytest.fixture(scope="module")
def results(bench: ModuleType) -> dict[str, Any]:
    scale = bench.Scale(
        hosts=20,
        dbs=5,
        runs=1,
        endings=5,
        mid_hosts=10,
        sim_hosts=10,
        sim_dbs=2,
        sim_duration=10.0,
        stress_duration=1.0,
    )
    return bench.run_all(scale, progress=lambda message: None)


@pytest.mark.parametrize(
    "key",
    [
        "p1_full_pass",
        "p1_reference_pass",
        "p1_mid_scale",
        "p2_incremental",
        "p3_throughput",
        "p3_stress",
        "p6_memory",
        "memory_per_node",
        "machine",
    ],
)
def test_results_contain_figure(results: dict[str, Any], key: str) -> None:
    assert key in results


def test_results_are_json(results: dict[str, Any]) -> None:
    assert json.loads(json.dumps(results))["scale"]["hosts"] == 20


def test_full_pass_reports_wall_and_cpu_seconds(results: dict[str, Any]) -> None:
    timing = results["p1_full_pass"]["pass"]
    assert set(timing) == {"wall_seconds", "cpu_seconds"}
    assert results["p1_full_pass"]["started"] == 20 * 2


def test_incremental_counts_every_ending(results: dict[str, Any]) -> None:
    assert results["p2_incremental"]["endings"] == 5


def test_throughput_is_a_fraction(results: dict[str, Any]) -> None:
    mean = results["p3_throughput"]["normalized_throughput_mean"]
    assert 0.0 < mean <= 1.0


def test_memory_probe_counts_all_nodes(results: dict[str, Any]) -> None:
    assert results["p6_memory"]["nodes"] == 1 + 20 + 20 * 5
    assert results["p6_memory"]["peak_kib"] > 0


@pytest.mark.parametrize("figure", ["P1", "P2", "P3", "P4", "P5", "P6"])
def test_table_has_a_row_per_figure(
    bench: ModuleType, results: dict[str, Any], figure: str
) -> None:
    table = bench.format_table(results)
    assert any(line.startswith(figure) for line in table.splitlines())
