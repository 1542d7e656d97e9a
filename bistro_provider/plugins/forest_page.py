"""The forest page: one HTML document with its stylesheet and scripts inlined.

The page is plain HTML, CSS and JavaScript from ``static/``, with no build step. Inlining
keeps it to one authenticated route (``GET /bistro/ui/``) and one request, and the page
loads nothing from other hosts. Its scripts read the JSON API at ``../api/v1`` with the
browser's ``_token`` cookie, so inside Airflow's UI they act as the logged-in user.
"""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"
TEMPLATE = "forest.html"
STYLESHEET = "forest.css"
# Load order matters: each script uses only names that the scripts before it define.
SCRIPTS = ("dom.js", "api.js", "forest.js", "tasks.js", "detail.js", "app.js")
STYLES_MARKER = "<!-- bistro:styles -->"
SCRIPTS_MARKER = "<!-- bistro:scripts -->"


def forest_page() -> str:
    """Return the page, built from the files in ``static/`` on every request.

    The files are small and the page loads once per visit (refreshes are API calls), so
    reading them each time costs little and lets edits show without a restart.

    :raises ValueError: when the template lacks one of the two markers.
    """
    template = (STATIC_DIR / TEMPLATE).read_text(encoding="utf-8")
    for marker in (STYLES_MARKER, SCRIPTS_MARKER):
        if marker not in template:
            raise ValueError(f"{STATIC_DIR / TEMPLATE} lacks the marker {marker}")
    styles = f"<style>\n{(STATIC_DIR / STYLESHEET).read_text(encoding='utf-8')}</style>"
    scripts = "\n".join(_script_tag(name) for name in SCRIPTS)
    return template.replace(STYLES_MARKER, styles).replace(SCRIPTS_MARKER, scripts)


def _script_tag(name: str) -> str:
    source = (STATIC_DIR / name).read_text(encoding="utf-8")
    if "</script" in source.lower():
        raise ValueError(f"{STATIC_DIR / name} contains '</script', which would end the tag")
    return f"<script>\n// {name}\n{source}</script>"
