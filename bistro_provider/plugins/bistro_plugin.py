"""The Airflow plugin that mounts the Bistro REST API and adds the forest page to the menu.

It is registered through the ``airflow.plugins`` entry point rather than the provider's
``plugins`` key, because Airflow 3.3 loads provider-declared plugins only when
``[core] lazy_discover_providers`` is False.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from bistro_provider.plugins.api import app

FOREST_VIEW = {
    "name": "Bistro forest",
    "href": "/bistro/ui/",
    "url_route": "bistro-forest",
    "destination": "nav",
    "category": "browse",
}


class BistroPlugin(AirflowPlugin):
    """Serves the REST API at ``/bistro`` and links the forest page under Browse."""

    # Plain lists, as AirflowPlugin declares them; Airflow reads them as class attributes.
    name = "bistro"
    fastapi_apps = [{"app": app, "url_prefix": "/bistro", "name": "Bistro"}]  # noqa: RUF012
    external_views = [FOREST_VIEW]  # noqa: RUF012
