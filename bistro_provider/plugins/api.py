"""The provider's REST API: a FastAPI app that Airflow's api-server mounts at ``/bistro``.

Every route needs a logged-in Airflow user, checked by Airflow's own security dependencies,
which accept the ``Authorization: Bearer`` header or the UI's ``_token`` cookie. Reads need
nothing more. Killing a task and forgiving a job need permission to edit task instances of
DAGs, which is what marking a task failed needs in Airflow's own API. Capacity overrides
need permission to edit pools, because they play the role of pool slots, and so do saving
and deleting jobs, which change the same config. With Airflow's SimpleAuthManager that means
role USER for the former and OP for the latter.

The OpenAPI schema and Swagger page are served at ``/bistro/openapi.json`` and
``/bistro/docs`` to logged-in users only.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import (
    GetUserDep,
    requires_access_dag,
    requires_access_pool,
    requires_authenticated,
)
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from bistro_provider import __version__
from bistro_provider.plugins.forest_page import forest_page
from bistro_provider.state import BistroState, StateError
from bistro_provider.state.monitor import handle_monitor
from bistro_provider.state.schemas import (
    AuditResponse,
    CapacityRequest,
    CapacityResponse,
    ClearCapacityResponse,
    ErrorsResponse,
    ExplainResponse,
    ForestResponse,
    ForgiveResponse,
    HistogramResponse,
    JobEditResponse,
    JobInfo,
    JobsResponse,
    KillRequest,
    KillResponse,
    RunningResponse,
    SaveJobRequest,
    WaitingResponse,
)

log = logging.getLogger(__name__)

TITLE = "Bistro"
DESCRIPTION = (
    "Resource-forest scheduling state of the Bistro provider: node usage, jobs, running and "
    "waiting tasks, and operator actions. Authenticate as for Airflow's REST API: a JWT from "
    "POST /auth/token in the Authorization header, or the UI's _token cookie."
)
HTTP_STATUS = {"invalid": 400, "not_found": 404, "conflict": 409}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not authenticated"},
    403: {"description": "Invalid token, or the user lacks the permission"},
}

app = FastAPI(
    title=TITLE,
    description=DESCRIPTION,
    version=__version__,
    docs_url=None,
    redoc_url=None,
    openapi_url=None,
)

AUTHENTICATED = [Depends(requires_authenticated())]
# NOTE: the check names no DAG, so with the FAB auth manager it needs edit permission on
# all DAGs. A user allowed to edit only the job DAGs is rejected.
EDIT_TASKS = [
    Depends(requires_access_dag(method="PUT", access_entity=DagAccessEntity.TASK_INSTANCE))
]

router = APIRouter(prefix="/api/v1", dependencies=AUTHENTICATED, responses=ERROR_RESPONSES)


@app.exception_handler(StateError)
async def _state_error(request: Request, exc: StateError) -> JSONResponse:
    return JSONResponse(status_code=HTTP_STATUS[exc.kind], content={"detail": str(exc)})


def _user_name(user: BaseUser) -> str:
    return user.get_name()


# -- reads ---------------------------------------------------------------------------------


@router.get("/forest", response_model=ForestResponse)
def get_forest(
    session: SessionDep,
    level: Annotated[str | None, Query(description="Only nodes of this level")] = None,
    query: Annotated[str | None, Query(description="Only nodes whose name contains this")] = None,
    tag: Annotated[str | None, Query(description="Only nodes with this tag")] = None,
    state: Annotated[
        str | None, Query(description="Only this fill state: free|busy|full|over")
    ] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int | None, Query(ge=0, description="At most this many nodes")] = None,
) -> dict[str, Any]:
    """Return nodes with their capacity, usage, overrides and fill state."""
    return BistroState.load(session).forest(level, query, tag, state, offset, limit)


@router.get("/jobs", response_model=JobsResponse)
def get_jobs(session: SessionDep) -> dict[str, Any]:
    """Return every job with its effective config, errors, progress and histograms."""
    return BistroState.load(session).jobs()


@router.get("/jobs/{job}", response_model=JobInfo, responses={404: {"description": "Unknown job"}})
def get_job(job: str, session: SessionDep) -> dict[str, Any]:
    """Return one job, as in the list of jobs."""
    return BistroState.load(session).job_info(job)


@router.get("/running", response_model=RunningResponse)
def get_running(session: SessionDep) -> dict[str, Any]:
    """Return the admitted tasks and their holdings."""
    return BistroState.load(session).running()


@router.get("/waiting", response_model=WaitingResponse)
def get_waiting(session: SessionDep) -> dict[str, Any]:
    """Return queued tasks that wait for resources, with the reason each waits."""
    return BistroState.load(session).waiting()


@router.get("/histogram", response_model=HistogramResponse, response_model_exclude_none=True)
def get_histogram(
    session: SessionDep,
    jobs: Annotated[
        list[str] | None, Query(description="Jobs to include; all when omitted")
    ] = None,
    num_samples: Annotated[int, Query(ge=0, description="Node names per status bit set")] = 0,
) -> dict[str, Any]:
    """Return Bistro's status histograms, with Bistro's encoding of status bits."""
    return BistroState.load(session).histogram(jobs, num_samples)


@router.get("/errors", response_model=ErrorsResponse)
def get_errors(session: SessionDep) -> dict[str, Any]:
    """Return config, node-source and job errors."""
    return BistroState.load(session).errors()


@router.get("/audit", response_model=AuditResponse)
def get_audit(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=10000)] = 100
) -> dict[str, Any]:
    """Return the newest audit entries first: kills, forgives, capacity changes and job edits."""
    return BistroState.load(session).audit(limit)


@router.get("/explain", response_model=ExplainResponse)
def get_explain(
    session: SessionDep,
    job: Annotated[str, Query(description="Job name")],
    node: Annotated[str, Query(description="Task node name")],
) -> dict[str, Any]:
    """Explain why the task of a job on a node is running, waiting, done or not runnable."""
    return BistroState.load(session).explain(job, node)


# -- actions -------------------------------------------------------------------------------


@router.post("/tasks/kill", response_model=KillResponse, dependencies=EDIT_TASKS)
def post_kill(body: KillRequest, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
    """Mark a running task instance failed; Airflow then stops its process."""
    state = BistroState.load(session)
    result = state.kill_task(_user_name(user), ti_id=body.ti_id, job=body.job, node=body.node)
    session.commit()
    return result


@router.post("/jobs/{job}/forgive", response_model=ForgiveResponse, dependencies=EDIT_TASKS)
def post_forgive(job: str, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
    """Let a job's failed tasks run again, and restart its backoffs from the first delay."""
    result = BistroState.load(session).forgive_job(_user_name(user), job)
    session.commit()
    return result


@router.put(
    "/capacity",
    response_model=CapacityResponse,
    dependencies=[Depends(requires_access_pool("PUT"))],
)
def put_capacity(body: CapacityRequest, user: GetUserDep, session: SessionDep) -> dict[str, Any]:
    """Set a node's live limit for one resource; the executor applies it within seconds."""
    state = BistroState.load(session)
    result = state.set_capacity(_user_name(user), body.level, body.node, body.resource, body.amount)
    session.commit()
    return result


@router.delete(
    "/capacity",
    response_model=ClearCapacityResponse,
    dependencies=[Depends(requires_access_pool("DELETE"))],
)
def delete_capacity(
    user: GetUserDep,
    session: SessionDep,
    level: Annotated[str, Query()],
    node: Annotated[str, Query()],
    resource: Annotated[str | None, Query(description="Only this resource; all if omitted")] = None,
) -> dict[str, Any]:
    """Remove a node's live limits, so the config and node-source limits apply again."""
    result = BistroState.load(session).clear_capacity(_user_name(user), level, node, resource)
    session.commit()
    return result


@router.put(
    "/jobs/{job}",
    response_model=JobEditResponse,
    dependencies=[Depends(requires_access_pool("PUT"))],
    responses={
        400: {"description": "Invalid job, or the config source is read-only"},
        404: {"description": "The config file or Variable does not exist"},
        409: {"description": "expected_version is not the job's current version"},
    },
)
def put_job(
    job: str, body: SaveJobRequest, user: GetUserDep, session: SessionDep
) -> dict[str, Any]:
    """Create or replace a job in the config source; its version_id goes up by one."""
    result = BistroState.load(session).save_job(
        _user_name(user), job, body.job, body.expected_version
    )
    session.commit()
    return result


@router.delete(
    "/jobs/{job}",
    response_model=JobEditResponse,
    dependencies=[Depends(requires_access_pool("DELETE"))],
    responses={
        404: {"description": "Unknown job"},
        409: {"description": "expected_version is not the job's current version"},
    },
)
def delete_job(
    job: str,
    user: GetUserDep,
    session: SessionDep,
    expected_version: Annotated[
        int, Query(description="The version_id the job had when it was read")
    ],
) -> dict[str, Any]:
    """Delete a job from the config source if it is still at the expected version."""
    result = BistroState.load(session).delete_job(_user_name(user), job, expected_version)
    session.commit()
    return result


app.include_router(router)


# -- Bistro compatibility ------------------------------------------------------------------


@app.post("/api/monitor", responses=ERROR_RESPONSES)
async def post_monitor(request: Request, user: GetUserDep) -> JSONResponse:
    """Bistro's monitor protocol: ``{"q1": {"handler": "jobs"}}`` in, ``{"q1": {"data": ...}}``
    out. Handlers: jobs, running_tasks, job_node_runtime, histogram, nodes,
    sorted_node_names, errors, refresh_time, kill_task, forgive_jobs."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return JSONResponse(f"the monitor request is not valid JSON: {exc}")
    answer = await run_in_threadpool(_answer_monitor, body, user)
    return JSONResponse(answer)


def _answer_monitor(body: Any, user: BaseUser) -> Any:
    from airflow.utils.session import create_session

    def may_edit() -> bool:
        return get_auth_manager().is_authorized_dag(
            method="PUT",
            access_entity=DagAccessEntity.TASK_INSTANCE,
            details=DagDetails(id=None),
            user=user,
        )

    with create_session() as session:
        state = BistroState.load(session)
        return handle_monitor(state, body, user=_user_name(user), may_edit=may_edit)


# -- schema, docs and page -----------------------------------------------------------------


@app.get("/openapi.json", include_in_schema=False, dependencies=AUTHENTICATED)
def get_openapi_schema(request: Request) -> JSONResponse:
    schema = get_openapi(
        title=TITLE,
        version=__version__,
        description=DESCRIPTION,
        routes=app.routes,
        servers=[{"url": request.scope.get("root_path", "")}],
    )
    return JSONResponse(schema)


@app.get("/docs", include_in_schema=False, dependencies=AUTHENTICATED)
def get_docs(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{TITLE} API")


@app.get("/ui/", include_in_schema=False, dependencies=AUTHENTICATED)
def get_ui() -> HTMLResponse:
    """Serve the forest page, which Airflow's UI shows as the external view "Bistro forest"."""
    return HTMLResponse(forest_page(), headers={"Cache-Control": "no-store"})
