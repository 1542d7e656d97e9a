"""Create, start and remove throwaway PostgreSQL clusters that act as database hosts.

Each cluster ``pgN`` gets its own data directory under a root directory, a free TCP port on
127.0.0.1 and 10 to 20 databases ``pgN_db01``, ``pgN_db02``, ... Every database contains one
country's ISO 3166-2 subdivisions, loaded by ``demo.fleet.load_iso_data`` from the
``pycountry`` package, so the example's maintenance runs over real rows.

PostgreSQL refuses to run as root, so when this process is root every ``initdb`` and
``pg_ctl`` call runs as the ``postgres`` OS user through ``runuser``. Nothing runs through a
shell. The clusters never touch an existing cluster: they use their own data directories,
ports that were free when picked, and a unix socket directory inside each data directory.

Usage: ``python -m examples.postgres_fleet.clusters ROOT [--clusters 3]`` creates and starts
the clusters, prints their ports as JSON and stops and removes them on Enter or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    # Run as a script: make `demo` importable from the repository root.
    sys.path.insert(0, str(REPO_ROOT))

import psycopg2  # noqa: E402
from psycopg2 import sql  # noqa: E402
from psycopg2.extensions import connection as PgConnection  # noqa: E402

from demo.fleet import SCHEMA, IsoData, load_iso_data  # noqa: E402
from demo.processes import free_port, signal_pid, tail  # noqa: E402

log = logging.getLogger(__name__)

DB_OS_USER = "postgres"
DB_ROLE = "postgres"
MAX_CONNECTIONS = 20
START_ATTEMPTS = 3
PG_CTL_TIMEOUT_SECONDS = 60


class ClusterError(RuntimeError):
    """A cluster could not be created, started or stopped."""


def find_bindir() -> Path:
    """Return the newest ``/usr/lib/postgresql/<version>/bin`` that contains ``initdb``.

    :raises ClusterError: when no such directory exists.
    """
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: _version_key(path.parent.parent.name),
    )
    if not candidates:
        raise ClusterError(
            "/usr/lib/postgresql/*/bin/initdb not found: install the PostgreSQL server"
            " package (Debian: apt-get install postgresql) or pass the bin directory"
        )
    return candidates[-1].parent


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


def as_db_user(argv: list[str]) -> list[str]:
    """Return ``argv`` wrapped in ``runuser -u postgres --`` when this process is root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", DB_OS_USER, "--", *argv]
    return argv


def run_as_db_user(argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as the database OS user, capture its output and return the result."""
    return subprocess.run(
        as_db_user(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def give_to_db_user(path: Path) -> None:
    """Make the database OS user own ``path`` (a no-op unless this process is root)."""
    if os.geteuid() == 0:
        shutil.chown(path, user=DB_OS_USER, group=DB_OS_USER)


def host_names(count: int) -> list[str]:
    """Return the cluster (host) names ``pg1`` .. ``pgN``."""
    return [f"pg{index}" for index in range(1, count + 1)]


def database_names(host: str, count: int) -> list[str]:
    """Return ``<host>_db01`` .. , zero-padded to two digits so that names sort by number."""
    return [f"{host}_db{index:02d}" for index in range(1, count + 1)]


@dataclass
class PgCluster:
    """One PostgreSQL cluster: its data directory, port and server binaries.

    The data directory also contains the unix socket, and ``<data_dir>.log`` is the server log.
    """

    name: str
    data_dir: Path
    bindir: Path
    port: int = 0
    databases: list[str] = field(default_factory=list)

    @property
    def log_file(self) -> Path:
        return self.data_dir.with_name(f"{self.data_dir.name}.log")

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def connect(
        self, dbname: str = "postgres", application_name: str = "bistro_setup"
    ) -> PgConnection:
        """Open an autocommit connection to ``dbname`` over TCP on 127.0.0.1."""
        connection = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            dbname=dbname,
            user=DB_ROLE,
            application_name=application_name,
            connect_timeout=10,
        )
        connection.autocommit = True
        return connection

    def init(self) -> None:
        """Run ``initdb`` and write the example's settings and client authentication.

        :raises ClusterError: with initdb's output when it fails.
        """
        self.data_dir.mkdir(mode=0o700)
        give_to_db_user(self.data_dir)
        argv = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--username",
            DB_ROLE,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-instructions",
        ]
        result = run_as_db_user(argv)
        if result.returncode != 0:
            raise ClusterError(
                f"initdb for {self.name} in {self.data_dir} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        self._write_hba()

    def _write_hba(self) -> None:
        # Only TCP clients from 127.0.0.1 may connect. There is no unix-socket or IPv6 line.
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text(
            "# Written by examples/postgres_fleet/clusters.py: loopback TCP only.\n"
            "host all all 127.0.0.1/32 trust\n",
            encoding="utf-8",
        )
        give_to_db_user(hba)

    def _write_settings(self) -> None:
        # postgresql.auto.conf is read after postgresql.conf, so these values win. The file
        # is rewritten on every start because a retry after a port clash changes the port.
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.data_dir}'",
            "max_connections": str(MAX_CONNECTIONS),
            "shared_buffers": "'16MB'",
            # A throwaway cluster whose contents are rebuilt on every run needs no
            # crash safety, so the server skips fsync and full-page writes.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        auto_conf = self.data_dir / "postgresql.auto.conf"
        lines = ["# Written by examples/postgres_fleet/clusters.py"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        auto_conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        give_to_db_user(auto_conf)

    def start(self) -> None:
        """Start the server on a free port, retrying with a new port when the bind fails.

        :raises ClusterError: with the end of the server log when every attempt fails.
        """
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            self._write_settings()
            result = self._pg_ctl("start", "--log", str(self.log_file))
            if result.returncode == 0:
                log.info("Started cluster %s on 127.0.0.1:%d", self.name, self.port)
                return
            # Another process may take the port between free_port() and the bind.
            log.warning(
                "Starting cluster %s on port %d failed (attempt %d of %d)",
                self.name,
                self.port,
                attempt,
                START_ATTEMPTS,
            )
        raise ClusterError(
            f"pg_ctl start for {self.name} ({self.data_dir}) failed {START_ATTEMPTS} times."
            f" Last output: {result.stdout}{result.stderr}\nServer log {self.log_file}:\n"
            f"{tail(self.log_file)}"
        )

    def _pg_ctl(self, action: str, *options: str) -> subprocess.CompletedProcess[str]:
        argv = [
            str(self.bindir / "pg_ctl"),
            action,
            "--pgdata",
            str(self.data_dir),
            "--wait",
            "--timeout",
            str(PG_CTL_TIMEOUT_SECONDS),
            *options,
        ]
        return run_as_db_user(argv, timeout=PG_CTL_TIMEOUT_SECONDS + 30)

    def is_running(self) -> bool:
        """Tell whether the postmaster recorded in ``postmaster.pid`` is alive."""
        pid = self._postmaster_pid()
        return pid is not None and Path(f"/proc/{pid}").exists()

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = self.pid_file.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError):
            return None
        return int(first_line) if first_line.strip().isdigit() else None

    def stop(self) -> None:
        """Stop the server: fast shutdown, then immediate, then SIGKILL. Safe to repeat."""
        if not self.is_running():
            return
        for mode in ("fast", "immediate"):
            result = self._pg_ctl("stop", "--mode", mode)
            if result.returncode == 0 and not self.is_running():
                log.info("Stopped cluster %s (%s shutdown)", self.name, mode)
                return
            log.warning(
                "pg_ctl stop --mode %s for cluster %s failed: %s", mode, self.name, result.stderr
            )
        pid = self._postmaster_pid()
        if pid is not None:
            log.warning("Killing postmaster %d of cluster %s", pid, self.name)
            signal_pid(pid, signal.SIGKILL)

    def create_databases(self, countries: list[str], data: IsoData) -> int:
        """Create one database per country code and return the number of rows loaded."""
        self.databases = database_names(self.name, len(countries))
        # FILE_COPY copies the template's files instead of writing them to the WAL.
        statement = sql.SQL("CREATE DATABASE {} STRATEGY = FILE_COPY")
        admin = self.connect()
        try:
            with admin.cursor() as cursor:
                for dbname in self.databases:
                    cursor.execute(statement.format(sql.Identifier(dbname)))
        finally:
            admin.close()
        rows = 0
        for dbname, alpha_2 in zip(self.databases, countries, strict=True):
            rows += self._load_country(dbname, alpha_2, data)
        return rows

    def _load_country(self, dbname: str, alpha_2: str, data: IsoData) -> int:
        subdivisions = data.subdivisions[alpha_2]
        connection = self.connect(dbname)
        try:
            with connection.cursor() as cursor:
                for statement in SCHEMA:
                    cursor.execute(statement)
                cursor.execute(
                    "INSERT INTO country (alpha_2, name) VALUES (%s, %s)",
                    (alpha_2, data.country_names[alpha_2]),
                )
                cursor.executemany(
                    "INSERT INTO subdivisions (code, name, type, parent_code, country_code)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    [(s.code, s.name, s.type, s.parent_code, s.country_code) for s in subdivisions],
                )
        finally:
            connection.close()
        return len(subdivisions)


class PgFleet:
    """Several clusters under one root directory, created and removed together.

    Use it as a context manager, or call :meth:`start` and then :meth:`stop` in a
    ``finally`` block. :meth:`stop` is idempotent, and :meth:`start` calls it itself when a
    step fails, so no server is left running.

    :param root: directory for the clusters; it is created when missing and must be empty.
        The ``postgres`` OS user must be able to reach it, so a directory inside a 0700
        parent (such as pytest's ``tmp_path``) does not work.
    :param count: number of clusters (hosts).
    :param remove: delete the data directories in :meth:`stop`, and ``root`` itself when
        this object created it.
    """

    def __init__(
        self,
        root: Path,
        count: int = 3,
        *,
        min_dbs: int = 10,
        max_dbs: int = 20,
        seed: int = 7,
        bindir: Path | None = None,
        remove: bool = True,
    ) -> None:
        if count < 1:
            raise ValueError(f"count={count} is invalid: a fleet needs at least 1 cluster")
        if not 1 <= min_dbs <= max_dbs:
            raise ValueError(
                f"min_dbs={min_dbs}, max_dbs={max_dbs} are invalid: use 1 <= min <= max"
            )
        self.root = Path(root).resolve()
        self.count = count
        self.min_dbs = min_dbs
        self.max_dbs = max_dbs
        self.seed = seed
        self.bindir = bindir
        self.remove = remove
        self.clusters: list[PgCluster] = []
        self.rows = 0
        self.source = ""
        self._created_root = False

    @property
    def ports(self) -> dict[str, int]:
        """Port of every cluster by host name."""
        return {cluster.name: cluster.port for cluster in self.clusters}

    @property
    def db_count(self) -> int:
        return sum(len(cluster.databases) for cluster in self.clusters)

    def summary(self) -> dict[str, object]:
        return {
            "root": str(self.root),
            "hosts": len(self.clusters),
            "dbs": self.db_count,
            "rows": self.rows,
            "ports": self.ports,
            "source": self.source,
        }

    def start(self) -> PgFleet:
        """Create, start and fill every cluster.

        :raises ClusterError: when a step fails. Every cluster started so far is stopped
            first, and removed with ``remove``.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        bindir = self.bindir or find_bindir()
        data = load_iso_data()
        self.source = data.source
        countries = sorted(data.subdivisions)
        if self.max_dbs > len(countries):
            raise ValueError(
                f"max_dbs={self.max_dbs} exceeds the {len(countries)} countries with"
                " subdivisions, and each database contains one country: lower max_dbs"
            )
        self._prepare_root()
        rng = random.Random(self.seed)
        for host in host_names(self.count):
            cluster = PgCluster(name=host, data_dir=self.root / host, bindir=bindir)
            self.clusters.append(cluster)
            cluster.init()
            cluster.start()
            chosen = sorted(rng.sample(countries, rng.randint(self.min_dbs, self.max_dbs)))
            self.rows += cluster.create_databases(chosen, data)

    def _prepare_root(self) -> None:
        if self.root.exists() and any(self.root.iterdir()):
            raise ClusterError(f"cluster root {self.root} is not empty: delete it or pick another")
        if not self.root.exists():
            self.root.mkdir(parents=True)
            self._created_root = True
        give_to_db_user(self.root)
        # initdb fails with a vague message when the root is out of reach, so check first.
        probe = run_as_db_user(["test", "-w", str(self.root), "-a", "-x", str(self.root)])
        if probe.returncode != 0:
            raise ClusterError(
                f"the {DB_OS_USER} OS user cannot write {self.root}: a parent directory is"
                " not searchable by it (for example a 0700 temporary directory). Pick a root"
                " under /tmp, such as one from tempfile.mkdtemp()."
            )

    def stop(self) -> None:
        """Stop every cluster and, with ``remove``, delete its files. Safe to call again."""
        for cluster in self.clusters:
            try:
                cluster.stop()
            except (OSError, subprocess.SubprocessError) as exc:
                log.error("Stopping cluster %s failed: %s", cluster.name, exc)
        if not self.remove:
            return
        for cluster in self.clusters:
            shutil.rmtree(cluster.data_dir, ignore_errors=True)
            cluster.log_file.unlink(missing_ok=True)
        if self._created_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgFleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="directory for the clusters, missing or empty")
    parser.add_argument("--clusters", type=int, default=3, help="number of clusters (default 3)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    fleet = PgFleet(args.root, args.clusters)
    try:
        fleet.start()
        print(json.dumps(fleet.summary()), flush=True)
        input("Press Enter to stop and remove the clusters. ")
    except (KeyboardInterrupt, EOFError):
        pass
    except ClusterError as exc:
        print(f"clusters.py: {exc}", file=sys.stderr)
        return 1
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
