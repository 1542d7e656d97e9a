// DOM helpers, formatting and the page's shared state. Loaded first; the other scripts
// add their functions to the same `Bistro` namespace.
// Each script runs in its own function scope and shares only the `Bistro` object.
(() => {
"use strict";

const Bistro = (window.Bistro = {});

/** Everything the page shows, filled by the loaders in api.js, forest.js and tasks.js. */
Bistro.state = {
  levels: [],
  levelViews: {}, // level name -> {expanded, offset, total, nodes, error}
  filters: { query: "", tag: "", state: "" },
  pageSize: 50,
  forestMeta: null, // {fetched_at, updated_at} of the last forest response
  jobs: null,
  running: null,
  waiting: null,
  errors: null,
  selected: null, // {level, name} of the node in the details panel
  selectedNode: null,
  selectedMissing: false,
  explanations: {}, // "job\u0000node" -> explain response or {error}
  forbidden: { tasks: null, capacity: null }, // messages of 403 responses, per action kind
  confirming: null, // {key, until}: the button waiting for its second click
  runningPage: 0,
  waitingPage: 0,
  runningFilter: "",
  waitingFilter: "",
  refreshedAt: null,
  tick: 0, // refreshes so far; collapsed levels recount every COUNT_EVERY_TICKS of them
  countsStale: false, // the filters changed, so every level count must be fetched again
};

/**
 * Create an element. `attrs` keys: `class`, `dataset` (object), `on<event>` handlers, and
 * plain attributes. String children become text nodes, so data is never parsed as HTML.
 */
Bistro.h = function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "dataset") Object.assign(element.dataset, value);
    else if (key === "style") element.setAttribute("style", value);
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (value === true) element.setAttribute(key, "");
    else element.setAttribute(key, String(value));
  }
  Bistro.append(element, children);
  return element;
};

Bistro.append = function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
};

Bistro.replaceChildren = function replaceChildren(parent, ...children) {
  parent.replaceChildren();
  return Bistro.append(parent, children);
};

/** Cached signatures of what each area last rendered, so unchanged areas keep their DOM. */
const renderedSignatures = new Map();

/** Call `render` only when `inputs` differ from the last call with the same `key`. */
Bistro.renderIfChanged = function renderIfChanged(key, inputs, render) {
  const signature = JSON.stringify(inputs);
  if (renderedSignatures.get(key) === signature) return;
  renderedSignatures.set(key, signature);
  render();
};

Bistro.formatNumber = (value) => Number(value).toLocaleString("en-US");

Bistro.formatTime = function formatTime(epochSeconds) {
  if (epochSeconds === null || epochSeconds === undefined) return "never";
  return new Date(epochSeconds * 1000).toLocaleTimeString([], { hour12: false });
};

Bistro.formatDuration = function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  const total = Math.max(0, Math.round(seconds));
  if (total < 60) return `${total} s`;
  if (total < 3600) return `${Math.floor(total / 60)} min ${total % 60} s`;
  const hours = Math.floor(total / 3600);
  return `${hours} h ${Math.floor((total % 3600) / 60)} min`;
};

Bistro.since = (epochSeconds) =>
  epochSeconds ? Bistro.formatDuration(Date.now() / 1000 - epochSeconds) : "–";

/** Fill state of one resource, by the same rule as the server's node fill state. */
Bistro.resourceState = function resourceState(used, limit) {
  if (used > limit) return "over";
  if (limit - used <= 0) return "full";
  return used > 0 ? "busy" : "free";
};

Bistro.fillBadge = (fill) =>
  Bistro.h("span", { class: `badge fill-${fill}`, dataset: { fill } }, fill === "over" ? "over limit" : fill);

/** One usage bar per resource of `node`, coloured by that resource's fill state. */
Bistro.usageBars = function usageBars(node) {
  const names = Object.keys(node.capacity).concat(
    Object.keys(node.usage).filter((name) => !(name in node.capacity)),
  );
  if (!names.length) return Bistro.h("span", { class: "muted" }, "no resources");
  return names.map((name) => Bistro.usageBar(node, name));
};

Bistro.usageBar = function usageBar(node, name) {
  const used = node.usage[name] || 0;
  const limit = node.capacity[name] || 0;
  const state = Bistro.resourceState(used, limit);
  const width = limit > 0 ? Math.min(100, (used / limit) * 100) : used > 0 ? 100 : 0;
  const overridden = name in node.overrides;
  const title = `${name}: ${used} of ${limit} in use` + (overridden ? " (live limit set by an operator)" : "");
  return Bistro.h(
    "div",
    { class: "usage", title, dataset: { resource: name, used: String(used), limit: String(limit), state } },
    Bistro.h("span", { class: "usage-name" }, name),
    Bistro.h("span", { class: "bar" }, Bistro.h("span", { class: "bar-fill", style: `width:${width}%` })),
    Bistro.h(
      "span",
      { class: "usage-value" },
      `${used}/${limit}`,
      overridden ? Bistro.h("span", { class: "override" }, "override") : null,
    ),
  );
};

Bistro.pathElement = function pathElement(path, onSelect) {
  const parts = [];
  path.forEach((name, index) => {
    if (index) parts.push(Bistro.h("span", { class: "sep" }, "›"));
    parts.push(onSelect ? Bistro.h("button", { type: "button", class: "link-like", onclick: () => onSelect(index, name) }, name) : name);
  });
  return Bistro.h("span", { class: "path" }, parts);
};

/**
 * A button that acts only on a second click within a few seconds. The sandboxed iframe
 * that Airflow puts the page in blocks window.confirm(), so the button itself requests the second click.
 */
Bistro.confirmButton = function confirmButton(key, label, confirmLabel, action, attrs) {
  const confirming = Bistro.state.confirming;
  const armed = confirming && confirming.key === key && confirming.until > Date.now();
  const button = Bistro.h(
    "button",
    { type: "button", class: armed ? "danger confirming" : "danger", ...attrs },
    armed ? confirmLabel : label,
  );
  button.addEventListener("click", () => {
    const current = Bistro.state.confirming;
    if (current && current.key === key && current.until > Date.now()) {
      Bistro.state.confirming = null;
      action();
      return;
    }
    Bistro.state.confirming = { key, until: Date.now() + 5000 };
    button.textContent = confirmLabel;
    button.classList.add("confirming");
    setTimeout(() => {
      if (Bistro.state.confirming && Bistro.state.confirming.key === key) Bistro.state.confirming = null;
      button.textContent = label;
      button.classList.remove("confirming");
    }, 5000);
  });
  return button;
};

// -- links into Airflow's UI -----------------------------------------------------------

/** Airflow's base URL: the page is served at <base>bistro/ui/. */
Bistro.airflowBase = (() => {
  const match = window.location.pathname.match(/^(.*\/)bistro\/ui\/?$/);
  return window.location.origin + (match ? match[1] : "/");
})();

Bistro.taskInstanceUrl = function taskInstanceUrl(task, suffix) {
  const encode = encodeURIComponent;
  let url = `${Bistro.airflowBase}dags/${encode(task.dag_id)}/runs/${encode(task.run_id)}/tasks/${encode(task.task_id)}`;
  if (task.map_index >= 0) url += `/mapped/${task.map_index}`;
  return url + (suffix || "");
};

/**
 * Navigate the Airflow window. Airflow's iframe sandbox has no allow-top-navigation, so a
 * target="_top" link is blocked inside it. The frame is same-origin, so the page clicks a
 * link in the parent's document instead, which is a navigation the parent itself starts.
 */
Bistro.navigateTop = function navigateTop(url) {
  if (window.top === window) {
    window.location.assign(url);
    return;
  }
  try {
    const link = window.top.document.createElement("a");
    link.href = url;
    link.style.display = "none";
    window.top.document.body.append(link);
    link.click();
    link.remove();
  } catch (error) {
    window.open(url, "_top");
  }
};

Bistro.airflowLink = function airflowLink(url, label, attrs) {
  return Bistro.h(
    "a",
    {
      href: url,
      target: "_top",
      ...attrs,
      onclick: (event) => {
        const plain = event.button === 0 && !event.ctrlKey && !event.metaKey && !event.shiftKey && !event.altKey;
        if (!plain) return;
        event.preventDefault();
        Bistro.navigateTop(url);
      },
    },
    label,
  );
};

Bistro.taskLinks = function taskLinks(task) {
  const logSuffix = task.try_number ? `?try_number=${task.try_number}` : "";
  return Bistro.h(
    "span",
    { class: "task-links" },
    Bistro.airflowLink(Bistro.taskInstanceUrl(task, "/details"), "Task instance", { class: "ti-link" }),
    Bistro.airflowLink(Bistro.taskInstanceUrl(task, logSuffix), "Log", { class: "log-link" }),
  );
};
})();
