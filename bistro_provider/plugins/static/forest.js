// The forest: one collapsible group per level, each showing one page of nodes.
//
// Only expanded levels fetch their nodes, one page at a time, so a forest of 150,000
// databases costs one page of rows per refresh. Collapsed levels fetch only their count
// (limit=0), every COUNT_EVERY_TICKS refreshes and whenever the filters change.
// Each script runs in its own function scope and shares only the `Bistro` object.
(() => {
"use strict";

Bistro.COUNT_EVERY_TICKS = 6;

Bistro.levelView = function levelView(level) {
  if (!Bistro.state.levelViews[level]) {
    Bistro.state.levelViews[level] = { expanded: false, offset: 0, total: null, nodes: null, error: null };
  }
  return Bistro.state.levelViews[level];
};

function filterParams() {
  const filters = Bistro.state.filters;
  return { query: filters.query, tag: filters.tag, state: filters.state };
}

function rememberForest(data) {
  Bistro.state.levels = data.levels;
  Bistro.state.forestMeta = { fetched_at: data.fetched_at, updated_at: data.updated_at };
}

async function loadForestMeta() {
  rememberForest(await Bistro.request("GET", "forest", { query: { limit: 0 } }));
}

async function loadLevelCount(level) {
  const view = Bistro.levelView(level);
  const data = await Bistro.request("GET", "forest", { query: { level, ...filterParams(), limit: 0 } });
  view.total = data.total;
  view.error = null;
}

/** Fetch the level's current page; a page past the end moves to the last page. */
Bistro.loadLevelPage = async function loadLevelPage(level) {
  const view = Bistro.levelView(level);
  const size = Bistro.state.pageSize;
  const fetchPage = () =>
    Bistro.request("GET", "forest", { query: { level, ...filterParams(), offset: view.offset, limit: size } });
  let data = await fetchPage();
  if (data.total > 0 && view.offset >= data.total) {
    view.offset = Math.floor((data.total - 1) / size) * size;
    data = await fetchPage();
  }
  rememberForest(data);
  view.total = data.total;
  view.nodes = data.nodes;
  view.error = null;
};

async function guarded(key, load, onError) {
  try {
    await load();
    Bistro.clearLoadError(key);
  } catch (error) {
    if (onError) onError(error);
    Bistro.reportLoadError(key, error);
  }
}

/** Refresh the forest: levels and timestamps, expanded pages, and counts when due. */
Bistro.loadForest = async function loadForest(countAll) {
  const state = Bistro.state;
  const expanded = state.levels.filter((level) => Bistro.levelView(level).expanded);
  if (!state.levels.length || !expanded.length) await guarded("forest", loadForestMeta);
  const requests = state.levels.map((level) => {
    const view = Bistro.levelView(level);
    const setError = (error) => {
      view.error = error.message;
    };
    if (view.expanded) return guarded(`level:${level}`, () => Bistro.loadLevelPage(level), setError);
    if (countAll || view.total === null) return guarded(`level:${level}`, () => loadLevelCount(level), setError);
    return null;
  });
  await Promise.all(requests);
};

// -- rendering ------------------------------------------------------------------------

Bistro.renderLevels = function renderLevels() {
  const container = document.getElementById("levels");
  const state = Bistro.state;
  if (!state.levels.length) {
    Bistro.renderIfChanged("levels:empty", state.forestMeta, () =>
      Bistro.replaceChildren(container, Bistro.h("p", { class: "muted" }, "The executor has not published any nodes yet.")),
    );
    return;
  }
  Bistro.renderIfChanged("levels:empty", "filled", () => container.replaceChildren());
  for (const group of [...container.querySelectorAll(":scope > .level")]) {
    if (!state.levels.includes(group.dataset.level)) group.remove();
  }
  state.levels.forEach((level, index) => {
    let group = container.querySelector(`:scope > .level[data-level="${CSS.escape(level)}"]`);
    if (!group) group = buildLevelGroup(level);
    if (container.children[index] !== group) container.insertBefore(group, container.children[index] || null);
    updateLevelGroup(group, level);
  });
};

function buildLevelGroup(level) {
  const toggle = Bistro.h(
    "button",
    { type: "button", class: "level-toggle", "aria-expanded": "false", onclick: () => Bistro.toggleLevel(level) },
    Bistro.h("span", { class: "chevron" }, "▸"),
    Bistro.h("span", { class: "name" }, level),
    Bistro.h("span", { class: "count" }),
  );
  const body = Bistro.h("div", { class: "level-body", hidden: true });
  return Bistro.h("div", { class: "level", dataset: { level } }, toggle, body);
}

function countText(view) {
  if (view.total === null) return "…";
  const filtered = Object.values(Bistro.state.filters).some(Boolean);
  const noun = view.total === 1 ? "node" : "nodes";
  return `${Bistro.formatNumber(view.total)} ${noun}${filtered ? " match the filters" : ""}`;
}

function updateLevelGroup(group, level) {
  const view = Bistro.levelView(level);
  const toggle = group.querySelector(".level-toggle");
  toggle.setAttribute("aria-expanded", String(view.expanded));
  toggle.querySelector(".chevron").textContent = view.expanded ? "▾" : "▸";
  toggle.querySelector(".count").textContent = countText(view);
  const body = group.querySelector(".level-body");
  body.hidden = !view.expanded;
  if (!view.expanded) return;
  const selected = Bistro.state.selected;
  const inputs = [view.nodes, view.offset, view.total, view.error, selected, Bistro.state.pageSize];
  Bistro.renderIfChanged(`level:${level}`, inputs, () => Bistro.replaceChildren(body, levelBody(level, view)));
}

function levelBody(level, view) {
  if (view.nodes === null) {
    return Bistro.h("p", { class: "muted" }, view.error ? `Could not load: ${view.error}` : "Loading…");
  }
  if (!view.nodes.length) return Bistro.h("p", { class: "muted" }, "No nodes on this level match the filters.");
  const header = Bistro.h(
    "tr",
    null,
    ["Name", "Parent path", "Tags", "Resources (used/limit)", "Fill", "Running"].map((title) => Bistro.h("th", null, title)),
  );
  const rows = view.nodes.map((node) => nodeRow(level, node));
  return [
    Bistro.h("div", { class: "table-wrap" }, Bistro.h("table", { class: "nodes" }, Bistro.h("thead", null, header), Bistro.h("tbody", null, rows))),
    pager(level, view),
  ];
}

function nodeRow(level, node) {
  const selected = Bistro.state.selected;
  const isSelected = selected && selected.level === level && selected.name === node.name;
  const open = () => Bistro.selectNode(level, node.name, node);
  const notes = [];
  if (!node.enabled) notes.push(Bistro.h("span", { class: "badge plain" }, "disabled"));
  if (!node.in_forest && level !== "worker") notes.push(Bistro.h("span", { class: "badge bad" }, "left the node list"));
  return Bistro.h(
    "tr",
    {
      class: isSelected ? "clickable selected" : "clickable",
      tabindex: "0",
      dataset: { level, node: node.name, fill: node.fill },
      onclick: open,
      onkeydown: (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          open();
        }
      },
    },
    Bistro.h("td", { class: "node-name" }, Bistro.h("strong", null, node.name), " ", notes),
    Bistro.h("td", null, Bistro.pathElement(node.path.slice(0, -1))),
    Bistro.h("td", null, node.tags.map((tag) => Bistro.h("span", { class: "tag" }, tag))),
    Bistro.h("td", { class: "resources" }, Bistro.usageBars(node)),
    Bistro.h("td", null, Bistro.fillBadge(node.fill)),
    Bistro.h("td", { class: "num" }, String(node.running)),
  );
}

function pager(level, view) {
  const size = Bistro.state.pageSize;
  const last = Math.max(0, Math.floor((view.total - 1) / size) * size);
  const go = (offset) => {
    view.offset = Math.min(Math.max(0, offset), last);
    Bistro.refreshLevel(level);
  };
  const first = view.offset + 1;
  const end = Math.min(view.offset + view.nodes.length, view.total);
  return Bistro.h(
    "div",
    { class: "pager" },
    Bistro.h("button", { type: "button", disabled: view.offset === 0, onclick: () => go(0) }, "« First"),
    Bistro.h("button", { type: "button", disabled: view.offset === 0, onclick: () => go(view.offset - size) }, "‹ Previous"),
    Bistro.h("span", { class: "muted" }, `${Bistro.formatNumber(first)}–${Bistro.formatNumber(end)} of ${Bistro.formatNumber(view.total)}`),
    Bistro.h("button", { type: "button", disabled: view.offset >= last, onclick: () => go(view.offset + size) }, "Next ›"),
    Bistro.h("button", { type: "button", disabled: view.offset >= last, onclick: () => go(last) }, "Last »"),
  );
}

/** Expand or collapse a level; expanding fetches its page at once. */
Bistro.toggleLevel = function toggleLevel(level) {
  const view = Bistro.levelView(level);
  view.expanded = !view.expanded;
  Bistro.renderLevels();
  if (view.expanded) Bistro.refreshLevel(level);
};

/** Fetch one level's page now, outside the refresh cycle (paging, expanding). */
Bistro.refreshLevel = async function refreshLevel(level) {
  const view = Bistro.levelView(level);
  await guarded(`level:${level}`, () => Bistro.loadLevelPage(level), (error) => {
    view.error = error.message;
  });
  Bistro.renderLevels();
};

/** Find a node by exact name on a level: from a shown page, else with one query. */
Bistro.findNode = async function findNode(level, name) {
  const view = Bistro.levelView(level);
  const shown = view.expanded && view.nodes ? view.nodes.find((node) => node.name === name) : null;
  if (shown) return shown;
  // NOTE: the API filters by substring, so a short name can match many nodes; the exact
  // match is looked for among the first 500 only.
  const data = await Bistro.request("GET", "forest", { query: { level, query: name, limit: 500 } });
  return data.nodes.find((node) => node.name === name) || null;
};
})();
