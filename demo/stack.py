"""Run a real Airflow 3.3 stack on 127.0.0.1 for demos and end-to-end tests.

``AirflowStack`` migrates a fresh SQLite metadata database, serializes the DAGs once (so no
dag-processor is needed unless asked for), starts ``airflow api-server`` and
``airflow scheduler --skip-serve-logs`` in their own sessions, and talks to the REST API with
the standard library only. Every setting comes from the constructor: inherited ``AIRFLOW__*``
variables are dropped so the caller's shell cannot change what runs.

Example::

    with AirflowStack(home, dags_folder, {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}) as stack:
        run_id = stack.trigger("my_dag")
        state = stack.wait_for_run("my_dag", run_id, timeout=300)
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from demo.processes import (
    free_port,
    home_members,
    is_loopback,
    listening_sockets,
    session_members,
    signal_group,
    signal_pid,
    tail,
)

log = logging.getLogger(__name__)

TERMINAL_RUN_STATES = frozenset({"success", "failed"})
POLL_SECONDS = 2.0
STOP_GRACE_SECONDS = 20.0
PAGE_LIMIT = 1000


class StackError(RuntimeError):
    """The stack failed to start, or a process it started misbehaved."""


class ApiError(RuntimeError):
    """An Airflow REST call returned an HTTP error."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path} failed with HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class AirflowStack:
    """Airflow api-server and scheduler (optionally triggerer and dag-processor) on loopback.

    :param home: AIRFLOW_HOME, which contains the SQLite database and ``logs-stack/`` with one log
        file per process.
    :param dags_folder: folder that ``airflow dags reserialize`` reads.
    :param env_extra: more environment variables, applied last, e.g. the executor.
    :param port: api-server port; a free one is picked when None.
    :param triggerer: also start ``airflow triggerer --skip-serve-logs``.
    :param dag_processor: also start ``airflow dag-processor`` (needed only when DAG files
        change while the stack runs).
    :param schedulers: how many scheduler processes to start (they share the database); 0
        runs the api-server alone, for tests of the REST API that seed the database themselves.
    :param startup_timeout: seconds to wait for the health endpoint.
    """

    def __init__(
        self,
        home: Path,
        dags_folder: Path,
        env_extra: dict[str, str],
        port: int | None = None,
        *,
        triggerer: bool = False,
        dag_processor: bool = False,
        schedulers: int = 1,
        startup_timeout: float = 120.0,
    ) -> None:
        self.home = Path(home).resolve()
        self.dags_folder = Path(dags_folder).resolve()
        self.env_extra = dict(env_extra)
        self.port = port if port is not None else free_port()
        self.triggerer = triggerer
        self.dag_processor = dag_processor
        self.schedulers = schedulers
        self.startup_timeout = startup_timeout
        self.log_dir = self.home / "logs-stack"
        self.airflow = Path(sys.executable).parent / "airflow"
        self.listening: list[tuple[str, int]] | None = None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}
        self._commands: dict[str, list[str]] = {}
        self._retired_groups: set[int] = set()
        """Process groups of replaced services; their workers may still run and stop() ends them."""
        self._log_files: dict[str, Path] = {}
        self._token: str | None = None
        self._stopped = False
        # One secret for every process: the scheduler signs workload tokens that the
        # api-server must accept.
        self._jwt_secret = secrets.token_hex(32)
        self._secret_key = secrets.token_hex(32)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """Return the environment every Airflow process of this stack runs with."""
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("AIRFLOW__") and name not in ("AIRFLOW_HOME", "AIRFLOW_CONFIG")
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret,
                "AIRFLOW__API__SECRET_KEY": self._secret_key,
                # Raised from 100 so that task_instances() gets PAGE_LIMIT rows per call.
                "AIRFLOW__API__MAXIMUM_PAGE_LIMIT": str(PAGE_LIMIT),
                "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home}/airflow.db",
            }
        )
        env.update(self.env_extra)
        return env

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> AirflowStack:
        """Migrate the database, serialize DAGs, start the services and wait until healthy.

        :raises StackError: with the tail of every log when a step fails or times out. All
            processes started so far are stopped first.
        """
        if self._processes:
            raise StackError(
                "this stack is already started; `with stack:` starts it, so do not also call"
                " stack.start() inside the block"
            )
        if not self.airflow.is_file():
            raise StackError(
                f"{self.airflow} not found: install apache-airflow into {sys.prefix}"
                " and run this script with that interpreter"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        try:
            self._run_cli("db-migrate", ["db", "migrate"])
            self._run_cli("dags-reserialize", ["dags", "reserialize"])
            for name, argv in self._service_commands():
                self._spawn(name, argv)
            self._wait_healthy()
            self._check_loopback()
        except BaseException:
            self.stop()
            raise
        return self

    def _service_commands(self) -> list[tuple[str, list[str]]]:
        commands = [("api-server", ["api-server"])]
        if self.schedulers >= 1:
            commands.append(("scheduler", ["scheduler", "--skip-serve-logs"]))
        for number in range(2, self.schedulers + 1):
            commands.append((f"scheduler-{number}", ["scheduler", "--skip-serve-logs"]))
        if self.triggerer:
            commands.append(("triggerer", ["triggerer", "--skip-serve-logs"]))
        if self.dag_processor:
            commands.append(("dag-processor", ["dag-processor"]))
        return commands

    def _run_cli(self, name: str, argv: list[str], timeout: float = 300.0) -> None:
        log_path = self.log_dir / f"{name}.log"
        self._log_files[name] = log_path
        log.info("Running airflow %s (log: %s)", " ".join(argv), log_path)
        with log_path.open("wb") as output:
            result = subprocess.run(
                [str(self.airflow), *argv],
                env=self.environment(),
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            raise StackError(
                f"airflow {' '.join(argv)} exited with {result.returncode}. Log {log_path}:\n"
                f"{tail(log_path)}"
            )

    def _spawn(
        self,
        name: str,
        argv: list[str],
        *,
        append: bool = False,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        log_path = self.log_dir / f"{name}.log"
        self._log_files[name] = log_path
        self._commands[name] = list(argv)
        env = {**self.environment(), **(env_extra or {})}
        if not append:
            log_path.write_bytes(b"")
        # O_APPEND: workers of a killed service keep the file open at their own offset, and
        # without it they would overwrite what its replacement writes.
        with log_path.open("ab") as output:
            # A session of its own lets stop() signal the service and all its workers, and
            # keeps a terminal's Ctrl-C from reaching them before stop() runs.
            process = subprocess.Popen(
                [str(self.airflow), *argv],
                env=env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._processes[name] = process
        log.info("Started airflow %s as pid %d (log: %s)", name, process.pid, log_path)

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise StackError(
                        f"airflow {name} exited with {process.returncode} during startup\n"
                        f"{self.logs_tail()}"
                    )
            if self._health_status() == 200:
                log.info("Airflow API is healthy at %s", self.base_url)
                return
            time.sleep(0.5)
        raise StackError(
            f"GET {self.base_url}/api/v2/monitor/health did not return 200 within"
            f" {self.startup_timeout:.0f} s\n{self.logs_tail()}"
        )

    def _health_status(self) -> int | None:
        try:
            url = f"{self.base_url}/api/v2/monitor/health"
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def _check_loopback(self) -> None:
        self.listening = listening_sockets(set(self.pids()))
        if self.listening is None:
            log.warning("ss not found; skipping the check that services bind 127.0.0.1 only")
            return
        exposed = [(address, pid) for address, pid in self.listening if not is_loopback(address)]
        if exposed:
            raise StackError(f"Airflow processes listen on non-loopback addresses: {exposed}")

    def pids(self) -> list[int]:
        """Return the live pids of every started service and of everything they started."""
        members = set(session_members(self._groups()))
        members.update(home_members(self.home))
        return sorted(members)

    def _groups(self) -> set[int]:
        return {process.pid for process in self._processes.values()} | self._retired_groups

    def service_pid(self, name: str) -> int:
        """Return the pid of service ``name``'s main process (it may have exited)."""
        return self._processes[name].pid

    def kill(self, name: str, signum: signal.Signals = signal.SIGKILL) -> int:
        """Send ``signum`` to the main process of service ``name`` only and return its pid.

        Processes the service started (LocalExecutor workers, task supervisors) are not
        signalled, as when the kernel's OOM killer picks the scheduler. They keep running
        until they exit or `stop` ends them.
        """
        process = self._processes[name]
        signal_pid(process.pid, signum)
        log.info("Sent %s to airflow %s (pid %d)", signum.name, name, process.pid)
        return process.pid

    def restart(
        self,
        name: str,
        *,
        env_extra: dict[str, str] | None = None,
        timeout: float = STOP_GRACE_SECONDS,
    ) -> None:
        """Start service ``name`` again with its first command, appending to its log.

        A service that still runs gets SIGTERM on its process group first, then SIGKILL
        after ``timeout`` seconds. The api-server is waited for until it is healthy again.

        :param env_extra: variables that override the stack's environment for the new
            process only, for example a changed Airflow setting.

        :raises StackError: when the old process does not exit, or the api-server does not
            become healthy within the startup timeout.
        """
        process = self._processes[name]
        if process.poll() is None:
            self._stop_one(name, process, timeout)
        self._retired_groups.add(process.pid)
        self._spawn(name, self._commands[name], append=True, env_extra=env_extra)
        if name == "api-server":
            self._wait_healthy()

    def logs_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of every log this stack wrote."""
        parts = [f"--- {path} ---\n{tail(path, lines)}" for path in self._log_files.values()]
        return "\n".join(parts)

    def _stop_one(self, name: str, process: subprocess.Popen[bytes], timeout: float) -> None:
        signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            signal_group(process.pid, signal.SIGKILL)
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired as exc:
            raise StackError(f"airflow {name} (pid {process.pid}) survived SIGKILL") from exc

    def stop(self) -> list[int]:
        """Stop every process with SIGTERM, then SIGKILL after 20 s. Safe to call repeatedly.

        :return: pids still alive afterwards; an empty list means nothing is left running.
        """
        if self._stopped:
            return self.pids()
        self._stopped = True
        groups = self._groups()
        for pgid in groups:
            signal_group(pgid, signal.SIGTERM)
        for pid in home_members(self.home):
            signal_pid(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while self._reap() and time.monotonic() < deadline:
            time.sleep(0.2)
        leftovers = self._reap()
        if leftovers:
            self._kill(groups, leftovers)
        return self._reap()

    def _kill(self, groups: set[int], leftovers: list[int]) -> None:
        log.warning("Killing Airflow processes still alive after SIGTERM: %s", leftovers)
        for pgid in groups:
            signal_group(pgid, signal.SIGKILL)
        # Task processes sit in process groups of their own, so kill them one by one.
        for pid in leftovers:
            signal_pid(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10.0
        while self._reap() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _reap(self) -> list[int]:
        for process in self._processes.values():
            process.poll()
        return self.pids()

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- REST API --------------------------------------------------------------------------

    def token(self) -> str:
        """Return a JWT from ``GET /auth/token``, which needs no login when all are admins."""
        if self._token is None:
            body = self._request("GET", "/auth/token", None, authorize=False)
            self._token = str(body["access_token"])
        return self._token

    def api(self, method: str, path: str, json: Any = None) -> Any:
        """Send a REST request with the bearer token and return the decoded JSON body."""
        return self._request(method, path, json, authorize=True)

    def _request(self, method: str, path: str, payload: Any, *, authorize: bool) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if payload is not None:
            data = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        if authorize:
            headers["Authorization"] = f"Bearer {self.token()}"
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")) from exc
        return json.loads(raw) if raw else None

    def wait_for_dag(self, dag_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll ``GET /api/v2/dags/{dag_id}`` until the DAG exists and return it."""
        path = f"/api/v2/dags/{_quote(dag_id)}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                return dict(self.api("GET", path))
            except ApiError as exc:
                if exc.status != 404 or time.monotonic() >= deadline:
                    raise
            time.sleep(1.0)

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Unpause ``dag_id``, create a manual run with ``conf`` and return its run id."""
        self.wait_for_dag(dag_id)
        path = f"/api/v2/dags/{_quote(dag_id)}"
        self.api("PATCH", path, {"is_paused": False})
        run = self.api("POST", f"{path}/dagRuns", {"logical_date": None, "conf": conf or {}})
        log.info("Triggered %s run %s", dag_id, run["dag_run_id"])
        return str(run["dag_run_id"])

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/v2/dags/{_quote(dag_id)}/dagRuns/{_quote(run_id)}"))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Return every task instance of one run, following the API's pages."""
        base = f"/api/v2/dags/{_quote(dag_id)}/dagRuns/{_quote(run_id)}/taskInstances"
        collected: list[dict[str, Any]] = []
        while True:
            page = self.api("GET", f"{base}?limit={PAGE_LIMIT}&offset={len(collected)}")
            rows = page["task_instances"]
            collected.extend(rows)
            # Offsets advance by rows received, because the server may cap the page size.
            if not rows or len(collected) >= page["total_entries"]:
                return collected

    def wait_for_run(
        self,
        dag_id: str,
        run_id: str,
        timeout: float,
        progress: Callable[[dict[str, int]], None] | None = None,
        *,
        include: Callable[[dict[str, Any]], bool] | None = None,
        progress_interval: float = POLL_SECONDS,
    ) -> str:
        """Poll every 2 s until the run is ``success`` or ``failed`` and return that state.

        :param progress: called with task instance counts by state (``"none"`` for instances
            without a state yet), at most every ``progress_interval`` seconds and once at the
            end. Listing a large run costs the api-server real work, hence the interval.
        :param include: counts only the task instances for which it returns True.
        :raises TimeoutError: when the run is still going after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        next_progress = time.monotonic()
        while True:
            state = str(self.dag_run(dag_id, run_id)["state"])
            done = state in TERMINAL_RUN_STATES
            if progress is not None and (done or time.monotonic() >= next_progress):
                progress(self.count_states(dag_id, run_id, include))
                next_progress = time.monotonic() + progress_interval
            if done:
                return state
            if time.monotonic() >= deadline:
                raise TimeoutError(f"run {run_id} of {dag_id} still {state} after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    def count_states(
        self,
        dag_id: str,
        run_id: str,
        include: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, int]:
        """Count the run's task instances by state, keeping only those ``include`` accepts."""
        instances = self.task_instances(dag_id, run_id)
        selected = [ti for ti in instances if include is None or include(ti)]
        return dict(Counter(str(ti["state"] or "none") for ti in selected))


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")
