"""Hooks the provider's tables into `airflow db migrate` through Airflow's DB manager API."""

from __future__ import annotations

from pathlib import Path

from airflow.utils.db_manager import BaseDBManager

from bistro_provider.store.models import metadata

_HERE = Path(__file__).parent


class BistroDBManager(BaseDBManager):
    """Creates and upgrades the ``bistro_`` tables with their own alembic history."""

    metadata = metadata
    migration_dir = str(_HERE / "migrations")
    alembic_file = str(_HERE / "alembic.ini")
    version_table_name = "bistro_alembic_version"
    supports_table_dropping = True
