// Jobs with their progress, and the running and waiting task tables.
// Each script runs in its own function scope and shares only the `Bistro` object.
(() => {
"use strict";

/** Progress categories in bar order, as the API's Progress model names them. */
Bistro.PROGRESS_KEYS = ["done", "running", "waiting", "backoff", "incomplete", "failed", "filtered", "disabled", "unstarted"];
Bistro.TASK_PAGE_SIZE = 50;

// Bistro's status bits, and the alphabet its histogram keys are written in.
const STATUS_BITS = { unstarted: 1, running: 2, done: 4, incomplete: 8, failed: 16, error: 32, backoff: 64, avoided: 128, disabled: 256 };
const HISTOGRAM_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

function decodeHistogramKey(key) {
  const low = HISTOGRAM_ALPHABET.indexOf(key[0]);
  const high = key.length > 1 ? HISTOGRAM_ALPHABET.indexOf(key[1]) : 0;
  return low + (high << 6);
}

/**
 * Return the category a node of a higher level is counted under in the per-level bars. A node's
 * bits are the OR of its tasks' bits, so the most pressing state wins, and a node counts
 * as done only when every task below it is done (or filtered or disabled).
 */
function histogramCategory(bits) {
  const has = (name) => (bits & STATUS_BITS[name]) !== 0;
  if (has("running")) return "running";
  if (has("failed")) return "failed";
  if (has("backoff")) return "backoff";
  if (has("incomplete") || has("error")) return "incomplete";
  if (has("unstarted")) return "unstarted";
  if (has("done")) return "done";
  if (has("avoided")) return "filtered";
  if (has("disabled")) return "disabled";
  return "unstarted";
}

function progressBar(counts, total, small) {
  const segments = Bistro.PROGRESS_KEYS.filter((key) => counts[key]).map((key) =>
    Bistro.h("span", { class: `seg-${key}`, style: `width:${(counts[key] / total) * 100}%`, title: `${key}: ${counts[key]}` }),
  );
  return Bistro.h("div", { class: small ? "progress small" : "progress", role: "img", "aria-label": Bistro.PROGRESS_KEYS.map((key) => `${key} ${counts[key] || 0}`).join(", ") }, segments);
}

function progressLegend(counts) {
  const shown = Bistro.PROGRESS_KEYS.filter((key) => counts[key] || !["incomplete", "unstarted"].includes(key));
  return Bistro.h(
    "div",
    { class: "progress-legend" },
    shown.map((key) => Bistro.h("span", { dataset: { category: key, count: String(counts[key] || 0) } }, Bistro.h("span", { class: `swatch seg-${key}` }), `${key} ${Bistro.formatNumber(counts[key] || 0)}`)),
  );
}

function levelHistograms(job) {
  const levels = Bistro.state.levels.length ? Bistro.state.levels : Object.keys(job.histograms);
  const rows = [];
  for (const level of levels) {
    const histogram = job.histograms[level];
    if (!histogram || level === job.level_for_tasks) continue;
    const counts = {};
    let total = 0;
    for (const [key, count] of Object.entries(histogram)) {
      const category = histogramCategory(decodeHistogramKey(key));
      counts[category] = (counts[category] || 0) + count;
      total += count;
    }
    const summary = Bistro.PROGRESS_KEYS.filter((key) => counts[key]).map((key) => `${counts[key]} ${key}`).join(", ");
    rows.push(Bistro.h("span", { class: "muted" }, `${level} (${Bistro.formatNumber(total)})`), progressBar(counts, total, true), Bistro.h("span", { class: "muted" }, summary));
  }
  return rows.length ? Bistro.h("div", { class: "job-levels", title: "Nodes of each level, counted under the most pressing state of the tasks below them" }, rows) : null;
}

Bistro.loadJobs = async function loadJobs() {
  Bistro.state.jobs = await Bistro.request("GET", "jobs");
};

Bistro.renderJobs = function renderJobs() {
  const state = Bistro.state;
  const container = document.getElementById("jobs");
  if (!state.jobs) return;
  Bistro.renderIfChanged("jobs", [state.jobs, state.levels, state.forbidden.tasks, state.confirming], () => {
    if (!state.jobs.jobs.length) {
      const reason = state.jobs.config_problem ? `No jobs: ${state.jobs.config_problem}` : "The config defines no jobs.";
      Bistro.replaceChildren(container, Bistro.h("p", { class: "muted" }, reason));
      return;
    }
    const header = Bistro.h("tr", null, ["Job", "Task level", "Progress of its tasks", ""].map((title) => Bistro.h("th", null, title)));
    const rows = state.jobs.jobs.map(jobRow);
    Bistro.replaceChildren(container, Bistro.h("div", { class: "table-wrap" }, Bistro.h("table", null, Bistro.h("thead", null, header), Bistro.h("tbody", null, rows))));
  });
};

function jobRow(job) {
  const badges = [];
  if (!job.enabled) badges.push(Bistro.h("span", { class: "badge plain" }, "disabled"));
  if (!job.valid) badges.push(Bistro.h("span", { class: "badge bad" }, "invalid"));
  const progress = job.progress
    ? [progressBar(job.progress, Math.max(1, job.progress.total)), progressLegend(job.progress), levelHistograms(job)]
    : Bistro.h("span", { class: "muted" }, "No progress: the job's config has errors.");
  const errors = job.errors.length ? Bistro.h("ul", { class: "job-errors" }, job.errors.map((text) => Bistro.h("li", null, text))) : null;
  const forgive = Bistro.confirmButton(`forgive:${job.name}`, "Forgive", "Click again to forgive", () => Bistro.forgiveJob(job.name), {
    ...Bistro.actionAttrs("tasks"),
    title: Bistro.state.forbidden.tasks ? `Not allowed: ${Bistro.state.forbidden.tasks}` : "Let failed tasks run again and restart backoffs",
  });
  return Bistro.h(
    "tr",
    { dataset: { job: job.name } },
    Bistro.h("td", null, Bistro.airflowLink(`${Bistro.airflowBase}dags/${encodeURIComponent(job.dag_id)}`, job.name), " ", badges, errors, Bistro.h("div", { class: "muted" }, `owner ${job.owner}`)),
    Bistro.h("td", null, job.level_for_tasks),
    Bistro.h("td", { class: "progress-cell" }, progress),
    Bistro.h("td", null, forgive),
  );
}

// -- running and waiting tasks ------------------------------------------------------------

// NOTE: /running and /waiting have no offset or limit, so the page fetches whole lists and
// pages them here. They are fetched only while their section or the details panel is open.
Bistro.loadRunning = async function loadRunning() {
  Bistro.state.running = (await Bistro.request("GET", "running")).tasks;
};

Bistro.loadWaiting = async function loadWaiting() {
  Bistro.state.waiting = (await Bistro.request("GET", "waiting")).tasks;
};

function matchesFilter(text, fields) {
  const needle = text.trim().toLowerCase();
  return !needle || fields.some((field) => String(field).toLowerCase().includes(needle));
}

function taskPager(total, page, setPage) {
  const size = Bistro.TASK_PAGE_SIZE;
  const pages = Math.max(1, Math.ceil(total / size));
  if (pages <= 1) return null;
  return Bistro.h(
    "div",
    { class: "pager" },
    Bistro.h("button", { type: "button", disabled: page === 0, onclick: () => setPage(page - 1) }, "‹ Previous"),
    Bistro.h("span", { class: "muted" }, `page ${page + 1} of ${pages} (${Bistro.formatNumber(total)} tasks)`),
    Bistro.h("button", { type: "button", disabled: page >= pages - 1, onclick: () => setPage(page + 1) }, "Next ›"),
  );
}

function taskTable(titles, rows) {
  const header = Bistro.h("tr", null, titles.map((title) => Bistro.h("th", null, title)));
  return Bistro.h("div", { class: "table-wrap" }, Bistro.h("table", null, Bistro.h("thead", null, header), Bistro.h("tbody", null, rows)));
}

Bistro.killButton = (task) =>
  Bistro.confirmButton(`kill:${task.ti_id}`, "Kill", "Click again to kill", () => Bistro.killTask(task), {
    ...Bistro.actionAttrs("tasks"),
    title: Bistro.state.forbidden.tasks ? `Not allowed: ${Bistro.state.forbidden.tasks}` : "Mark the task instance failed, which stops it",
  });

Bistro.renderRunning = function renderRunning() {
  const state = Bistro.state;
  if (state.running === null) return;
  const tasks = state.running.filter((task) => matchesFilter(state.runningFilter, [task.job, task.node, task.worker, ...task.path]));
  const size = Bistro.TASK_PAGE_SIZE;
  state.runningPage = Math.min(state.runningPage, Math.max(0, Math.ceil(tasks.length / size) - 1));
  document.getElementById("running-count").textContent = `(${Bistro.formatNumber(state.running.length)})`;
  const page = tasks.slice(state.runningPage * size, (state.runningPage + 1) * size);
  const rows = page.map((task) =>
    Bistro.h(
      "tr",
      { dataset: { job: task.job, node: task.node, tiId: task.ti_id } },
      Bistro.h("td", null, task.job),
      Bistro.h("td", null, Bistro.h("button", { type: "button", class: "link-like", onclick: () => Bistro.selectTaskNode(task.job, task.node) }, task.node)),
      Bistro.h("td", null, Bistro.pathElement(task.path.slice(0, -1))),
      Bistro.h("td", null, task.worker),
      Bistro.h("td", null, Bistro.since(task.granted_at)),
      Bistro.h("td", null, task.state || "–"),
      Bistro.h("td", null, Bistro.taskLinks(task)),
      Bistro.h("td", null, Bistro.killButton(task)),
    ),
  );
  const body = tasks.length
    ? [taskTable(["Job", "Node", "Path", "Worker", "Running for", "Airflow state", "Airflow", ""], rows), taskPager(tasks.length, state.runningPage, (value) => { state.runningPage = value; Bistro.renderRunning(); })]
    : Bistro.h("p", { class: "muted" }, state.running.length ? "No running task matches the filter." : "No task is running.");
  Bistro.replaceChildren(document.getElementById("running"), body);
};

Bistro.renderWaiting = function renderWaiting() {
  const state = Bistro.state;
  if (state.waiting === null) return;
  const tasks = state.waiting.filter((task) => matchesFilter(state.waitingFilter, [task.job, task.node, task.reason]));
  const size = Bistro.TASK_PAGE_SIZE;
  state.waitingPage = Math.min(state.waitingPage, Math.max(0, Math.ceil(tasks.length / size) - 1));
  document.getElementById("waiting-count").textContent = `(${Bistro.formatNumber(state.waiting.length)})`;
  const page = tasks.slice(state.waitingPage * size, (state.waitingPage + 1) * size);
  const rows = page.map(waitingRow);
  const body = tasks.length
    ? [taskTable(["Job", "Node", "Reason", "Waiting for", "Airflow", ""], rows), taskPager(tasks.length, state.waitingPage, (value) => { state.waitingPage = value; Bistro.renderWaiting(); })]
    : Bistro.h("p", { class: "muted" }, state.waiting.length ? "No waiting task matches the filter." : "No task is waiting for resources.");
  Bistro.replaceChildren(document.getElementById("waiting"), body);
};

function waitingRow(task) {
  const key = `${task.job}\u0000${task.node}`;
  const explanation = Bistro.state.explanations[key];
  return Bistro.h(
    "tr",
    { dataset: { job: task.job, node: task.node, tiId: task.ti_id } },
    Bistro.h("td", null, task.job),
    Bistro.h("td", null, Bistro.h("button", { type: "button", class: "link-like", onclick: () => Bistro.selectTaskNode(task.job, task.node) }, task.node)),
    Bistro.h("td", { class: "reason" }, task.reason, explanation ? explanationElement(explanation) : null),
    Bistro.h("td", null, Bistro.since(task.since)),
    Bistro.h("td", null, Bistro.taskLinks(task)),
    Bistro.h("td", null, Bistro.h("button", { type: "button", onclick: () => Bistro.explainTask(task.job, task.node), title: "Ask the server why this task does not run" }, "Why?")),
  );
}

function explanationElement(explanation) {
  if (explanation.error) return Bistro.h("div", { class: "explain" }, `Could not explain: ${explanation.error}`);
  return Bistro.h("div", { class: "explain" }, Bistro.h("strong", null, explanation.state), ": ", explanation.reason);
}

Bistro.explainTask = async function explainTask(job, node) {
  const key = `${job}\u0000${node}`;
  try {
    Bistro.state.explanations[key] = await Bistro.request("GET", "explain", { query: { job, node } });
  } catch (error) {
    Bistro.state.explanations[key] = { error: error.message };
  }
  Bistro.renderWaiting();
};

/** Open the details of a task's node, on the level its job runs tasks on. */
Bistro.selectTaskNode = function selectTaskNode(jobName, node) {
  const jobs = Bistro.state.jobs ? Bistro.state.jobs.jobs : [];
  const job = jobs.find((item) => item.name === jobName);
  const level = job ? job.level_for_tasks : Bistro.state.levels[Bistro.state.levels.length - 2];
  Bistro.selectNode(level, node, null);
};
})();
