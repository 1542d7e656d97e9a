"""The forest page in headless Chromium, inside Airflow's own UI, during a real run.

A real api-server and scheduler run BistroExecutor on 127.0.0.1 with two users, admin and
viewer. One job has a task per database, 12 databases on 3 hosts, and each host allows 2
tasks at once, so 6 tasks run and 6 wait. The tasks keep their slots until the test
creates a release file, so the hosts stay full for as long as the checks look at them.

Chromium logs in through Airflow's login page and opens the plugin page at
``/plugin/bistro-forest``, where Airflow shows the forest page in a sandboxed iframe. The
checks read the iframe's DOM and click with real mouse events. Screenshots go to
``artifacts/ui/``. With ``BISTRO_UI_DOCS_IMAGE=1`` the light screenshot of the run also
replaces ``docs/images/forest-view.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bistro_provider.cli.state_commands import dag_file_text
from demo.stack import AirflowStack

try:
    from tests.e2e.chromium import Chromium, Page
    from tests.e2e.forest_ui import (
        FRAME,
        PAGE_TIMEOUT,
        PLUGIN_PATH,
        banner_text,
        click,
        detail_usage,
        expand_level,
        host_fills,
        in_frame,
        log_in,
        open_node,
        page_colors,
        show_forest,
        type_into,
        wait_for_limit,
    )
except ImportError as exc:  # websocket-client is not installed
    CLIENT_IMPORT_ERROR: ImportError | None = exc
else:
    CLIENT_IMPORT_ERROR = None

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_PATH = Path("/usr/bin/chromium")
ARTIFACTS = REPO_ROOT / "artifacts" / "ui"
DOCS_IMAGE = REPO_ROOT / "docs" / "images" / "forest-view.png"
EXECUTOR = "bistro_provider.executors.bistro_executor.BistroExecutor"
API = "/bistro/api/v1"

JOB = "vacuum"
DAG_ID = f"bistro_{JOB}"
HOSTS = {f"host{h}": [f"db{h}{d}" for d in range(1, 5)] for h in range(1, 4)}
HOST_LIMIT = 2
RUNNING_TASKS = HOST_LIMIT * len(HOSTS)
DATABASES = sum(len(dbs) for dbs in HOSTS.values())
RUN_TIMEOUT = 240.0

# The job's command. Bistro's protocol appends the node, the status pipe and a JSON
# argument. The task keeps its slot until the release file exists, for at most 10 minutes.
HOLD_TASK = """\
import os, sys, time
release, node, status_pipe = sys.argv[1], sys.argv[2], sys.argv[3]
deadline = time.monotonic() + 600
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.2)
with open(status_pipe, "w") as pipe:
    pipe.write("done\\n")
"""

# -- the stack and the run -----------------------------------------------------------------


@dataclass
class RunningJob:
    stack: AirflowStack
    passwords: dict[str, str]
    admin_token: str
    run_id: str


def bistro_config(release: Path) -> dict[str, Any]:
    return {
        "bistro_settings": {
            "enabled": True,
            "nodes": {
                "levels": ["host", "db"],
                "node_order": "lexicographic",
                "node_sources": [{"source": "manual", "prefs": HOSTS}],
            },
            "resources": {
                "host": {"host_slots": {"limit": HOST_LIMIT, "default": 1}},
                "db": {"db_conns": {"limit": 1, "default": 1}},
            },
        },
        f"bistro_job->{JOB}": {
            "owner": "ui-test",
            "command": [sys.executable, "-c", HOLD_TASK, str(release)],
        },
    }


def rest(stack: AirflowStack, token: str, method: str, path: str, body: Any = None) -> Any:
    """Send one REST request with a bearer token and return the decoded JSON body."""
    headers = {"Accept": "application/json", "Authorization": f"Bearer {token}"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        stack.base_url + path, data=data, method=method, headers=headers
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def log_in_by_api(stack: AirflowStack, user: str, password: str) -> str:
    request = urllib.request.Request(
        f"{stack.base_url}/auth/token",
        data=json.dumps({"username": user, "password": password}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(json.load(response)["access_token"])


def trigger(stack: AirflowStack, token: str) -> str:
    """Wait for the job's DAG, unpause it, and return the id of a new manual run."""
    path = f"/api/v2/dags/{DAG_ID}"
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        try:
            rest(stack, token, "GET", path)
            break
        except urllib.error.HTTPError as exc:
            if exc.code != 404 or time.monotonic() > deadline:
                raise
        time.sleep(1.0)
    rest(stack, token, "PATCH", path, {"is_paused": False})
    run = rest(stack, token, "POST", f"{path}/dagRuns", {"logical_date": None, "conf": {}})
    return str(run["dag_run_id"])


def wait_until_hosts_fill(stack: AirflowStack, token: str) -> None:
    """Wait until every host runs its maximum and further tasks wait."""
    deadline = time.monotonic() + RUN_TIMEOUT
    running: list[Any] = []
    waiting: list[Any] = []
    while time.monotonic() < deadline:
        running = rest(stack, token, "GET", f"{API}/running")["tasks"]
        waiting = rest(stack, token, "GET", f"{API}/waiting")["tasks"]
        if len(running) == RUNNING_TASKS and waiting:
            return
        time.sleep(1.0)
    raise TimeoutError(
        f"after {RUN_TIMEOUT:.0f} s {len(running)} tasks run and {len(waiting)} wait; expected "
        f"{RUNNING_TASKS} running and some waiting\n{stack.logs_tail()}"
    )


def require_browser() -> None:
    """Skip when Chromium or the DevTools client is missing, but fail when CI is set."""
    problem = None
    if not CHROMIUM_PATH.is_file():
        problem = f"{CHROMIUM_PATH} is missing; install it with: apt-get install -y chromium"
    elif CLIENT_IMPORT_ERROR is not None:
        problem = f"websocket-client is missing ({CLIENT_IMPORT_ERROR}); pip install -e '.[test]'"
    if problem is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI is set, so the browser tests must run: {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningJob]:
    require_browser()
    root = tmp_path_factory.mktemp("ui_browser")
    release = root / "release"
    config_path = root / "bistro.json"
    config_path.write_text(json.dumps(bistro_config(release)))
    dags = root / "dags"
    dags.mkdir()
    (dags / "bistro_jobs.py").write_text(dag_file_text(str(config_path)))
    env = {
        "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
        "AIRFLOW__CORE__PARALLELISM": "32",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
        "AIRFLOW__BISTRO__CONFIG_FILE": str(config_path),
        "AIRFLOW__BISTRO__WORKER_PROCESSES": "8",
        "PYTHONPATH": str(REPO_ROOT),
    }
    with AirflowStack(root / "home", dags, env) as stack:
        try:
            passwords_file = stack.home / "simple_auth_manager_passwords.json.generated"
            passwords = json.loads(passwords_file.read_text())
            token = log_in_by_api(stack, "admin", passwords["admin"])
            run_id = trigger(stack, token)
            wait_until_hosts_fill(stack, token)
            yield RunningJob(stack, passwords, token, run_id)
        finally:
            release.write_text("release")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    require_browser()
    with Chromium(tmp_path_factory.mktemp("chromium") / "profile") as chromium:
        yield chromium


@pytest.fixture(scope="module")
def admin(browser: Chromium, run: RunningJob) -> Page:
    page = browser.new_page()
    log_in(page, run.stack.base_url, "admin", run.passwords["admin"])
    return page


@pytest.fixture(scope="module")
def viewer(browser: Chromium, run: RunningJob) -> Page:
    page = browser.new_page()
    log_in(page, run.stack.base_url, "viewer", run.passwords["viewer"])
    return page


def set_filter(page: Page, selector: str, value: str, event: str) -> None:
    """Set a filter control's value and send the event the page listens to."""
    page.evaluate(
        in_frame(
            f"const field = doc.querySelector({json.dumps(selector)});"
            f" field.value = {json.dumps(value)};"
            f" field.dispatchEvent(new Event({json.dumps(event)})); return true;"
        )
    )


def screenshot(page: Page, name: str) -> Path:
    return page.screenshot(ARTIFACTS / name)


# -- tests ---------------------------------------------------------------------------------


def test_forest_page_is_embedded_in_airflow(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    source = admin.evaluate(f"{FRAME}.getAttribute('src')")
    sandbox = admin.evaluate(f"{FRAME}.getAttribute('sandbox')")
    assert admin.evaluate("location.pathname").startswith(PLUGIN_PATH)
    assert urllib.parse.urlparse(source).path == "/bistro/ui/"
    assert "allow-scripts" in sandbox.split()
    assert "allow-same-origin" in sandbox.split()


def test_levels_are_collapsed_at_first(browser: Chromium, run: RunningJob) -> None:
    page = browser.new_page()
    log_in(page, run.stack.base_url, "admin", run.passwords["admin"])
    expanded = page.evaluate(
        in_frame(
            "return [...doc.querySelectorAll('.level-toggle')]"
            ".map((b) => b.getAttribute('aria-expanded'));"
        )
    )
    rows = page.evaluate(in_frame("return doc.querySelectorAll('tr[data-level]').length;"))
    assert expanded
    assert set(expanded) == {"false"}
    assert rows == 0


def test_full_host_is_shown_during_run(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    expand_level(admin, "host")
    fills = host_fills(admin)
    bars = admin.evaluate(
        in_frame(
            "return [...doc.querySelectorAll('tr[data-level=\"host\"] .usage')]"
            ".map((bar) => ({...bar.dataset}));"
        )
    )
    assert sorted(fills) == sorted(HOSTS)
    assert set(fills.values()) == {"full"}
    assert {bar["resource"] for bar in bars} == {"host_slots"}
    assert {(bar["used"], bar["limit"], bar["state"]) for bar in bars} == {("2", "2", "full")}


def test_job_progress_counts_tasks(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    counts = admin.wait_for(
        in_frame(
            f"const row = doc.querySelector('#jobs tr[data-job=\"{JOB}\"]');"
            " if (!row) return null;"
            " return Object.fromEntries([...row.querySelectorAll('[data-category]')]"
            ".map((item) => [item.dataset.category, Number(item.dataset.count)]));"
        ),
        PAGE_TIMEOUT,
        "the job's progress",
    )
    assert counts["running"] == RUNNING_TASKS
    assert counts["waiting"] == DATABASES - RUNNING_TASKS
    assert counts["done"] == 0
    assert counts["failed"] == 0


def test_filters_narrow_the_node_rows(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    expand_level(admin, "db")
    type_into(admin, "#filter-query", "db2")
    by_name = admin.wait_for(
        in_frame(
            "const rows = [...doc.querySelectorAll('tr[data-level=\"db\"]')];"
            " const names = rows.map((r) => r.dataset.node);"
            " return names.length === 4 ? names : null;"
        ),
        PAGE_TIMEOUT,
        "only the databases whose names contain db2",
    )
    set_filter(admin, "#filter-query", "", "input")
    set_filter(admin, "#filter-state", "full", "change")
    full = admin.wait_for(
        in_frame(
            "const rows = [...doc.querySelectorAll('tr[data-level=\"db\"]')];"
            f" return rows.length === {RUNNING_TASKS} ? rows.map((r) => r.dataset.fill) : null;"
        ),
        PAGE_TIMEOUT,
        "only the full databases",
    )
    set_filter(admin, "#filter-state", "", "change")
    admin.wait_for(
        in_frame(f"return doc.querySelectorAll('tr[data-level=\"db\"]').length === {DATABASES};"),
        PAGE_TIMEOUT,
        "every database again after the filters were cleared",
    )
    assert sorted(by_name) == HOSTS["host2"]
    assert set(full) == {"full"}


def test_waiting_task_shows_its_reason(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    rows = admin.wait_for(
        in_frame(
            "const rows = [...doc.querySelectorAll('#waiting tbody tr')];"
            " return rows.length ? rows.map((r) => [r.dataset.node,"
            " r.querySelector('.reason').textContent]) : null;"
        ),
        PAGE_TIMEOUT,
        "waiting tasks",
    )
    reasons = dict(rows)
    all_dbs = {db for dbs in HOSTS.values() for db in dbs}
    assert set(reasons) <= all_dbs
    assert all("host_slots needs 1, 2/2 in use" in reason for reason in reasons.values())
    assert all(reason.startswith("waiting for host '") for reason in reasons.values())


def test_task_links_open_airflow_task_instance(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    links = admin.wait_for(
        in_frame(
            "const row = doc.querySelector('#running tbody tr');"
            " if (!row) return null;"
            " const ti = row.querySelector('.ti-link'); const log = row.querySelector('.log-link');"
            " return {ti: ti.href, log: log.href, target: log.target};"
        ),
        PAGE_TIMEOUT,
        "a running task's links",
    )
    run_path = f"/dags/{DAG_ID}/runs/{urllib.parse.quote(run.run_id, safe='')}/tasks/run/mapped/"
    ti_path = urllib.parse.urlparse(links["ti"]).path
    log_path = urllib.parse.urlparse(links["log"]).path
    assert ti_path.startswith(run_path)
    assert ti_path.endswith("/details")
    assert log_path.startswith(run_path)
    assert log_path.removeprefix(run_path).isdigit()
    assert links["target"] == "_top"


def test_node_details_list_holders_and_waiters(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    open_node(admin, "host", "host1")
    detail = admin.evaluate(
        in_frame(
            "const panel = doc.querySelector('#detail');"
            " return {path: panel.querySelector('.detail-path').textContent,"
            " holders: [...panel.querySelectorAll('.holders li')].map((li) => li.dataset.node),"
            " waiters: [...panel.querySelectorAll('.waiters li')].map((li) => li.dataset.node)};"
        )
    )
    shot = screenshot(admin, "forest-light.png")
    if os.environ.get("BISTRO_UI_DOCS_IMAGE") == "1":
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOCS_IMAGE)
    assert detail["path"] == "instance›host1"
    assert len(detail["holders"]) == HOST_LIMIT
    assert set(detail["holders"]) <= set(HOSTS["host1"])
    assert detail["waiters"]
    assert set(detail["waiters"]) <= set(HOSTS["host1"])


def test_capacity_override_changes_shown_limit(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    open_node(admin, "host", "host2")
    type_into(admin, '#detail input[data-resource="host_slots"]', "1")
    click(admin, '#detail .resource-edit[data-resource="host_slots"] .set-capacity')
    lowered = wait_for_limit(admin, "host_slots", 1)
    fills_lowered = host_fills(admin)
    screenshot(admin, "forest-over-limit.png")
    click(admin, '#detail .resource-edit[data-resource="host_slots"] .clear-capacity')
    restored = wait_for_limit(admin, "host_slots", HOST_LIMIT)
    assert lowered["used"] == "2"
    assert lowered["state"] == "over"
    assert fills_lowered["host2"] == "over"
    assert restored["state"] == "full"
    assert "override" not in (
        admin.evaluate(in_frame("return doc.querySelector('#detail .usage-value').textContent;"))
        or ""
    )


def test_dark_mode_follows_system_and_toggle(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    light_background, light_text = page_colors(admin)
    admin.set_color_scheme("dark")
    try:
        admin.wait_for(
            in_frame("return getComputedStyle(doc.body).backgroundColor !== 'rgb(246, 247, 249)';"),
            PAGE_TIMEOUT,
            "the dark theme",
        )
        open_node(admin, "host", "host3")
        dark_background, dark_text = page_colors(admin)
        screenshot(admin, "forest-dark.png")
        click(admin, "#theme-toggle")
        forced = admin.evaluate(in_frame("return doc.documentElement.dataset.theme || null;"))
        forced_background, _ = page_colors(admin)
        click(admin, "#theme-toggle")
        click(admin, "#theme-toggle")
        choice = admin.evaluate(in_frame("return doc.querySelector('#theme-toggle').textContent;"))
    finally:
        admin.set_color_scheme("light")
    assert light_background > 0.9
    assert light_text < 0.2
    assert dark_background < 0.1
    assert dark_text > 0.7
    assert forced == "light"
    assert forced_background > 0.9
    assert choice == "Theme: auto"


def test_viewer_capacity_change_is_rejected(viewer: Page, run: RunningJob) -> None:
    show_forest(viewer, run.stack.base_url)
    open_node(viewer, "host", "host1")
    type_into(viewer, '#detail input[data-resource="host_slots"]', "1")
    click(viewer, '#detail .resource-edit[data-resource="host_slots"] .set-capacity')
    message = banner_text(viewer, "forbidden:capacity")
    disabled = viewer.evaluate(
        in_frame("return doc.querySelector('#detail .set-capacity').disabled;")
    )
    screenshot(viewer, "forest-viewer-rejected.png")
    host1 = rest(run.stack, run.admin_token, "GET", f"{API}/forest?level=host&query=host1")
    assert "HTTP 403" in message
    assert "edit pools" in message
    assert disabled is True
    assert host1["nodes"][0]["overrides"] == {}
    assert detail_usage(viewer, "host_slots")["limit"] == str(HOST_LIMIT)


def test_viewer_kill_is_rejected(viewer: Page, run: RunningJob) -> None:
    show_forest(viewer, run.stack.base_url)
    click(viewer, "#running tbody tr button.danger")
    click(viewer, "#running tbody tr button.danger")
    message = banner_text(viewer, "forbidden:tasks")
    disabled = viewer.evaluate(
        in_frame(
            "return [...doc.querySelectorAll('#running tbody button.danger')]"
            ".every((b) => b.disabled);"
        )
    )
    running = rest(run.stack, run.admin_token, "GET", f"{API}/running")["tasks"]
    assert "HTTP 403" in message
    assert disabled is True
    assert len(running) == RUNNING_TASKS


def test_admin_kill_and_forgive_are_applied(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    killed = admin.wait_for(
        in_frame(
            "const row = doc.querySelector('#running tbody tr');"
            " return row ? {ti: row.dataset.tiId, node: row.dataset.node} : null;"
        ),
        PAGE_TIMEOUT,
        "a running task",
    )
    kill_button = f'#running tbody tr[data-ti-id="{killed["ti"]}"] button.danger'
    click(admin, kill_button)
    click(admin, kill_button)
    kill_message = banner_text(admin, "action")
    admin.wait_for(
        in_frame(f"return !doc.querySelector('#running tr[data-ti-id=\"{killed['ti']}\"]');"),
        PAGE_TIMEOUT,
        "the killed task to leave the running tasks",
    )

    forgive_button = f'#jobs tr[data-job="{JOB}"] button.danger'
    click(admin, forgive_button)
    click(admin, forgive_button)
    forgive_message = admin.wait_for(
        in_frame(
            "const banner = doc.querySelector('[data-banner=\"action\"]');"
            " return banner && banner.textContent.includes('forgive') ? banner.textContent : null;"
        ),
        PAGE_TIMEOUT,
        "the forgive result",
    )

    audit = rest(run.stack, run.admin_token, "GET", f"{API}/audit?limit=20")["entries"]
    actions = [(entry["user"], entry["action"]) for entry in audit]
    assert kill_message.startswith(f"Done: kill {JOB} on {killed['node']}")
    assert forgive_message.startswith(f"Done: forgive job {JOB}")
    assert ("admin", "kill_task") in actions
    assert ("admin", "forgive_job") in actions


def test_page_throws_no_script_errors(admin: Page, viewer: Page) -> None:
    errors = [
        text for url, text in admin.script_errors() + viewer.script_errors() if "/bistro/" in url
    ]
    assert errors == []


def test_log_link_navigates_airflow_window(admin: Page, run: RunningJob) -> None:
    show_forest(admin, run.stack.base_url)
    click(admin, "#running tbody tr .log-link")
    path = admin.wait_for(
        "location.pathname.includes('/tasks/run/mapped/') ? location.pathname : null",
        PAGE_TIMEOUT,
        "Airflow's task instance page",
    )
    assert path.startswith(f"/dags/{DAG_ID}/runs/")
