"""Saving and deleting jobs: versions, conflicts, atomic file writes, Variables and audit."""

from __future__ import annotations

import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session

from bistro_provider.config_store import edit_document
from bistro_provider.core.config_sources import (
    JobEditError,
    delete_job_entry,
    job_version,
    save_job_entry,
)
from bistro_provider.options import BistroOptions
from bistro_provider.state import StateError
from bistro_provider.state.job_edits import delete_job, save_job
from bistro_provider.store.models import AuditEntry

NOW = 1_800_000_000.0
SETTINGS = {
    "enabled": True,
    "nodes": {"levels": ["host"], "node_sources": [{"source": "manual", "prefs": {"h1": []}}]},
    "resources": {"host": {"slots": {"limit": 2, "default": 1}}},
}


def document(**jobs: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"bistro_settings": SETTINGS, "comment_key": "kept"}
    data.update({f"bistro_job->{name}": job for name, job in jobs.items()})
    return data


# -- versions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "version"),
    [
        pytest.param(None, 0, id="missing-job"),
        pytest.param({"owner": "a"}, 0, id="no-version"),
        pytest.param({"owner": "a", "version_id": -1}, 0, id="bistro-unset"),
        pytest.param({"owner": "a", "version_id": 7}, 7, id="versioned"),
        pytest.param({"owner": "a", "version_id": True}, 0, id="bool-is-not-version"),
    ],
)
def test_job_version(entry: Any, version: int) -> None:
    assert job_version(entry) == version


def test_new_job_gets_version_one() -> None:
    edit = save_job_entry(document(), "nightly", {"owner": "dba"}, 0, NOW)
    assert edit.document["bistro_job->nightly"]["version_id"] == 1
    assert edit.old is None


def test_save_increments_version() -> None:
    current = document(nightly={"owner": "dba", "version_id": 4})
    edit = save_job_entry(current, "nightly", {"owner": "ops"}, 4, NOW)
    assert edit.new == {
        "owner": "ops",
        "version_id": 5,
        "modify_time": int(NOW),
        "create_time": int(NOW),
    }


def test_save_keeps_create_time() -> None:
    current = document(nightly={"owner": "dba", "version_id": 1, "create_time": 100})
    edit = save_job_entry(current, "nightly", {"owner": "ops"}, 1, NOW)
    assert edit.new is not None
    assert edit.new["create_time"] == 100


def test_save_keeps_other_keys_in_order() -> None:
    current = document(a={"owner": "x"}, b={"owner": "y"})
    edit = save_job_entry(current, "a", {"owner": "z"}, 0, NOW)
    assert list(edit.document) == [
        "bistro_settings",
        "comment_key",
        "bistro_job->a",
        "bistro_job->b",
    ]
    assert edit.document["bistro_job->b"] == {"owner": "y"}


def test_stale_save_names_both_versions() -> None:
    current = document(nightly={"owner": "dba", "version_id": 3})
    with pytest.raises(JobEditError) as raised:
        save_job_entry(current, "nightly", {"owner": "ops"}, 2, NOW)
    assert raised.value.kind == "conflict"
    assert "version 3" in str(raised.value)
    assert "expected version 2" in str(raised.value)


def test_create_over_existing_job_is_conflict() -> None:
    current = document(nightly={"owner": "dba", "version_id": 1})
    with pytest.raises(JobEditError) as raised:
        save_job_entry(current, "nightly", {"owner": "ops"}, 0, NOW)
    assert raised.value.kind == "conflict"


@pytest.mark.parametrize(
    ("name", "job", "fragment"),
    [
        pytest.param(
            "nightly", {"owner": "x", "resources": {"nope": 1}}, "unknown resource", id="resource"
        ),
        pytest.param("nightly", {"priority": 1}, "owner", id="no-owner"),
        pytest.param("bad name", {"owner": "x"}, "invalid job name", id="name"),
        pytest.param("nightly", ["owner"], "must be a JSON object", id="not-object"),
    ],
)
def test_invalid_job_is_not_saved(name: str, job: Any, fragment: str) -> None:
    with pytest.raises(JobEditError, match=fragment) as raised:
        save_job_entry(document(), name, job, 0, NOW)
    assert raised.value.kind == "invalid"


def test_save_without_settings_is_rejected() -> None:
    with pytest.raises(JobEditError, match="bistro_settings"):
        save_job_entry({}, "nightly", {"owner": "x"}, 0, NOW)


def test_delete_removes_only_that_job() -> None:
    current = document(a={"owner": "x", "version_id": 2}, b={"owner": "y"})
    edit = delete_job_entry(current, "a", 2)
    assert "bistro_job->a" not in edit.document
    assert edit.document["bistro_job->b"] == {"owner": "y"}


def test_stale_delete_is_conflict() -> None:
    with pytest.raises(JobEditError) as raised:
        delete_job_entry(document(a={"owner": "x", "version_id": 2}), "a", 1)
    assert raised.value.kind == "conflict"


def test_delete_unknown_job_lists_jobs() -> None:
    with pytest.raises(JobEditError, match="defined jobs: a") as raised:
        delete_job_entry(document(a={"owner": "x"}), "zzz", 0)
    assert raised.value.kind == "not_found"


# -- files ---------------------------------------------------------------------------------


def save_in(location: str, name: str, job: dict[str, Any], expected: int) -> Any:
    return edit_document(location, None, lambda doc: save_job_entry(doc, name, job, expected, NOW))


def test_file_save_writes_job_and_keeps_keys(tmp_path: Path) -> None:
    path = tmp_path / "bistro.json"
    path.write_text(json.dumps(document(a={"owner": "x"})))
    save_in(str(path), "b", {"owner": "y"}, 0)
    written = json.loads(path.read_text())
    assert written["bistro_job->b"]["version_id"] == 1
    assert written["bistro_job->a"] == {"owner": "x"}
    assert written["comment_key"] == "kept"


def test_file_save_keeps_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "bistro.json"
    path.write_text(json.dumps(document()))
    os.chmod(path, 0o640)
    save_in(str(path), "b", {"owner": "y"}, 0)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bistro.json"]


def test_yaml_file_stays_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bistro.yaml"
    path.write_text(yaml.safe_dump(document()))
    save_in(str(path), "b", {"owner": "y"}, 0)
    assert yaml.safe_load(path.read_text())["bistro_job->b"]["owner"] == "y"


def test_stale_file_save_leaves_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "bistro.json"
    original = json.dumps(document(a={"owner": "x", "version_id": 2}))
    path.write_text(original)
    with pytest.raises(JobEditError):
        save_in(str(path), "a", {"owner": "y"}, 1)
    assert path.read_text() == original


def test_unparsable_file_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "bistro.json"
    path.write_text("{broken")
    with pytest.raises(JobEditError, match="cannot be parsed"):
        save_in(str(path), "a", {"owner": "y"}, 0)
    assert path.read_text() == "{broken"


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(JobEditError) as raised:
        save_in(str(tmp_path / "absent.json"), "a", {"owner": "y"}, 0)
    assert raised.value.kind == "not_found"


def test_plugin_source_is_read_only() -> None:
    with pytest.raises(JobEditError, match="read-only"):
        save_in("plugin:cmdb", "a", {"owner": "y"}, 0)


def test_concurrent_file_saves_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "bistro.json"
    path.write_text(json.dumps(document(a={"owner": "x", "version_id": 1})))
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def editor(number: int) -> None:
        start.wait()
        try:
            save_in(str(path), "a", {"owner": f"editor-{number}"}, 1)
            outcomes.append("saved")
        except JobEditError as exc:
            outcomes.append(exc.kind)

    threads = [threading.Thread(target=editor, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["saved"]
    assert json.loads(path.read_text())["bistro_job->a"]["version_id"] == 2


# -- Variables -----------------------------------------------------------------------------


@pytest.fixture
def variable_session() -> Iterator[Session]:
    from airflow.models.team import Team
    from airflow.models.variable import Variable

    engine = create_engine("sqlite://")
    Variable.metadata.create_all(engine, tables=[Team.__table__, Variable.__table__])
    with Session(engine) as session:
        session.add(Variable(key="bistro_config", val=json.dumps(document(a={"owner": "x"}))))
        session.commit()
        yield session


def stored_variable(session: Session) -> dict[str, Any]:
    from airflow.models.variable import Variable

    session.expire_all()
    row = session.query(Variable).filter(Variable.key == "bistro_config").one()
    return json.loads(row.get_val())


def test_variable_save_updates_value(variable_session: Session) -> None:
    edit_document(
        "variable:bistro_config",
        variable_session,
        lambda doc: save_job_entry(doc, "b", {"owner": "y"}, 0, NOW),
    )
    variable_session.commit()
    saved = stored_variable(variable_session)
    assert saved["bistro_job->b"]["version_id"] == 1
    assert saved["bistro_job->a"] == {"owner": "x"}


def test_variable_changed_meanwhile_is_conflict(variable_session: Session) -> None:
    from airflow.models.variable import Variable

    def edit_racing_another_writer(doc: dict[str, Any]) -> Any:
        other = Variable(key="bistro_config", val=json.dumps(document()))
        variable_session.execute(
            update(Variable)
            .where(Variable.key == "bistro_config")
            .values(_val=other._val, is_encrypted=other.is_encrypted)
            # Another process's write: this session's loaded row keeps the old value.
            .execution_options(synchronize_session=False)
        )
        return save_job_entry(doc, "b", {"owner": "y"}, 0, NOW)

    with pytest.raises(JobEditError) as raised:
        edit_document("variable:bistro_config", variable_session, edit_racing_another_writer)
    assert raised.value.kind == "conflict"


def test_missing_variable_is_not_found(variable_session: Session) -> None:
    with pytest.raises(JobEditError) as raised:
        edit_document("variable:other", variable_session, lambda doc: delete_job_entry(doc, "a", 0))
    assert raised.value.kind == "not_found"


# -- audited actions -----------------------------------------------------------------------


class FakeSession:
    def __init__(self) -> None:
        self.added: list[Any] = []

    def add(self, row: Any) -> None:
        self.added.append(row)


class FakeState:
    def __init__(self, options: BistroOptions) -> None:
        self.options = options
        self.session = FakeSession()


@pytest.fixture
def file_state(tmp_path: Path) -> FakeState:
    path = tmp_path / "bistro.json"
    path.write_text(json.dumps(document(a={"owner": "x", "version_id": 2})))
    return FakeState(BistroOptions(config_file=str(path)))


def test_save_job_is_audited(file_state: FakeState) -> None:
    result = save_job(file_state, "cli:alice", "a", {"owner": "y"}, 2)  # type: ignore[arg-type]
    assert result["version_id"] == 3
    assert result["action"] == "updated"
    entry = file_state.session.added[0]
    assert isinstance(entry, AuditEntry)
    assert (entry.user, entry.action, entry.target) == ("cli:alice", "save_job", "a")
    assert json.loads(entry.old_value)["version_id"] == 2
    assert json.loads(entry.new_value)["job"]["owner"] == "y"


def test_delete_job_is_audited(file_state: FakeState) -> None:
    result = delete_job(file_state, "cli:alice", "a", 2)  # type: ignore[arg-type]
    assert result["action"] == "deleted"
    assert file_state.session.added[0].action == "delete_job"


def test_stale_save_is_conflict_state_error(file_state: FakeState) -> None:
    with pytest.raises(StateError) as raised:
        save_job(file_state, "cli:alice", "a", {"owner": "y"}, 1)  # type: ignore[arg-type]
    assert raised.value.kind == "conflict"
    assert file_state.session.added == []


def test_save_without_source_is_conflict() -> None:
    state: Any = FakeState(BistroOptions())
    with pytest.raises(StateError, match="no config source") as raised:
        save_job(state, "cli:alice", "a", {"owner": "y"}, 0)
    assert raised.value.kind == "conflict"
