"""A small Chrome DevTools Protocol client that drives headless Chromium for the UI tests.

It starts Debian's ``/usr/bin/chromium`` with a fresh profile and talks to it over the
DevTools WebSocket with the ``websocket-client`` package, so no browser is downloaded.
Each `Page` lives in a browser context of its own, which keeps its cookies apart, so one
browser can be logged in to Airflow as two users at once.
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any, Self

import websocket

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
# Everything the browser does on its own (updates, sync, safe browsing lists, QUIC probes)
# is switched off, and host names other than 127.0.0.1 do not resolve, so the tests reach
# only the Airflow stack on loopback.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_TIMEOUT = 30.0
CALL_TIMEOUT = 30.0
POLL_SECONDS = 0.25
NAVIGATION_ERRORS = ("Inspected target navigated or closed", "Execution context was destroyed")
"""Chromium's errors for a script whose document was replaced while it ran."""


class ChromiumError(RuntimeError):
    """Chromium failed to start, or a DevTools call returned an error."""


class Connection:
    """One DevTools WebSocket: numbered calls, with events kept for later inspection."""

    def __init__(self, url: str) -> None:
        # Chromium rejects WebSocket clients whose Origin is not in --remote-allow-origins, so
        # the client sends no Origin header.
        self._socket = websocket.create_connection(url, timeout=CALL_TIMEOUT, suppress_origin=True)
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one command and return its result.

        :raises ChromiumError: when Chromium returns an error for the command.
        """
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise ChromiumError(f"{method} failed: {message['error']}")
                return dict(message.get("result", {}))
            if "method" in message:
                self.events.append(message)

    def close(self) -> None:
        self._socket.close()


class Page:
    """A browser tab: navigation, script evaluation, input and screenshots."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        connection.call("Page.enable")
        connection.call("Runtime.enable")

    def navigate(self, url: str, timeout: float = 60.0) -> None:
        self.connection.call("Page.navigate", {"url": url})
        self.wait_for("document.readyState === 'complete'", timeout, f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        """Return the JSON value of `expression`, awaiting it when it is a promise.

        :raises ChromiumError: with the exception's text when the script throws.
        """
        result = self.connection.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise ChromiumError(f"script failed: {text}\n{expression[:300]}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Evaluate `expression` until it returns a truthy value, and return that value.

        :raises TimeoutError: naming `what` and the last value when time runs out.
        """
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except ChromiumError as exc:
                # A redirect (the login page does one) can replace the document while the
                # expression runs; the next poll evaluates it in the new document.
                if not any(text in str(exc) for text in NAVIGATION_ERRORS):
                    raise
                value = None
            if value:
                return value
            time.sleep(POLL_SECONDS)
        raise TimeoutError(f"waited {timeout:.0f} s for {what}; last value: {value!r}")

    def click_at(self, x: float, y: float) -> None:
        """Click with the mouse at viewport coordinates, as a user would (trusted events)."""
        for event in ("mousePressed", "mouseReleased"):
            self.connection.call(
                "Input.dispatchMouseEvent",
                {"type": event, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    def insert_text(self, text: str) -> None:
        """Type `text` into the focused element."""
        self.connection.call("Input.insertText", {"text": text})

    def set_color_scheme(self, scheme: str) -> None:
        """Emulate the system theme: ``light`` or ``dark``."""
        features = [{"name": "prefers-color-scheme", "value": scheme}]
        self.connection.call("Emulation.setEmulatedMedia", {"features": features})

    def screenshot(self, path: Path) -> Path:
        data = self.connection.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def script_errors(self) -> list[tuple[str, str]]:
        """Return (script URL, text) of uncaught exceptions and console errors so far."""
        errors = []
        for event in self.connection.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                text = details.get("exception", {}).get("description") or str(details)
                errors.append((str(details.get("url", "")), text))
            elif event["method"] == "Runtime.consoleAPICalled" and params.get("type") == "error":
                frames = params.get("stackTrace", {}).get("callFrames", [])
                url = str(frames[0].get("url", "")) if frames else ""
                args = params.get("args", [])
                errors.append((url, " ".join(str(arg.get("value", "")) for arg in args)))
        return errors


class Chromium:
    """Headless Chromium with a fresh profile in `profile_dir`, listening on 127.0.0.1.

    :param window: the window size in pixels, which is also the screenshot size.
    """

    def __init__(
        self, profile_dir: Path, *, binary: Path = CHROMIUM, window: tuple[int, int] = (1400, 1000)
    ) -> None:
        self.profile_dir = Path(profile_dir)
        self.binary = binary
        self.window = window
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._browser: Connection | None = None
        self._pages: list[Page] = []

    def start(self) -> Chromium:
        """Start Chromium and connect to its browser endpoint.

        :raises ChromiumError: with the tail of Chromium's log when it does not start.
        """
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.profile_dir.parent / "chromium.log"
        argv = [
            str(self.binary),
            *FLAGS,
            f"--user-data-dir={self.profile_dir}",
            f"--window-size={self.window[0]},{self.window[1]}",
            "about:blank",
        ]
        with log_path.open("wb") as output:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("Started Chromium as pid %d (log: %s)", self._process.pid, log_path)
        port, browser_path = self._read_active_port(log_path)
        self.port = port
        self._browser = Connection(f"ws://127.0.0.1:{port}{browser_path}")
        return self

    def _read_active_port(self, log_path: Path) -> tuple[int, str]:
        marker = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                break
            lines = marker.read_text().splitlines() if marker.exists() else []
            if len(lines) >= 2:
                return int(lines[0]), lines[1]
            time.sleep(0.1)
        log_text = log_path.read_text(errors="replace")[-3000:]
        raise ChromiumError(f"Chromium did not open its DevTools port; log {log_path}:\n{log_text}")

    def new_page(self) -> Page:
        """Open a tab in a new browser context, with cookies of its own."""
        if self._browser is None or self.port is None:
            raise ChromiumError("Chromium is not started; call start() first")
        context = self._browser.call("Target.createBrowserContext")["browserContextId"]
        target = self._browser.call(
            "Target.createTarget", {"url": "about:blank", "browserContextId": context}
        )["targetId"]
        page = Page(Connection(f"ws://127.0.0.1:{self.port}/devtools/page/{target}"))
        width, height = self.window
        page.connection.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self._pages.append(page)
        return page

    def version(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/version", timeout=10) as r:
            return str(json.load(r)["Browser"])

    def stop(self) -> None:
        """Close the connections and end Chromium and its child processes."""
        for page in self._pages:
            page.connection.close()
        if self._browser is not None:
            self._browser.close()
        process = self._process
        if process is None:
            return
        # Chromium runs in a session of its own, so its process group contains its helpers.
        _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10.0
        while _group_alive(process.pid) and time.monotonic() < deadline:
            process.poll()
            time.sleep(0.1)
        if _group_alive(process.pid):
            log.warning("Chromium group %d still alive 10 s after SIGTERM; killing it", process.pid)
            _signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
