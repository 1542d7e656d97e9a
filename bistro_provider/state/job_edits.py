"""Save or delete one job of the configured config source, checked by its version.

Every job carries Bistro's ``version_id``, which each save increments. A save or delete
names the version it read, and a request whose version is no longer current fails with a
conflict (HTTP 409) that names both versions, so two editors never overwrite each other
silently. The executor picks the change up at its next config check.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bistro_provider.config_store import DocumentEdit, configured_location, edit_document
from bistro_provider.core.config_sources import (
    JobEdit,
    JobEditError,
    delete_job_entry,
    save_job_entry,
)
from bistro_provider.state.actions import record_audit
from bistro_provider.state.snapshot import StateError, StateSnapshot

log = logging.getLogger(__name__)


def save_job(
    state: StateSnapshot, user: str, name: str, job: Any, expected_version: int
) -> dict[str, Any]:
    """Create or replace job `name` in the config source; its version becomes one higher.

    A job that does not exist yet is at version 0. A file source is written before this
    returns. The audit row, and a Variable source's new value, are stored when the caller
    commits.

    :raises StateError: ``conflict`` for a stale `expected_version`, ``invalid`` for an
        invalid job or a read-only source, ``not_found`` for a missing file or Variable.
    """
    location = _location(state)
    now = time.time()
    edit = _apply(
        location, state, lambda document: save_job_entry(document, name, job, expected_version, now)
    )
    record_audit(
        state,
        user,
        "save_job",
        name,
        {"version_id": edit.old_version, "job": edit.old},
        {"version_id": edit.new_version, "job": edit.new},
    )
    log.info(
        "User %s saved job %s in %s: version %d -> %s",
        user,
        name,
        location,
        edit.old_version,
        edit.new_version,
    )
    return {
        "job": name,
        "action": "created" if edit.old is None else "updated",
        "version_id": edit.new_version,
        "previous_version": edit.old_version,
        "config_source": location,
    }


def delete_job(state: StateSnapshot, user: str, name: str, expected_version: int) -> dict[str, Any]:
    """Remove job `name` from the config source if it is still at `expected_version`.

    Its running tasks become orphans, as when the job is deleted from a config file.

    :raises StateError: ``not_found`` for an unknown job, ``conflict`` for a stale version.
    """
    location = _location(state)
    edit = _apply(
        location, state, lambda document: delete_job_entry(document, name, expected_version)
    )
    record_audit(
        state,
        user,
        "delete_job",
        name,
        {"version_id": edit.old_version, "job": edit.old},
        {"version_id": None, "job": None},
    )
    log.info("User %s deleted job %s (version %d) from %s", user, name, edit.old_version, location)
    return {
        "job": name,
        "action": "deleted",
        "version_id": None,
        "previous_version": edit.old_version,
        "config_source": location,
    }


def _location(state: StateSnapshot) -> str:
    try:
        location = configured_location(state.options)
    except ValueError as exc:
        raise StateError(str(exc)) from exc
    if location is None:
        raise StateError(
            "no config source: set [bistro] config_file, or [bistro] config_source to variable",
            "conflict",
        )
    return location


def _apply(location: str, state: StateSnapshot, change: DocumentEdit) -> JobEdit:
    try:
        return edit_document(location, state.session, change)
    except JobEditError as exc:
        raise StateError(str(exc), exc.kind) from exc
