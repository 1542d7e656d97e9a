"""The Airflow plugin that mounts the Bistro REST API and adds the forest page to the menu.

It is registered through the ``airflow.plugins`` entry point rather than the provider's
``plugins`` key, because Airflow 3.3 loads provider-declared plugins only when
``[core] lazy_discover_providers`` is False.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from bistro_provider.plugins.api import app


class BistroPlugin(AirflowPlugin):
    """Serves the REST API at ``/bistro`` and links the forest page under Browse."""

    name = "bistro"
    fastapi_apps = [{"app": app, "url_prefix": "/bistro", "name": "Bistro"}]
    external_views = [
        {
            "name": "Bistro forest",
            "href": "/bistro/ui/",
            "url_route": "bistro-forest",
            "destination": "nav",
            "category": "browse",
        }
    ]
