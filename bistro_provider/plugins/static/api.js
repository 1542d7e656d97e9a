// Requests to the provider's JSON API, banners, and running operator actions.
// Each script runs in its own function scope and shares only the `Bistro` object.
(() => {
"use strict";

/** The API's root: the page is served at <base>bistro/ui/, the API at <base>bistro/api/v1/. */
Bistro.apiRoot = new URL("../api/v1/", window.location.href);

/** Permission hints per kind of action, as the API checks them, shown after a 403. */
Bistro.PERMISSION_HINTS = {
  tasks: "Killing tasks and forgiving jobs needs permission to edit task instances (role User or above with Airflow's simple auth manager).",
  capacity: "Capacity changes need permission to edit pools (role Op or above with Airflow's simple auth manager).",
};

class ApiError extends Error {
  constructor(method, path, status, detail) {
    super(`${method} ${path} failed with HTTP ${status}: ${detail}`);
    this.method = method;
    this.path = path;
    this.status = status;
    this.detail = detail;
  }
}
Bistro.ApiError = ApiError;

function detailText(data, text) {
  const detail = data && typeof data === "object" ? data.detail : null;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((item) => `${(item.loc || []).join(".")}: ${item.msg}`).join("; ");
  }
  return (text || "").slice(0, 300) || "no details";
}

/**
 * Send one same-origin request with the browser's cookies, so Airflow's `_token` cookie
 * authenticates it. Empty query values are left out.
 */
Bistro.request = async function request(method, path, options) {
  const { query, body } = options || {};
  const url = new URL(path, Bistro.apiRoot);
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, String(value));
  }
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(url, {
      method,
      credentials: "same-origin",
      cache: "no-store",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(method, url.pathname, 0, `the server did not respond (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (error) {
    data = null;
  }
  if (!response.ok) throw new ApiError(method, url.pathname, response.status, detailText(data, text));
  return data;
};

// -- banners --------------------------------------------------------------------------

const banners = new Map(); // key -> {kind, text}

/** Show or replace the banner `key`; kind is error, warning or info. */
Bistro.showBanner = function showBanner(key, kind, text) {
  const current = banners.get(key);
  if (current && current.kind === kind && current.text === text) return;
  banners.set(key, { kind, text });
  renderBanners();
};

Bistro.clearBanner = function clearBanner(key) {
  if (banners.delete(key)) renderBanners();
};

function renderBanners() {
  const container = document.getElementById("banners");
  const items = [...banners.entries()].map(([key, banner]) =>
    Bistro.h(
      "div",
      { class: `banner ${banner.kind}`, dataset: { banner: key }, role: banner.kind === "error" ? "alert" : null },
      Bistro.h("span", { class: "text" }, banner.text),
      Bistro.h("button", { type: "button", title: "Dismiss", "aria-label": "Dismiss", onclick: () => Bistro.clearBanner(key) }, "×"),
    ),
  );
  Bistro.replaceChildren(container, items);
}

/** Show a failed refresh request; a 401 means the Airflow session ended. */
Bistro.reportLoadError = function reportLoadError(key, error) {
  if (error instanceof ApiError && error.status === 401) {
    Bistro.showBanner("session", "error", "Not logged in: your Airflow session has ended. Log in to Airflow again, then reload this page.");
    return;
  }
  Bistro.showBanner(`load:${key}`, "error", `Refresh failed: ${error.message}. The page shows the last data it received.`);
};

Bistro.clearLoadError = (key) => Bistro.clearBanner(`load:${key}`);

// -- actions --------------------------------------------------------------------------

/**
 * Run one operator action of `kind` (tasks or capacity) and report its outcome. After a
 * 403 the page disables every button of that kind, because the user's role lacks it.
 */
Bistro.runAction = async function runAction(kind, description, send) {
  Bistro.clearBanner("action");
  try {
    const result = await send();
    Bistro.showBanner("action", "info", `Done: ${description}.`);
    Bistro.refreshNow();
    return result;
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      Bistro.state.forbidden[kind] = error.detail;
      Bistro.showBanner(
        `forbidden:${kind}`,
        "error",
        `Not allowed: ${description} was rejected with HTTP 403 (${error.detail}). ${Bistro.PERMISSION_HINTS[kind]} These buttons are now disabled.`,
      );
      Bistro.renderAll();
    } else if (error instanceof ApiError && error.status === 401) {
      Bistro.reportLoadError("action", error);
    } else {
      Bistro.showBanner("action", "error", `Failed: ${description}: ${error.message}`);
    }
    return null;
  }
};

/** Attributes that disable an action button once its kind was rejected with a 403. */
Bistro.actionAttrs = function actionAttrs(kind) {
  const reason = Bistro.state.forbidden[kind];
  if (!reason) return { dataset: { action: kind } };
  return { disabled: true, title: `Not allowed: ${reason}`, dataset: { action: kind, forbidden: "true" } };
};

Bistro.killTask = (task) =>
  Bistro.runAction("tasks", `kill ${task.job} on ${task.node}`, () =>
    Bistro.request("POST", "tasks/kill", { body: { ti_id: task.ti_id } }),
  );

Bistro.forgiveJob = (job) =>
  Bistro.runAction("tasks", `forgive job ${job}`, () =>
    Bistro.request("POST", `jobs/${encodeURIComponent(job)}/forgive`),
  );

Bistro.setCapacity = (level, node, resource, amount) =>
  Bistro.runAction("capacity", `set ${resource} of ${level} ${node} to ${amount}`, () =>
    Bistro.request("PUT", "capacity", { body: { level, node, resource, amount } }),
  );

Bistro.clearCapacity = (level, node, resource) =>
  Bistro.runAction(
    "capacity",
    resource ? `clear the ${resource} override of ${level} ${node}` : `clear the overrides of ${level} ${node}`,
    () => Bistro.request("DELETE", "capacity", { query: { level, node, resource } }),
  );
})();
