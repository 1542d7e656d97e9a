"""Tasks as RPC requests: POST a JSON body to a service and read the Bistro status it returns.

`BistroHttpOperator` sends one POST with the standard library's urllib. The service's
response means:

* 2xx with an empty body: ``done``;
* 2xx with a JSON object ``{"status": S, "data": {...}}``: status S, one of ``done``,
  ``incomplete``, ``incomplete_backoff``, ``error_backoff`` (or ``backoff``) and
  ``failed``; ``data`` is optional;
* anything else (another code, a 2xx body without a valid status, a timeout, a refused
  connection): ``error_backoff``.

The operator contacts only 127.0.0.1 and the hosts named in `allowed_hosts` or in
`[bistro] http_allowed_hosts`; it follows no redirects and ignores proxy settings, so a
request never goes anywhere else. Inside a Bistro operator job (see
`bistro_provider.operators.wrapped`) the status becomes the task's Bistro status. Used on
its own, ``done`` succeeds and every other status fails the task.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from bistro_provider.exceptions import BistroFailed, BistroIncomplete

DEFAULT_ALLOWED_HOSTS = ("127.0.0.1",)
MAX_RESPONSE_BYTES = 1 << 20
"""Response bodies are read up to this size; a larger one is not a valid status."""
_PREVIEW_CHARS = 300


class BistroHttpError(RuntimeError):
    """The request failed, or the response carries no valid status; Bistro backs off."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Turn every redirect into an error response, so only the checked host is contacted."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str):
        return None


class BistroHttpOperator(BaseOperator):
    """POST `body` as JSON to `url` and report the status the service returns.

    :param url: an http or https URL, templated, for example
        ``http://127.0.0.1:8000/task/{{ bistro.node }}``.
    :param body: any JSON value, templated (strings inside it are rendered).
    :param headers: more request headers, templated.
    :param timeout: seconds to wait for the connection and for each read.
    :param allowed_hosts: host names or IP addresses besides 127.0.0.1 that may be contacted.
    """

    template_fields: Sequence[str] = ("url", "body", "headers")
    ui_color = "#e0f2f1"

    def __init__(
        self,
        *,
        url: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
        allowed_hosts: Sequence[str] = (),
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.url = url
        self.body = {} if body is None else body
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.allowed_hosts = tuple(allowed_hosts)

    def execute(self, context: Any) -> Any:
        check_target(self.url, self._allowed_hosts())
        code, raw = self._post()
        if not 200 <= code < 300:
            raise BistroHttpError(f"POST {self.url} returned HTTP {code}: {_preview(raw)}")
        return status_from_body(raw, self.url)

    def _allowed_hosts(self) -> set[str]:
        from airflow.sdk.configuration import conf

        configured = conf.get("bistro", "http_allowed_hosts", fallback="") or ""
        names = [*DEFAULT_ALLOWED_HOSTS, *self.allowed_hosts, *configured.split(",")]
        return {name.strip().lower().strip("[]") for name in names if name.strip()}

    def _post(self) -> tuple[int, bytes]:
        data = json.dumps(self.body).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        headers.update(self.headers)
        request = urllib.request.Request(self.url, data=data, method="POST", headers=headers)
        # An empty ProxyHandler ignores the http_proxy and https_proxy environment variables.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects)
        self.log.info("POST %s (%d bytes)", self.url, len(data))
        try:
            with opener.open(request, timeout=self.timeout) as response:
                return int(response.status), response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read(MAX_RESPONSE_BYTES + 1)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BistroHttpError(f"POST {self.url} failed: {reason}") from exc


def check_target(url: str, allowed_hosts: set[str]) -> None:
    """Raise `BistroFailed` unless `url` is http(s) and its host is in `allowed_hosts`.

    Retrying cannot fix a URL that is not allowed, so the task fails at once.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BistroFailed(f"invalid URL {url!r}: the scheme must be http or https")
    host = (parts.hostname or "").lower()
    if host not in allowed_hosts:
        raise BistroFailed(
            f"host {host or '(none)'!r} of {url!r} is not allowed; allowed hosts: "
            f"{', '.join(sorted(allowed_hosts))}. Add it to allowed_hosts= or to "
            "[bistro] http_allowed_hosts"
        )


def status_from_body(raw: bytes, url: str) -> Any:
    """Return the parsed body for ``done``, or raise the exception of any other status."""
    if len(raw) > MAX_RESPONSE_BYTES:
        raise BistroHttpError(f"the response of {url} is over {MAX_RESPONSE_BYTES} bytes")
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BistroHttpError(f"the response of {url} is not JSON: {_preview(raw)}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise BistroHttpError(
            f'the response of {url} has no "status" string: {_preview(raw)}; send '
            '{"status": "done"} or an empty body'
        )
    status = body["status"]
    data = body.get("data") if isinstance(body.get("data"), dict) else None
    message = str(body.get("message", ""))
    if status == "done":
        return body
    if status in ("incomplete", "incomplete_backoff"):
        raise BistroIncomplete(message, backoff=status == "incomplete_backoff", data=data)
    if status == "failed":
        raise BistroFailed(message or f"{url} reported failed", data=data)
    if status in ("error_backoff", "backoff"):
        raise BistroHttpError(f"{url} reported error_backoff: {message or _preview(raw)}")
    raise BistroHttpError(
        f"{url} returned the unknown status {status!r}; expected done, incomplete, "
        "incomplete_backoff, error_backoff or failed"
    )


def _preview(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return repr(text[:_PREVIEW_CHARS]) if text else "(empty body)"
