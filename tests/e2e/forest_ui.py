"""Steps on Airflow's web UI and on the forest page inside its iframe, for the browser tests.

Every step reads or clicks the DOM through `Page` and waits for its condition, so a step
that cannot happen fails with a TimeoutError that names what it waited for.
"""

from __future__ import annotations

import json

from tests.e2e.chromium import Page

PLUGIN_PATH = "/plugin/bistro-forest"
PAGE_TIMEOUT = 60.0
FRAME = "document.querySelector('iframe[src*=\"bistro/ui\"]')"


def in_frame(body: str) -> str:
    """Wrap `body` so it runs with `frame` and `doc` bound to the forest page's iframe.

    The expression returns null until the page inside the iframe has rendered its levels.
    """
    return (
        f"(() => {{ const frame = {FRAME}; const doc = frame && frame.contentDocument;"
        f" if (!doc || !doc.querySelector('#levels .level')) return null; {body} }})()"
    )


def click(page: Page, selector: str, *, frame: bool = True) -> None:
    """Click the centre of the first element matching `selector` with the mouse."""
    locate = (
        f"const el = (doc || document).querySelector({json.dumps(selector)});"
        " if (!el) return null; el.scrollIntoView({block: 'center'});"
        " const box = frame ? frame.getBoundingClientRect() : {left: 0, top: 0};"
        " const r = el.getBoundingClientRect();"
        " return [box.left + r.left + r.width / 2, box.top + r.top + r.height / 2];"
    )
    if frame:
        expression = in_frame(locate)
    else:
        expression = f"(() => {{ const frame = null; const doc = null; {locate} }})()"
    point = page.wait_for(expression, PAGE_TIMEOUT, f"an element matching {selector}")
    page.click_at(point[0], point[1])


def type_into(page: Page, selector: str, text: str, *, frame: bool = True) -> None:
    """Focus an input, select its text, and type `text` over it."""
    focus = (
        f"const el = (doc || document).querySelector({json.dumps(selector)});"
        " if (!el) return null; el.focus(); el.select(); return true;"
    )
    if frame:
        expression = in_frame(focus)
    else:
        expression = f"(() => {{ const doc = null; {focus} }})()"
    page.wait_for(expression, PAGE_TIMEOUT, f"an input matching {selector}")
    page.insert_text(text)


def log_in(page: Page, base_url: str, user: str, password: str) -> None:
    """Log in through Airflow's login page, which opening the plugin page leads to."""
    page.navigate(base_url + PLUGIN_PATH)
    page.wait_for(
        "!!document.querySelector('input[type=password]')", PAGE_TIMEOUT, "Airflow's login form"
    )
    type_into(page, "input:not([type=password]):not([type=hidden])", user, frame=False)
    type_into(page, "input[type=password]", password, frame=False)
    click(page, "button[type=submit]", frame=False)
    page.wait_for(
        "!location.pathname.includes('/auth/login')", PAGE_TIMEOUT, f"{user}'s login to finish"
    )
    show_forest(page, base_url)


def show_forest(page: Page, base_url: str) -> None:
    """Open the plugin page unless it is open, and wait until the iframe has rendered."""
    # Airflow appends the iframe's own path to its URL, for example
    # /plugin/bistro-forest/bistro/ui/, so only the prefix is fixed.
    if not page.evaluate(f"location.pathname.startsWith('{PLUGIN_PATH}')"):
        page.navigate(base_url + PLUGIN_PATH)
    page.wait_for(in_frame("return true;"), PAGE_TIMEOUT, "the forest page inside the iframe")


def expand_level(page: Page, level: str) -> None:
    toggle = f'.level[data-level="{level}"] .level-toggle'
    expanded = page.evaluate(
        in_frame(f"return doc.querySelector({json.dumps(toggle)}).getAttribute('aria-expanded');")
    )
    if expanded != "true":
        click(page, toggle)
    page.wait_for(
        in_frame(f"return doc.querySelectorAll('tr[data-level=\"{level}\"]').length > 0;"),
        PAGE_TIMEOUT,
        f"rows of level {level}",
    )


def open_node(page: Page, level: str, name: str) -> None:
    expand_level(page, level)
    click(page, f'tr[data-level="{level}"][data-node="{name}"]')
    page.wait_for(
        in_frame(
            "const title = doc.querySelector('#detail:not([hidden]) h3');"
            f" return !!title && title.textContent === {json.dumps(name)}"
            " && !!doc.querySelector('#detail .resources-block');"
        ),
        PAGE_TIMEOUT,
        f"the details of {level} {name}",
    )


def host_fills(page: Page) -> dict[str, str]:
    expression = in_frame(
        "const rows = [...doc.querySelectorAll('tr[data-level=\"host\"]')];"
        " return rows.length ? Object.fromEntries(rows.map((r) => [r.dataset.node, r.dataset.fill]))"
        " : null;"
    )
    return dict(page.wait_for(expression, PAGE_TIMEOUT, "host rows"))


def detail_usage(page: Page, resource: str) -> dict[str, str] | None:
    """Return the data attributes of a resource's usage bar in the details panel."""
    selector = f'#detail .usage[data-resource="{resource}"]'
    return page.evaluate(
        in_frame(
            f"const bar = doc.querySelector({json.dumps(selector)});"
            " return bar ? {...bar.dataset} : null;"
        )
    )


def wait_for_limit(page: Page, resource: str, limit: int) -> dict[str, str]:
    selector = f'#detail .usage[data-resource="{resource}"]'
    expression = in_frame(
        f"const bar = doc.querySelector({json.dumps(selector)});"
        f" return bar && bar.dataset.limit === '{limit}' ? {{...bar.dataset}} : null;"
    )
    return dict(page.wait_for(expression, PAGE_TIMEOUT, f"{resource} to show limit {limit}"))


def banner_text(page: Page, key: str) -> str:
    expression = in_frame(
        f"const banner = doc.querySelector('[data-banner=\"{key}\"]');"
        " return banner ? banner.textContent : null;"
    )
    return str(page.wait_for(expression, PAGE_TIMEOUT, f"the {key} banner"))


def lightness(css_color: str) -> float:
    """Lightness (0 black .. 1 white) of a computed ``rgb(r, g, b)`` colour.

    The channels are weighted as in relative luminance but not linearized, which is enough
    to tell a light background from a dark one.
    """
    parts = css_color[css_color.index("(") + 1 : css_color.index(")")].split(",")
    red, green, blue = (float(part) / 255 for part in parts[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def page_colors(page: Page) -> tuple[float, float]:
    """Return the lightness of the forest page's background and of its text."""
    colors = page.evaluate(
        in_frame(
            "const style = getComputedStyle(doc.body); return [style.backgroundColor, style.color];"
        )
    )
    return lightness(colors[0]), lightness(colors[1])
