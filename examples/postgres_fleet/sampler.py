"""Count batch connections on every cluster from the server's own view, ``pg_stat_activity``.

A background thread queries each cluster about every 50 ms over a connection of its own
(``application_name = 'bistro_sampler'``) and keeps the maximum number of connections whose
``application_name`` is ``bistro_batch``. The maximum is a lower bound of the true peak:
a peak shorter than the sampling interval can fall between two samples. The tasks' own
timestamps give the matching upper bound, because each task's recorded interval covers its
connection from before the connect until after its server process has exited.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from psycopg2.extensions import connection as PgConnection

log = logging.getLogger(__name__)

SAMPLER_APPLICATION_NAME = "bistro_sampler"
BATCH_APPLICATION_NAME = "bistro_batch"
COUNT_QUERY = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"


@dataclass
class ClusterSamples:
    """Sample counts, maximum and histogram of one cluster."""

    port: int
    samples: int = 0
    errors: int = 0
    max_batch_connections: int = 0
    # Number of samples that saw each connection count.
    histogram: Counter[int] = field(default_factory=Counter)

    def record(self, count: int) -> None:
        self.samples += 1
        self.histogram[count] += 1
        self.max_batch_connections = max(self.max_batch_connections, count)

    def as_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "samples": self.samples,
            "errors": self.errors,
            "max_batch_connections": self.max_batch_connections,
            "histogram": {str(count): n for count, n in sorted(self.histogram.items())},
        }


class ActivitySampler(threading.Thread):
    """Thread that samples the batch connection count of every cluster until stopped.

    :param ports: cluster port by host name; every cluster listens on 127.0.0.1.
    :param interval: seconds between two rounds over all clusters.
    """

    def __init__(self, ports: dict[str, int], interval: float = 0.05) -> None:
        super().__init__(name="pg-activity-sampler", daemon=True)
        self.interval = interval
        self.clusters = {host: ClusterSamples(port) for host, port in ports.items()}
        self._connections: dict[str, PgConnection] = {}
        self._stop_event = threading.Event()
        self._first_round = threading.Event()

    def start_sampling(self, timeout: float = 30.0) -> None:
        """Start the thread and wait until one round has sampled every cluster.

        :raises RuntimeError: when some cluster could not be sampled within ``timeout``.
        """
        self.start()
        if not self._first_round.wait(timeout):
            self.stop()
            raise RuntimeError(
                f"the sampler could not query pg_stat_activity on every cluster within"
                f" {timeout:.0f} s: {self.summary()}"
            )

    def stop(self) -> dict[str, dict[str, Any]]:
        """Stop the thread, close its connections and return :meth:`summary`."""
        self._stop_event.set()
        if self.is_alive():
            self.join()
        return self.summary()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Return each cluster's samples as a dict, by host name."""
        return {host: samples.as_dict() for host, samples in sorted(self.clusters.items())}

    def max_per_host(self) -> dict[str, int]:
        """Return the maximum batch connection count seen on each host."""
        return {
            host: samples.max_batch_connections for host, samples in sorted(self.clusters.items())
        }

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                started = time.monotonic()
                if self._sample_round():
                    self._first_round.set()
                elapsed = time.monotonic() - started
                self._stop_event.wait(max(0.0, self.interval - elapsed))
        finally:
            for connection in self._connections.values():
                connection.close()

    def _sample_round(self) -> bool:
        """Sample every cluster once and return whether every query succeeded."""
        answered = 0
        for host, samples in self.clusters.items():
            try:
                samples.record(self._count(host, samples.port))
                answered += 1
            except psycopg2.Error as exc:
                samples.errors += 1
                self._drop_connection(host)
                # Only the first few errors per cluster are logged, so a dead cluster
                # does not flood the log at 20 lines a second.
                if samples.errors <= 3:
                    log.warning("Sampling pg_stat_activity on %s failed: %s", host, exc)
        return answered == len(self.clusters)

    def _count(self, host: str, port: int) -> int:
        connection = self._connections.get(host)
        if connection is None:
            connection = psycopg2.connect(
                host="127.0.0.1",
                port=port,
                dbname="postgres",
                user="postgres",
                application_name=SAMPLER_APPLICATION_NAME,
                connect_timeout=5,
            )
            # Inside a transaction pg_stat_activity is a snapshot taken at its first read.
            # Autocommit runs each query in a new transaction, so every sample is fresh.
            connection.autocommit = True
            self._connections[host] = connection
        with connection.cursor() as cursor:
            cursor.execute(COUNT_QUERY, (BATCH_APPLICATION_NAME,))
            return int(cursor.fetchone()[0])

    def _drop_connection(self, host: str) -> None:
        connection = self._connections.pop(host, None)
        if connection is not None:
            connection.close()
