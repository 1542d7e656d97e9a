// The page's main loop: theme, filters, and the periodic refresh. Loaded last.
// Each script runs in its own function scope and shares only the `Bistro` object.
(() => {
"use strict";

// -- theme ----------------------------------------------------------------------------

const THEME_KEY = "bistro-forest-theme";
const THEMES = ["auto", "light", "dark"];

function storedTheme() {
  try {
    const value = window.localStorage.getItem(THEME_KEY);
    return THEMES.includes(value) ? value : "auto";
  } catch (error) {
    return "auto";
  }
}

/** Airflow's own theme (the class on its <html>) when the page is inside Airflow's UI. */
function airflowTheme() {
  try {
    if (window.parent === window) return null;
    const root = window.parent.document.documentElement;
    if (root.classList.contains("dark")) return "dark";
    if (root.classList.contains("light")) return "light";
  } catch (error) {
    // A parent from another origin: follow the system theme.
  }
  return null;
}

let themeChoice = storedTheme();

/** "auto" follows Airflow's theme inside its UI, else the system's prefers-color-scheme. */
function applyTheme() {
  const theme = themeChoice === "auto" ? airflowTheme() : themeChoice;
  if (theme) document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  document.getElementById("theme-toggle").textContent = `Theme: ${themeChoice}`;
}

function cycleTheme() {
  themeChoice = THEMES[(THEMES.indexOf(themeChoice) + 1) % THEMES.length];
  try {
    window.localStorage.setItem(THEME_KEY, themeChoice);
  } catch (error) {
    Bistro.showBanner("theme", "warning", `The theme choice cannot be stored (${error.message}); it lasts until the page reloads.`);
  }
  applyTheme();
}

function followAirflowTheme() {
  try {
    if (window.parent === window) return;
    const observer = new MutationObserver(applyTheme);
    observer.observe(window.parent.document.documentElement, { attributes: true, attributeFilter: ["class"] });
  } catch (error) {
    // Another origin: nothing to follow.
  }
}

// -- refresh --------------------------------------------------------------------------

let timer = null;
let running = null;
let again = false;

async function guardedLoad(key, load) {
  try {
    await load();
    Bistro.clearLoadError(key);
    return true;
  } catch (error) {
    Bistro.reportLoadError(key, error);
    return false;
  }
}

async function loadErrors() {
  Bistro.state.errors = await Bistro.request("GET", "errors");
}

async function refresh() {
  clearTimeout(timer);
  const state = Bistro.state;
  state.tick += 1;
  const countAll = state.countsStale || state.tick % Bistro.COUNT_EVERY_TICKS === 1;
  state.countsStale = false;
  const detailOpen = state.selected !== null;
  const forest = Bistro.loadForest(countAll).then(() => (detailOpen ? Bistro.loadSelectedNode() : null));
  const loads = [forest, guardedLoad("jobs", Bistro.loadJobs)];
  if (countAll || state.errors === null) loads.push(guardedLoad("errors", loadErrors));
  if (document.getElementById("running-details").open || detailOpen) loads.push(guardedLoad("running", Bistro.loadRunning));
  if (document.getElementById("waiting-details").open || detailOpen) loads.push(guardedLoad("waiting", Bistro.loadWaiting));
  const results = await Promise.all(loads);
  if (results[1]) Bistro.clearBanner("session");
  state.refreshedAt = Date.now() / 1000;
  Bistro.renderAll();
}

function schedule() {
  clearTimeout(timer);
  const seconds = Number(document.getElementById("refresh-interval").value);
  if (seconds > 0 && !document.hidden) timer = setTimeout(Bistro.refreshNow, seconds * 1000);
}

/** Refresh now; a request during a refresh runs one more refresh right after it. */
Bistro.refreshNow = function refreshNow() {
  if (running) {
    again = true;
    return running;
  }
  running = refresh()
    .catch((error) => Bistro.showBanner("load:page", "error", `The page failed to refresh: ${error.message}`))
    .finally(() => {
      running = null;
      if (again) {
        again = false;
        Bistro.refreshNow();
      } else {
        schedule();
      }
    });
  return running;
};

// -- rendering ------------------------------------------------------------------------

function renderFreshness() {
  const state = Bistro.state;
  const meta = state.forestMeta;
  const parts = [];
  if (meta && meta.fetched_at) parts.push(`Nodes fetched at ${Bistro.formatTime(meta.fetched_at)} (${Bistro.since(meta.fetched_at)} ago)`);
  else parts.push("No node list published yet");
  if (state.refreshedAt) parts.push(`page refreshed at ${Bistro.formatTime(state.refreshedAt)}`);
  document.getElementById("freshness").textContent = parts.join(" · ");
}

function renderProblems() {
  const state = Bistro.state;
  const errors = state.errors;
  const configProblem = (errors && errors.config) || (state.jobs && state.jobs.config_problem);
  if (configProblem) Bistro.showBanner("config", "warning", `Config problem: ${configProblem}`);
  else Bistro.clearBanner("config");
  if (errors && errors.nodes) {
    Bistro.showBanner("nodes", "warning", `The last node fetch failed, so the executor keeps its previous node list: ${errors.nodes}`);
  } else {
    Bistro.clearBanner("nodes");
  }
}

Bistro.renderAll = function renderAll() {
  renderFreshness();
  renderProblems();
  Bistro.renderJobs();
  Bistro.renderLevels();
  Bistro.renderRunning();
  Bistro.renderWaiting();
  Bistro.renderDetail();
};

// -- controls -------------------------------------------------------------------------

function debounce(callback, milliseconds) {
  let pending = null;
  return (...args) => {
    clearTimeout(pending);
    pending = setTimeout(() => callback(...args), milliseconds);
  };
}

function restartPaging() {
  for (const view of Object.values(Bistro.state.levelViews)) view.offset = 0;
  Bistro.state.countsStale = true;
  Bistro.refreshNow();
}

function wireFilters() {
  const filters = Bistro.state.filters;
  const byId = (id) => document.getElementById(id);
  const update = debounce(() => {
    filters.query = byId("filter-query").value.trim();
    filters.tag = byId("filter-tag").value.trim();
    filters.state = byId("filter-state").value;
    restartPaging();
  }, 300);
  byId("filters").addEventListener("submit", (event) => event.preventDefault());
  for (const id of ["filter-query", "filter-tag"]) byId(id).addEventListener("input", update);
  byId("filter-state").addEventListener("change", update);
  byId("page-size").addEventListener("change", () => {
    Bistro.state.pageSize = Number(byId("page-size").value);
    restartPaging();
  });
}

function wireTaskSections() {
  const byId = (id) => document.getElementById(id);
  byId("running-filter").addEventListener("input", () => {
    Bistro.state.runningFilter = byId("running-filter").value;
    Bistro.state.runningPage = 0;
    Bistro.renderRunning();
  });
  byId("waiting-filter").addEventListener("input", () => {
    Bistro.state.waitingFilter = byId("waiting-filter").value;
    Bistro.state.waitingPage = 0;
    Bistro.renderWaiting();
  });
  for (const id of ["running-details", "waiting-details"]) {
    byId(id).addEventListener("toggle", () => {
      if (byId(id).open) Bistro.refreshNow();
    });
  }
}

function wireControls() {
  const byId = (id) => document.getElementById(id);
  byId("theme-toggle").addEventListener("click", cycleTheme);
  byId("refresh-interval").addEventListener("change", () => {
    if (Number(byId("refresh-interval").value) > 0) Bistro.refreshNow();
    else clearTimeout(timer);
  });
  byId("detail-close").addEventListener("click", Bistro.closeDetail);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && Bistro.state.selected) Bistro.closeDetail();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) Bistro.refreshNow();
  });
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);
}

/** Keep --topbar-height current, so the details panel starts below the sticky top bar. */
function trackTopbarHeight() {
  const topbar = document.querySelector(".topbar");
  const update = () => document.documentElement.style.setProperty("--topbar-height", `${topbar.offsetHeight}px`);
  new ResizeObserver(update).observe(topbar);
  update();
}

applyTheme();
followAirflowTheme();
trackTopbarHeight();
wireFilters();
wireTaskSections();
wireControls();
Bistro.refreshNow();
})();
