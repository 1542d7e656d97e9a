"""Rules of job filters and of task eligibility along a node's path to the root."""

from __future__ import annotations

import re

import pytest

from bistro_provider.core.filters import (
    level_filter_accepts,
    stable_fraction_hash,
    task_eligibility,
)
from bistro_provider.core.forest import Forest, Node
from bistro_provider.core.model import Job, LevelFilter

LEVELS = ("instance", "host", "db", "worker")
NAMES = [str(i) for i in range(10_000)]
# blake2b-64 of ("job", "node"); a change would move fraction subsets on upgrade.
PINNED_HASH = 7231100783665618288


def kept(flt: LevelFilter, job_name: str, names: list[str] = NAMES) -> set[str]:
    return {name for name in names if level_filter_accepts(flt, Node(name, 1), job_name)}


def test_fraction_half_keeps_about_half() -> None:
    count = len(kept(LevelFilter(fraction_of_nodes=0.5), "job"))

    assert 4900 <= count <= 5100


def test_smaller_fraction_is_subset_of_larger() -> None:
    quarter = kept(LevelFilter(fraction_of_nodes=0.25), "job")
    half = kept(LevelFilter(fraction_of_nodes=0.5), "job")

    assert quarter <= half
    assert len(quarter) < len(half)


def test_other_job_name_picks_other_subset() -> None:
    first = kept(LevelFilter(fraction_of_nodes=0.5), "job_a")
    second = kept(LevelFilter(fraction_of_nodes=0.5), "job_b")

    assert first != second
    # Independent halves share about a quarter of all names, far from all of either.
    assert len(first & second) < 0.3 * len(NAMES)


@pytest.mark.parametrize(
    "fraction",
    [
        pytest.param(1.0, id="one"),
        pytest.param(1.5, id="above-one"),
        pytest.param(0.0, id="zero-means-no-filter"),
        pytest.param(-0.5, id="negative-means-no-filter"),
    ],
)
def test_fraction_outside_open_interval_keeps_all(fraction: float) -> None:
    assert kept(LevelFilter(fraction_of_nodes=fraction), "job", NAMES[:500]) == set(NAMES[:500])


def test_fraction_hash_is_a_fixed_function() -> None:
    assert stable_fraction_hash("job", "node") == PINNED_HASH
    assert 0 <= stable_fraction_hash("", "") < 2**64


def test_fraction_hash_separates_job_and_node() -> None:
    assert stable_fraction_hash("ab", "c") != stable_fraction_hash("a", "bc")


@pytest.mark.parametrize(
    ("flt", "name", "tags", "expected"),
    [
        pytest.param(LevelFilter(), "db1", (), True, id="empty-filter-accepts"),
        pytest.param(LevelFilter(whitelist=frozenset({"db1"})), "db1", (), True, id="whitelist-in"),
        pytest.param(
            LevelFilter(whitelist=frozenset({"db1"})), "db10", (), False, id="whitelist-exact"
        ),
        pytest.param(
            LevelFilter(whitelist_regex=re.compile("b1")), "xdb1y", (), True,
            id="whitelist-regex-searches-anywhere",
        ),
        pytest.param(
            LevelFilter(whitelist_regex=re.compile("^b1")), "db1", (), False,
            id="whitelist-regex-anchored-misses",
        ),
        pytest.param(
            LevelFilter(blacklist=frozenset({"db1"})), "db1", (), False, id="blacklist-in"
        ),
        pytest.param(
            LevelFilter(blacklist=frozenset({"db1"})), "db2", (), True, id="blacklist-out"
        ),
        pytest.param(
            LevelFilter(blacklist_regex=re.compile("b1")), "xdb1y", (), False,
            id="blacklist-regex-searches-anywhere",
        ),
        pytest.param(
            LevelFilter(blacklist_regex=re.compile("b1")), "db2", (), True,
            id="blacklist-regex-no-match",
        ),
        pytest.param(
            LevelFilter(tag_whitelist=frozenset({"ssd", "big"})), "db1", ("big",), True,
            id="tag-whitelist-any-tag",
        ),
        pytest.param(
            LevelFilter(tag_whitelist=frozenset({"ssd"})), "db1", ("hdd",), False,
            id="tag-whitelist-no-tag",
        ),
        pytest.param(
            LevelFilter(tag_whitelist=frozenset({"ssd"})), "db1", (), False,
            id="tag-whitelist-untagged",
        ),
        pytest.param(
            LevelFilter(
                whitelist=frozenset({"db1", "db2"}), blacklist_regex=re.compile("2$")
            ),
            "db2", (), False, id="rules-intersect",
        ),
    ],
)
def test_level_filter_rules(
    flt: LevelFilter, name: str, tags: tuple[str, ...], expected: bool
) -> None:
    node = Node(name, 2, tags=frozenset(tags))

    assert level_filter_accepts(flt, node, "job") is expected


def build_two_hosts() -> tuple[Forest, dict[str, Node]]:
    forest = Forest(LEVELS, "inst")
    nodes: dict[str, Node] = {}
    for host in ("h1", "h2"):
        nodes[host] = forest.add(Node(host, 1, forest.instance))
        nodes[f"{host}.db"] = forest.add(Node(f"{host}.db", 2, nodes[host]))
    return forest, nodes


def test_host_filter_excludes_its_dbs() -> None:
    _, nodes = build_two_hosts()
    job = Job("job", filters={"host": LevelFilter(blacklist=frozenset({"h1"}))})

    assert task_eligibility(job, nodes["h1.db"], LEVELS) == "avoided"
    assert task_eligibility(job, nodes["h2.db"], LEVELS) == "yes"


def test_disabled_host_disables_its_dbs() -> None:
    _, nodes = build_two_hosts()
    nodes["h1"].enabled = False

    assert task_eligibility(Job("job"), nodes["h1.db"], LEVELS) == "disabled"
    assert task_eligibility(Job("job"), nodes["h2.db"], LEVELS) == "yes"


def test_disabled_task_node_is_disabled() -> None:
    _, nodes = build_two_hosts()
    nodes["h1.db"].enabled = False

    assert task_eligibility(Job("job"), nodes["h1.db"], LEVELS) == "disabled"


def test_nearest_failing_node_decides() -> None:
    # The db is rejected by its own filter before the walk reaches the disabled host.
    _, nodes = build_two_hosts()
    nodes["h1"].enabled = False
    job = Job("job", filters={"db": LevelFilter(blacklist=frozenset({"h1.db"}))})

    assert task_eligibility(job, nodes["h1.db"], LEVELS) == "avoided"


def test_disabled_task_node_wins_over_its_filter() -> None:
    _, nodes = build_two_hosts()
    nodes["h1.db"].enabled = False
    job = Job("job", filters={"db": LevelFilter(blacklist=frozenset({"h1.db"}))})

    assert task_eligibility(job, nodes["h1.db"], LEVELS) == "disabled"


def test_instance_filter_applies_to_every_task() -> None:
    _, nodes = build_two_hosts()
    job = Job("job", filters={"instance": LevelFilter(whitelist=frozenset({"other"}))})

    assert task_eligibility(job, nodes["h2.db"], LEVELS) == "avoided"


def test_filter_on_level_below_task_is_ignored() -> None:
    _, nodes = build_two_hosts()
    job = Job("job", filters={"db": LevelFilter(whitelist=frozenset({"none"}))})

    assert task_eligibility(job, nodes["h1"], LEVELS) == "yes"
