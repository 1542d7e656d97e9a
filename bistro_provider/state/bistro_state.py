"""`BistroState`: the one object the API and the CLI read, with a method per view.

Every method returns plain JSON-ready dicts, so the REST API and ``airflow bistro ... --json``
print the same document for the same tables.
"""

from __future__ import annotations

from typing import Any

from bistro_provider.state import actions, explain, job_edits, tasks, views
from bistro_provider.state.snapshot import StateSnapshot


class BistroState(StateSnapshot):
    """The provider's tables read at one moment (see `StateSnapshot.load`), plus its views."""

    def forest(
        self,
        level: str | None = None,
        query: str | None = None,
        tag: str | None = None,
        state: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """Return nodes with capacity, usage, overrides and fill state (free|busy|full|over)."""
        return views.forest_view(
            self, level=level, query=query, tag=tag, fill=state, offset=offset, limit=limit
        )

    def jobs(self) -> dict[str, Any]:
        return views.jobs_view(self)

    def job_info(self, name: str) -> dict[str, Any]:
        """Return one job's view; raises StateError ``not_found`` for an unknown job."""
        return views.job_view(self, self.job(name))

    def running(self) -> dict[str, Any]:
        return views.running_view(self)

    def waiting(self) -> dict[str, Any]:
        return views.waiting_view(self)

    def histogram(self, jobs: list[str] | None = None, num_samples: int = 0) -> dict[str, Any]:
        """Return Bistro's histogram response; see `tasks.histogram`."""
        return tasks.histogram(self, jobs, num_samples)

    def errors(self) -> dict[str, Any]:
        return views.errors_view(self)

    def audit(self, limit: int = 100) -> dict[str, Any]:
        return views.audit_view(self, limit)

    def explain(self, job: str, node: str) -> dict[str, Any]:
        return explain.explain(self, job, node)

    # -- actions: each adds audit rows; the caller commits --------------------------------

    def kill_task(
        self,
        user: str,
        *,
        ti_id: str | None = None,
        job: str | None = None,
        node: str | None = None,
    ) -> dict[str, Any]:
        return actions.kill_task(self, user, ti_id=ti_id, job=job, node=node)

    def forgive_job(self, user: str, job: str) -> dict[str, Any]:
        return actions.forgive_job(self, user, job)

    def set_capacity(
        self, user: str, level: str, node: str, resource: str, amount: int
    ) -> dict[str, Any]:
        return actions.set_capacity(self, user, level, node, resource, amount)

    def clear_capacity(
        self, user: str, level: str, node: str, resource: str | None = None
    ) -> dict[str, Any]:
        return actions.clear_capacity(self, user, level, node, resource)

    def save_job(self, user: str, job: str, body: Any, expected_version: int) -> dict[str, Any]:
        return job_edits.save_job(self, user, job, body, expected_version)

    def delete_job(self, user: str, job: str, expected_version: int) -> dict[str, Any]:
        return job_edits.delete_job(self, user, job, expected_version)
