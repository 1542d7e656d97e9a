"""The configured Bistro config source, read and written through Airflow.

`[bistro] config_source` picks the source: ``file`` reads `[bistro] config_file`,
``variable`` the Airflow Variable named by `[bistro] config_variable`, and ``plugin:NAME``
a registered callable (see `bistro_provider.core.config_sources`).

A Variable is read through the Task SDK in processes that talk to Airflow's API server
(task processes and the dag-processor's parsing processes), and from the metadata database
everywhere else: the scheduler, the API server and the CLI.

Saving or deleting one job rewrites the whole document. A file is written atomically (a
temporary file in the same directory, then `os.replace`) under an exclusive `flock`. A
Variable is updated in the caller's transaction with a compare-and-swap on its stored
value. Either way, two editors never overwrite each other silently.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from bistro_provider.core.config_sources import (
    ConfigSource,
    JobEdit,
    JobEditError,
    SourceLocation,
    load_from,
    open_source,
)
from bistro_provider.core.model import Config
from bistro_provider.options import BistroOptions

log = logging.getLogger(__name__)

DocumentEdit = Callable[[dict[str, Any]], JobEdit]


def configured_location(options: BistroOptions) -> str | None:
    """Return the location that `[bistro] config_source` names, or None when it names none.

    :raises ValueError: for an unknown `config_source` value.
    """
    kind = options.config_source.strip() or "file"
    if kind == "file":
        return options.config_file or None
    if kind == "variable":
        return f"variable:{options.config_variable or 'bistro_config'}"
    if kind.startswith("plugin:") and kind[len("plugin:") :].strip():
        return f"plugin:{kind[len('plugin:') :].strip()}"
    raise ValueError(
        f"invalid [bistro] config_source {options.config_source!r}; use file, variable or "
        "plugin:NAME (AIRFLOW__BISTRO__CONFIG_SOURCE)"
    )


def open_config_source(location: str) -> ConfigSource:
    """Return the source at `location`, reading a Variable as this process can."""
    return open_source(location, read_variable=read_variable)


def load_config_at(location: str) -> Config:
    """Read and parse the config at `location` once.

    :raises ConfigError: when it cannot be read or its settings are invalid.
    """
    return load_from(open_config_source(location))


# -- Variables -----------------------------------------------------------------------------


def read_variable(name: str) -> str | None:
    """Return the Variable's value, or None when it does not exist.

    Task processes and DAG parsing processes have no database access in Airflow 3, so they
    ask the API server through the Task SDK; every other process reads the database.
    """
    if _has_supervisor():
        from airflow.sdk import Variable

        value = Variable.get(name, default=None)
        return None if value is None else str(value)
    return read_variable_from_db(name)


def _has_supervisor() -> bool:
    try:
        from airflow.sdk.execution_time import task_runner
    except ImportError:
        return False
    return getattr(task_runner, "SUPERVISOR_COMMS", None) is not None


def read_variable_from_db(name: str) -> str | None:
    """Return the Variable's decrypted value from the metadata database, or None."""
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalar(select(Variable).where(Variable.key == name))
        return None if row is None else row.get_val()


# -- saving and deleting jobs --------------------------------------------------------------


def edit_document(location: str, session: Any, edit: DocumentEdit) -> JobEdit:
    """Apply `edit` to the config document at `location` and store the result.

    A file is written before this returns. A Variable is changed through `session`, and
    the change is stored when the caller commits.

    :raises JobEditError: when the source is read-only or missing, the document cannot be
        parsed, `edit` rejects the change, or a Variable changed concurrently.
    """
    parsed = SourceLocation.parse(location)
    if parsed.kind == "file":
        return _edit_file(parsed.name, edit)
    if parsed.kind == "variable":
        return _edit_variable(parsed.name, session, edit)
    raise JobEditError(
        f"the config source {location} is read-only: a plugin provides it, so jobs are saved "
        "wherever that plugin reads them from"
    )


def _edit_file(path: str, edit: DocumentEdit) -> JobEdit:
    with _locked(path) as fd:
        text = _read_all(fd).decode("utf-8-sig")
        document = _decode(text, path)
        result = edit(document)
        _write_atomically(path, _encode(result.document, path))
    return result


@contextmanager
def _locked(path: str) -> Iterator[int]:
    """Hold an exclusive flock on the config file for a read-modify-write.

    `os.replace` gives the file a new inode, so a writer that waited on the old inode
    opens the file again instead of reading the content it replaced.
    NOTE: only writers that take the same lock are excluded; a text editor is not.
    """
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise JobEditError(
                f"cannot open the config file {path}: {exc.strerror or exc}", "not_found"
            ) from exc
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _is_yaml(path: str) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def _decode(text: str, location: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text) if _is_yaml(location) else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        message = f"the config at {location} cannot be parsed, so no job can be saved: {exc}"
        raise JobEditError(message) from exc
    if not isinstance(document, dict):
        raise JobEditError(f"the config at {location} is not an object; fix it first")
    return document


def _encode(document: dict[str, Any], path: str) -> str:
    if _is_yaml(path):
        # NOTE: PyYAML drops comments, so a saved YAML config loses them.
        return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _write_atomically(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    mode = os.stat(path).st_mode & 0o7777
    fd, temporary = tempfile.mkstemp(prefix=".bistro-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _edit_variable(name: str, session: Any, edit: DocumentEdit) -> JobEdit:
    from airflow.models.variable import Variable
    from sqlalchemy import select, update

    row = session.scalar(select(Variable).where(Variable.key == name).with_for_update())
    if row is None:
        raise JobEditError(
            f"the Airflow Variable {name!r} does not exist; create it with the whole Bistro "
            "config (bistro_settings and jobs) first",
            "not_found",
        )
    location = f"variable:{name}"
    stored = row._val
    result = edit(_decode(row.get_val() or "", location))
    encoded = Variable(key=name, val=json.dumps(result.document, indent=2, ensure_ascii=False))
    # Compare-and-swap on the stored text: SQLite ignores FOR UPDATE, and a concurrent
    # save between the read above and this write must not be overwritten.
    changed = session.execute(
        update(Variable)
        .where(Variable.id == row.id, Variable._val == stored)
        .values(_val=encoded._val, is_encrypted=encoded.is_encrypted)
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:
        raise JobEditError(
            f"the Airflow Variable {name!r} changed while job {result.job!r} was being saved; "
            "read the job again and retry",
            "conflict",
        )
    return result
