// The details panel of one node: its path, resources with capacity edits, holders and waiters.
// Each script runs in its own function scope and shares only the `Bistro` object.
(() => {
"use strict";

/** Open the details of a node; `node` may be null, and is then fetched. */
Bistro.selectNode = async function selectNode(level, name, node) {
  const state = Bistro.state;
  state.selected = { level, name };
  state.selectedNode = node;
  state.selectedMissing = false;
  Bistro.renderAll();
  const loads = [];
  if (!node) loads.push(Bistro.loadSelectedNode());
  if (state.running === null) loads.push(Bistro.loadRunning().catch((error) => Bistro.reportLoadError("running", error)));
  if (state.waiting === null) loads.push(Bistro.loadWaiting().catch((error) => Bistro.reportLoadError("waiting", error)));
  await Promise.all(loads);
  Bistro.renderAll();
};

Bistro.loadSelectedNode = async function loadSelectedNode() {
  const state = Bistro.state;
  const selected = state.selected;
  if (!selected) return;
  try {
    const node = await Bistro.findNode(selected.level, selected.name);
    if (state.selected !== selected) return;
    state.selectedNode = node;
    state.selectedMissing = !node;
    Bistro.clearLoadError("detail");
  } catch (error) {
    Bistro.reportLoadError("detail", error);
  }
};

Bistro.closeDetail = function closeDetail() {
  Bistro.state.selected = null;
  Bistro.state.selectedNode = null;
  Bistro.renderAll();
};

function jobLevel(jobName) {
  const jobs = Bistro.state.jobs ? Bistro.state.jobs.jobs : [];
  const job = jobs.find((item) => item.name === jobName);
  return job ? job.level_for_tasks : null;
}

/** Running tasks that hold resources on the node. */
function holdersOf(level, name) {
  return (Bistro.state.running || []).filter((task) => task.holdings.some((holding) => holding.level === level && holding.node === name));
}

/**
 * Waiting tasks that run on the node, or whose reason names it. The executor writes a
 * blocking node as `<level> '<name>'` (Python's repr, so double quotes when the name
 * contains a single quote).
 */
function waitersOf(level, name) {
  const quoted = [`${level} '${name}'`, `${level} "${name}"`];
  return (Bistro.state.waiting || []).filter(
    (task) => (task.node === name && jobLevel(task.job) === level) || quoted.some((text) => task.reason.includes(text)),
  );
}

Bistro.renderDetail = function renderDetail() {
  const state = Bistro.state;
  const panel = document.getElementById("detail");
  document.body.classList.toggle("detail-open", Boolean(state.selected));
  if (!state.selected) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  const { level, name } = state.selected;
  const holders = holdersOf(level, name);
  const waiters = waitersOf(level, name);
  const inputs = [state.selected, state.selectedNode, state.selectedMissing, holders, waiters, state.forbidden, state.confirming, state.levels];
  Bistro.renderIfChanged("detail", inputs, () => {
    const body = document.getElementById("detail-body");
    const saved = saveInputs(body);
    Bistro.replaceChildren(body, detailContent(level, name, holders, waiters));
    restoreInputs(body, saved);
  });
};

/** Typed amounts and focus survive a refresh of the panel. */
function saveInputs(body) {
  const values = {};
  for (const input of body.querySelectorAll("input[data-resource]")) {
    if (input.value !== input.defaultValue) values[input.dataset.resource] = input.value;
  }
  const active = document.activeElement;
  const focused = active && body.contains(active) && active.dataset ? active.dataset.resource : null;
  return { values, focused };
}

function restoreInputs(body, saved) {
  for (const input of body.querySelectorAll("input[data-resource]")) {
    const resource = input.dataset.resource;
    if (resource in saved.values) input.value = saved.values[resource];
    if (resource === saved.focused) input.focus();
  }
}

function detailContent(level, name, holders, waiters) {
  const state = Bistro.state;
  const node = state.selectedNode;
  const heading = [Bistro.h("h3", null, name), Bistro.h("div", { class: "muted" }, `${level} node`)];
  if (!node) {
    const text = state.selectedMissing ? "This node is not in the node list any more." : "Loading…";
    return [heading, Bistro.h("p", { class: "muted" }, text)];
  }
  return [
    heading,
    Bistro.h("p", null, Bistro.fillBadge(node.fill), " ", node.enabled ? null : Bistro.h("span", { class: "badge plain" }, "disabled"), ` ${node.running} running here`),
    Bistro.h("h4", null, "Path"),
    Bistro.h("div", { class: "detail-path" }, Bistro.pathElement(node.path, pathSelector(level, node))),
    node.tags.length ? [Bistro.h("h4", null, "Tags"), node.tags.map((tag) => Bistro.h("span", { class: "tag" }, tag))] : null,
    Bistro.h("h4", null, "Resources"),
    resourcesBlock(level, node),
    Bistro.h("h4", null, `Holders (${holders.length})`),
    holders.length ? Bistro.h("ul", { class: "holders" }, holders.map(holderItem)) : Bistro.h("p", { class: "muted" }, "No running task holds resources here."),
    Bistro.h("h4", null, `Waiters (${waiters.length})`),
    waiters.length ? Bistro.h("ul", { class: "waiters" }, waiters.map(waiterItem)) : Bistro.h("p", { class: "muted" }, "No waiting task needs this node."),
  ];
}

/** Path entries select their node; a forest node's path has one name per level. */
function pathSelector(level, node) {
  const levels = Bistro.state.levels;
  if (level === "worker" || node.path.length !== levels.indexOf(level) + 1) return null;
  return (index, name) => Bistro.selectNode(levels[index], name, null);
}

function resourcesBlock(level, node) {
  const names = Object.keys(node.capacity);
  if (!names.length) return Bistro.h("p", { class: "muted" }, "This level defines no resources.");
  const clearAll = Object.keys(node.overrides).length
    ? Bistro.h("button", { type: "button", class: "clear-all-capacity", ...Bistro.actionAttrs("capacity"), onclick: () => Bistro.clearCapacity(level, node.name, null) }, "Clear all live limits")
    : null;
  return Bistro.h("div", { class: "resources-block" }, names.map((resource) => resourceEditor(level, node, resource)), clearAll);
}

function freeText(available) {
  return available < 0 ? `${-available} over the limit` : `${available} free`;
}

/** Build a resource's usage bar and a form that sets or clears its live limit. */
function resourceEditor(level, node, resource) {
  const limit = node.capacity[resource];
  const input = Bistro.h("input", { type: "number", min: "0", step: "1", value: String(limit), "aria-label": `New limit for ${resource}`, dataset: { resource } });
  const set = () => {
    const amount = Number(input.value);
    if (!Number.isInteger(amount) || amount < 0 || input.value.trim() === "") {
      Bistro.showBanner("action", "error", `Invalid limit ${JSON.stringify(input.value)} for ${resource}: enter a whole number of 0 or more.`);
      return;
    }
    Bistro.setCapacity(level, node.name, resource, amount);
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") set();
  });
  const overridden = resource in node.overrides;
  const attrs = Bistro.actionAttrs("capacity");
  const origin = overridden ? `live limit ${node.overrides[resource]} set by an operator` : "limit from the config or node source";
  return Bistro.h(
    "div",
    { class: "resource-edit", dataset: { resource } },
    Bistro.usageBar(node, resource),
    Bistro.h("div", { class: "muted" }, `${freeText(node.available[resource])} · ${origin}`),
    Bistro.h(
      "div",
      { class: "capacity-form" },
      Bistro.h("label", { class: "inline" }, "New limit", input),
      Bistro.h("button", { type: "button", class: "set-capacity", ...attrs, onclick: set }, "Set"),
      overridden ? Bistro.h("button", { type: "button", class: "clear-capacity", ...attrs, onclick: () => Bistro.clearCapacity(level, node.name, resource) }, "Clear live limit") : null,
    ),
  );
}

function holderItem(task) {
  return Bistro.h(
    "li",
    { dataset: { job: task.job, node: task.node, tiId: task.ti_id } },
    Bistro.h("strong", null, task.job), ` on ${task.node}, worker ${task.worker}, started ${Bistro.formatTime(task.granted_at)} `,
    Bistro.h("div", null, Bistro.taskLinks(task), " ", Bistro.killButton(task)),
  );
}

function waiterItem(task) {
  return Bistro.h(
    "li",
    { dataset: { job: task.job, node: task.node, tiId: task.ti_id } },
    Bistro.h("strong", null, task.job), ` on ${task.node}: `, Bistro.h("span", { class: "reason" }, task.reason),
    Bistro.h("div", null, Bistro.taskLinks(task)),
  );
}
})();
