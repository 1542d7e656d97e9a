"""Build a fleet of SQLite databases filled with real ISO 3166-2 subdivisions.

Each host is a directory and each database one country's subdivisions, so the demo runs
maintenance over real data shaped like ``instance -> host -> db``. The rows come from the
``pycountry`` package or, without it, from Debian's ``iso-codes`` JSON files; no row is made up.

Usage: ``python demo/fleet.py ROOT [--hosts N] [--min-dbs N] [--max-dbs N] [--seed N]``
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ISO_CODES_DIR = Path("/usr/share/iso-codes/json")

SCHEMA = (
    "CREATE TABLE subdivisions (code TEXT PRIMARY KEY, name TEXT, type TEXT,"
    " parent_code TEXT, country_code TEXT)",
    "CREATE TABLE country (alpha_2 TEXT PRIMARY KEY, name TEXT)",
)


@dataclass(frozen=True)
class Subdivision:
    """One ISO 3166-2 row, exactly as the source lists it."""

    code: str
    name: str
    type: str
    parent_code: str | None
    country_code: str


@dataclass(frozen=True)
class IsoData:
    """Subdivisions grouped by country (alpha-2), country names, and where they came from."""

    subdivisions: dict[str, list[Subdivision]]
    country_names: dict[str, str]
    source: str


@dataclass
class FleetInfo:
    """Result of :func:`build_fleet`: host names, db node names per host and the row total."""

    root: Path
    source: str
    dbs_by_host: dict[str, list[str]] = field(default_factory=dict)
    rows: int = 0

    @property
    def hosts(self) -> list[str]:
        return sorted(self.dbs_by_host)

    @property
    def db_count(self) -> int:
        return sum(len(dbs) for dbs in self.dbs_by_host.values())

    def summary(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "hosts": len(self.dbs_by_host),
            "dbs": self.db_count,
            "rows": self.rows,
            "source": self.source,
        }


def _group(rows: list[Subdivision], names: dict[str, str], source: str) -> IsoData:
    grouped: dict[str, list[Subdivision]] = {}
    for row in rows:
        grouped.setdefault(row.country_code, []).append(row)
    # Only countries that also have a name in ISO 3166-1 are used, so the country table is real.
    usable = {cc: sorted(subs, key=lambda s: s.code) for cc, subs in grouped.items() if cc in names}
    return IsoData(subdivisions=usable, country_names=names, source=source)


def _load_from_pycountry() -> IsoData:
    import pycountry

    names = {country.alpha_2: country.name for country in pycountry.countries}
    rows = [
        Subdivision(
            code=sub.code,
            name=sub.name,
            type=sub.type,
            parent_code=sub.parent_code,
            country_code=sub.country_code,
        )
        for sub in pycountry.subdivisions
    ]
    version = getattr(pycountry, "__version__", "") or "unknown version"
    return _group(rows, names, f"pycountry {version}")


def _load_from_iso_codes(directory: Path) -> IsoData:
    countries = json.loads((directory / "iso_3166-1.json").read_text(encoding="utf-8"))
    names = {entry["alpha_2"]: entry["name"] for entry in countries["3166-1"]}
    subdivisions = json.loads((directory / "iso_3166-2.json").read_text(encoding="utf-8"))
    rows = []
    for entry in subdivisions["3166-2"]:
        country_code = entry["code"].split("-", 1)[0]
        # iso-codes stores the parent without its country prefix ("IDF" for "FR-IDF").
        parent = entry.get("parent")
        rows.append(
            Subdivision(
                code=entry["code"],
                name=entry["name"],
                type=entry["type"],
                parent_code=f"{country_code}-{parent}" if parent else None,
                country_code=country_code,
            )
        )
    return _group(rows, names, str(directory / "iso_3166-2.json"))


def load_iso_data() -> IsoData:
    """Load ISO 3166-2 subdivisions from pycountry, or from Debian's iso-codes files.

    :raises RuntimeError: when neither source is installed.
    """
    try:
        return _load_from_pycountry()
    except ImportError:
        pass
    if (ISO_CODES_DIR / "iso_3166-2.json").is_file():
        return _load_from_iso_codes(ISO_CODES_DIR)
    raise RuntimeError(
        "No ISO 3166-2 data found: install the pycountry package (pip install pycountry)"
        f" or Debian's iso-codes package, which provides {ISO_CODES_DIR}/iso_3166-2.json"
    )


def host_names(count: int) -> list[str]:
    """Return ``h01``..``hNN``, zero-padded to at least two digits so names sort by number."""
    width = max(2, len(str(count)))
    return [f"h{index:0{width}d}" for index in range(1, count + 1)]


def _check_arguments(hosts: int, min_dbs: int, max_dbs: int, countries: int) -> None:
    if hosts < 1:
        raise ValueError(f"hosts={hosts} is invalid: a fleet needs at least 1 host")
    if min_dbs < 1:
        raise ValueError(f"min_dbs={min_dbs} is invalid: each host needs at least 1 database")
    if max_dbs < min_dbs:
        raise ValueError(f"max_dbs={max_dbs} is below min_dbs={min_dbs}: raise max_dbs")
    if max_dbs > countries:
        raise ValueError(
            f"max_dbs={max_dbs} exceeds the {countries} countries that have subdivisions;"
            " a host holds each country at most once, so lower max_dbs"
        )


def _write_database(path: Path, alpha_2: str, data: IsoData) -> int:
    rows = data.subdivisions[alpha_2]
    connection = sqlite3.connect(path)
    try:
        with connection:
            for statement in SCHEMA:
                connection.execute(statement)
            connection.execute(
                "INSERT INTO country (alpha_2, name) VALUES (?, ?)",
                (alpha_2, data.country_names[alpha_2]),
            )
            connection.executemany(
                "INSERT INTO subdivisions (code, name, type, parent_code, country_code)"
                " VALUES (?, ?, ?, ?, ?)",
                [(r.code, r.name, r.type, r.parent_code, r.country_code) for r in rows],
            )
    finally:
        connection.close()
    return len(rows)


def build_fleet(
    root: Path, hosts: int = 50, min_dbs: int = 10, max_dbs: int = 20, seed: int = 7
) -> FleetInfo:
    """Create ``root/<host>/<host>-<alpha2>.sqlite`` for hosts ``h01``..``hNN``.

    The seed fixes how many databases each host gets and which countries they hold, so the
    same arguments always give the same fleet.

    :raises FileExistsError: when ``root`` exists and is not empty, because stale hosts from
        an earlier fleet would show up in node discovery.
    """
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"Fleet root {root} is not empty: delete it or pick another root")
    data = load_iso_data()
    countries = sorted(data.subdivisions)
    _check_arguments(hosts, min_dbs, max_dbs, len(countries))

    rng = random.Random(seed)
    info = FleetInfo(root=root, source=data.source)
    for host in host_names(hosts):
        chosen = sorted(rng.sample(countries, rng.randint(min_dbs, max_dbs)))
        host_dir = root / host
        host_dir.mkdir(parents=True)
        nodes = []
        for alpha_2 in chosen:
            node = f"{host}-{alpha_2.lower()}"
            info.rows += _write_database(host_dir / f"{node}.sqlite", alpha_2, data)
            nodes.append(node)
        info.dbs_by_host[host] = nodes
    return info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory to create; must be missing or empty")
    parser.add_argument("--hosts", type=int, default=50, help="number of hosts (default 50)")
    parser.add_argument("--min-dbs", type=int, default=10, help="min databases per host")
    parser.add_argument("--max-dbs", type=int, default=20, help="max databases per host")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args(argv)
    try:
        info = build_fleet(args.root, args.hosts, args.min_dbs, args.max_dbs, args.seed)
    except (ValueError, FileExistsError, RuntimeError) as exc:
        print(f"fleet.py: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(info.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
