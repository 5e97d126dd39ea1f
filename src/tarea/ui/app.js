// tarea's dashboard: plain JavaScript, no build step, no library.
//
// Everything a task returns (params, results, errors, logs) is untrusted: it
// only ever reaches the page as text (textContent, createTextNode), never as
// HTML. The session is an HttpOnly cookie; calls that change state carry the
// CSRF token read from /ui/session.
"use strict";

const TERMINAL = new Set(["succeeded", "failed", "cancelled", "timed_out"]);
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out"];
const SVG = "http://www.w3.org/2000/svg";
let session = { csrf: "", tenant: "", admin: false, login: false };

// -- small helpers ------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function json(value) {
  return value === null || value === undefined ? "" : JSON.stringify(value, null, 2);
}

function say(text) {
  document.getElementById("live").textContent = text;
}

async function api(path, options = {}) {
  const method = options.method || "GET";
  const headers = { Accept: "application/json" };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && method !== "HEAD") headers["X-CSRF-Token"] = session.csrf;
  const response = await fetch(path, {
    method,
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401) {
    window.location.assign("/ui/login");
    throw new Error("logged out");
  }
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const detail = body && body.detail ? `${body.code}: ${body.detail}` : String(response.status);
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return body;
}

function rank(status) {
  return TERMINAL.has(status) ? 2 : status === "running" ? 1 : 0;
}

function statusBadge(status) {
  return h("span", { class: `status status-${status}`, "data-status": status }, status);
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value < 1000 ? `${value.toFixed(1)} ms` : `${(value / 1000).toFixed(2)} s`;
}

function taskLink(id) {
  return h("a", { href: `/ui/tasks/${encodeURIComponent(id)}` }, id);
}

// -- the tasks page -----------------------------------------------------------------

function tasksPage(main) {
  const rows = new Map(); // id -> {id, status, image, function, attempt, when}
  const params = new URLSearchParams(window.location.search);
  const filters = {
    status: params.get("status") || "",
    image: params.get("image") || "",
    id: params.get("id") || "",
  };
  let watching = null; // the task submitted from the form, until it ends

  const result = h("div", { id: "submit-result", class: "result" });
  const form = h(
    "form",
    { id: "submit", class: "card" },
    h("h2", {}, "Submit a task"),
    h("label", { for: "image" }, "Image"),
    h("input", { id: "image", name: "image", required: true, value: "tasks_image:latest" }),
    h("label", { for: "function" }, "Function"),
    h("input", { id: "function", name: "function", required: true, value: "suma" }),
    h("label", { for: "params" }, "Params (JSON)"),
    h("textarea", { id: "params", name: "params", rows: 3 }, '{"a": 1, "b": 2}'),
    h("button", { type: "submit" }, "Submit"),
    result,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.replaceChildren();
    let parsed;
    try {
      const text = form.elements.params.value.trim();
      parsed = text ? JSON.parse(text) : {};
    } catch (error) {
      result.append(h("p", { class: "error" }, `params is not JSON: ${error.message}`));
      return;
    }
    try {
      const task = await api("/v1/tasks", {
        method: "POST",
        body: {
          image: form.elements.image.value.trim(),
          function: form.elements.function.value.trim(),
          params: parsed,
        },
      });
      upsert({ ...task, when: task.created_at });
      result.append(h("p", {}, "Submitted ", taskLink(task.id), " ", statusBadge(task.status)));
      // A warm task can end, and its change reach the stream, before this answer did.
      if (TERMINAL.has(rows.get(task.id).status)) ended(task.id).catch((error) => say(error.message));
      else watching = task.id;
    } catch (error) {
      result.append(h("p", { class: "error" }, error.message));
    }
  });

  const statusSelect = h(
    "select",
    { id: "filter-status", name: "status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((st) => h("option", { value: st, selected: st === filters.status }, st)),
  );
  const imageInput = h("input", { id: "filter-image", name: "image", placeholder: "image", value: filters.image });
  const idInput = h("input", { id: "filter-id", name: "id", placeholder: "search by id", value: filters.id });
  const controls = h("form", { class: "filters", id: "filters" }, statusSelect, imageInput, idInput,
    h("button", { type: "submit" }, "Filter"));
  controls.addEventListener("submit", (event) => {
    event.preventDefault();
    filters.status = statusSelect.value;
    filters.image = imageInput.value.trim();
    filters.id = idInput.value.trim();
    const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
    history.replaceState(null, "", query.toString() ? `/ui?${query}` : "/ui");
    rows.clear();
    load();
  });
  idInput.addEventListener("input", () => {
    filters.id = idInput.value.trim();
    render();
  });

  const body = h("tbody");
  const table = h(
    "table",
    { id: "tasks" },
    h("thead", {}, h("tr", {}, ["id", "status", "image", "function", "attempt", "created"].map((c) => h("th", {}, c)))),
    body,
  );
  main.replaceChildren(
    h("section", { class: "grid" }, form,
      h("div", { class: "card" }, h("h2", {}, "Tasks"), controls, table, h("p", { id: "table-note", class: "hint" }))),
  );

  function visible(row) {
    if (filters.status && row.status !== filters.status) return false;
    if (filters.image && row.image !== filters.image) return false;
    if (filters.id && !row.id.includes(filters.id)) return false;
    return true;
  }

  function rowNode(row) {
    return h(
      "tr",
      { "data-task-id": row.id, "data-status": row.status },
      h("td", { class: "mono" }, taskLink(row.id)),
      h("td", {}, statusBadge(row.status)),
      h("td", {}, row.image),
      h("td", {}, row.function),
      h("td", {}, row.attempt || 1),
      h("td", {}, row.when ? new Date(row.when).toLocaleTimeString() : ""),
    );
  }

  function render() {
    const shown = [...rows.values()].filter(visible).sort((a, b) => (a.when < b.when ? 1 : -1)).slice(0, 200);
    body.replaceChildren(...shown.map(rowNode));
    document.getElementById("table-note").textContent = shown.length ? "" : "No tasks.";
  }

  function upsert(task) {
    const old = rows.get(task.id) || {};
    rows.set(task.id, {
      id: task.id,
      // Changes may arrive out of order (a POST's answer after the stream's end):
      // a status never goes back to an earlier one.
      status: old.status && rank(old.status) > rank(task.status) ? old.status : task.status,
      image: task.image || old.image,
      function: task.function || old.function,
      attempt: task.attempt || old.attempt,
      when: old.when || task.when || new Date().toISOString(),
    });
    const existing = body.querySelector(`tr[data-task-id="${CSS.escape(task.id)}"]`);
    const row = rows.get(task.id);
    if (existing && visible(row)) existing.replaceWith(rowNode(row));
    else render();
  }

  async function load() {
    const query = new URLSearchParams({ limit: "100" });
    if (filters.status) query.set("status", filters.status);
    if (filters.image) query.set("image", filters.image);
    const page = await api(`/v1/tasks?${query}`);
    for (const task of page.items) {
      // The list may have been read before a change the stream already brought.
      const old = rows.get(task.id);
      if (!old || rank(task.status) >= rank(old.status)) rows.set(task.id, { ...task, when: task.created_at });
    }
    if (filters.id && !rows.has(filters.id)) {
      try {
        const task = await api(`/v1/tasks/${encodeURIComponent(filters.id)}`);
        rows.set(task.id, { ...task, when: task.created_at });
      } catch (error) {
        if (error.status !== 404) throw error;
      }
    }
    render();
  }

  async function ended(id) {
    const task = await api(`/v1/tasks/${encodeURIComponent(id)}`);
    result.replaceChildren(
      h("p", {}, "Task ", taskLink(task.id), " ", statusBadge(task.status)),
      ...(task.error ? [h("h3", {}, "Error"), h("pre", { class: "error", id: "submit-error" }, json(task.error))] : []),
      h("h3", {}, "Result"),
      h("pre", { id: "submit-output" }, json(task.result)),
    );
  }

  // One stream for the whole table: every status change of the tenant's tasks.
  const stream = new EventSource("/v1/events");
  stream.addEventListener("open", () => {
    say("live");
    load().catch((error) => say(error.message));
  });
  stream.addEventListener("error", () => say("reconnecting…"));
  stream.addEventListener("status", (event) => {
    const change = JSON.parse(event.data);
    upsert({ ...change, when: null });
    if (change.id === watching && TERMINAL.has(change.status)) {
      watching = null;
      ended(change.id).catch((error) => say(error.message));
    }
  });
  for (const kind of ["reset", "dropped"]) {
    stream.addEventListener(kind, () => {
      rows.clear();
      load().catch((error) => say(error.message));
    });
  }
  return () => stream.close();
}

// -- a task's page ------------------------------------------------------------------

function waterfall(timings) {
  // queued_ms runs from submit to the call going out: the container's start
  // (start_ms) is its last part. The bars show the wait alone, then the start.
  const start = timings.start_ms;
  const queued = timings.queued_ms === null || timings.queued_ms === undefined
    ? null : Math.max(0, timings.queued_ms - (start || 0));
  const parts = [
    ["queued", queued],
    ["start", start],
    ["run", timings.run_ms],
  ];
  const total = parts.reduce((sum, [, v]) => sum + (v || 0), 0);
  const width = 600;
  const svg = s("svg", { viewBox: `0 0 ${width + 160} ${parts.length * 26 + 10}`, class: "waterfall", role: "img" });
  svg.append(s("title", {}, "Timings: queued, container start, run"));
  let offset = 0;
  parts.forEach(([name, value], index) => {
    const y = 5 + index * 26;
    const x = 80 + (total ? (offset / total) * width : 0);
    const w = total && value ? Math.max(2, (value / total) * width) : 0;
    svg.append(s("text", { x: 0, y: y + 15, class: "label" }, name));
    svg.append(s("rect", { x, y, width: w, height: 18, class: `bar bar-${name}` }));
    svg.append(s("text", { x: x + w + 6, y: y + 15, class: "label" }, ms(value)));
    offset += value || 0;
  });
  return svg;
}

function taskPage(main, id) {
  const logs = h("pre", { id: "logs", class: "logs" });
  const view = h("div", { id: "task" });
  main.replaceChildren(view);
  let task = null;
  let stream = null;

  function draw() {
    const done = TERMINAL.has(task.status);
    const progress = task.progress || {};
    const cancel = h("button", { type: "button", id: "cancel", disabled: done }, "Cancel");
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        task = await api(`/v1/tasks/${encodeURIComponent(id)}/cancel`, { method: "POST" });
        draw();
      } catch (error) {
        say(error.message);
      }
    });
    view.replaceChildren(
      h("div", { class: "card" },
        h("h2", {}, "Task ", h("span", { class: "mono", id: "task-id" }, task.id), " ",
          h("span", { id: "task-status", "data-status": task.status }, statusBadge(task.status))),
        h("dl", {},
          h("dt", {}, "image"), h("dd", {}, task.image),
          h("dt", {}, "function"), h("dd", {}, task.function),
          h("dt", {}, "attempt"), h("dd", {}, task.attempt || 1),
          h("dt", {}, "worker"), h("dd", {}, task.worker || "–"),
          h("dt", {}, "created"), h("dd", {}, task.created_at || "–"),
          h("dt", {}, "finished"), h("dd", {}, task.finished_at || "–")),
        h("label", { for: "progress" }, "Progress ", h("span", { id: "progress-message" }, progress.message || "")),
        h("progress", { id: "progress", max: 1, value: done && task.status === "succeeded" ? 1 : progress.progress || 0 }),
        h("p", {}, cancel)),
      h("div", { class: "card" }, h("h3", {}, "Timings"), waterfall(task.timings || {})),
      h("div", { class: "card" }, h("h3", {}, "Params"), h("pre", { id: "params" }, json(task.params))),
      h("div", { class: "card" }, h("h3", {}, "Result"), h("pre", { id: "result" }, json(task.result))),
      ...(task.error ? [h("div", { class: "card" }, h("h3", {}, "Error"), h("pre", { id: "error", class: "error" }, json(task.error)))] : []),
      h("div", { class: "card" }, h("h3", {}, "Logs"), logs),
    );
  }

  async function finalLogs() {
    const text = await api(`/v1/tasks/${encodeURIComponent(id)}/logs`);
    logs.textContent = text;
  }

  async function start() {
    try {
      task = await api(`/v1/tasks/${encodeURIComponent(id)}`);
    } catch (error) {
      view.replaceChildren(h("p", { class: "error" }, error.message));
      return;
    }
    draw();
    if (TERMINAL.has(task.status)) {
      await finalLogs();
      return;
    }
    stream = new EventSource(`/v1/tasks/${encodeURIComponent(id)}/events`);
    stream.addEventListener("status", (event) => {
      const data = JSON.parse(event.data);
      task = data.task ? data.task : { ...task, status: data.status };
      draw();
      if (TERMINAL.has(task.status)) {
        stream.close();
        finalLogs().catch((error) => say(error.message));
      }
    });
    stream.addEventListener("progress", (event) => {
      const data = JSON.parse(event.data);
      task = { ...task, progress: { progress: data.progress, message: data.message } };
      const bar = document.getElementById("progress");
      if (bar) bar.value = data.progress || 0;
      const message = document.getElementById("progress-message");
      if (message) message.textContent = data.message || "";
    });
    stream.addEventListener("log", (event) => {
      logs.append(document.createTextNode(JSON.parse(event.data).text));
      logs.scrollTop = logs.scrollHeight;
    });
  }
  start();
  return () => stream && stream.close();
}

// -- pools and servers --------------------------------------------------------------

async function poolsPage(main) {
  const pools = await api("/v1/pools");
  const c = pools.counters || {};
  const hits = (c.hits || 0) + (c.stem_hits || 0);
  const asked = hits + (c.misses || 0);
  const ratio = asked ? `${((hits / asked) * 100).toFixed(1)} %` : "–";
  const poolTable = h(
    "table",
    { id: "pools" },
    h("thead", {}, h("tr", {}, ["image", "tenant", "idle", "busy", "stem cells"].map((x) => h("th", {}, x)))),
    h("tbody", {}, pools.pools.map((p) =>
      h("tr", {}, h("td", {}, p.image), h("td", {}, p.tenant || "(any)"), h("td", {}, p.idle), h("td", {}, p.busy), h("td", {}, p.stem_cells)))),
  );
  const counters = h("dl", { id: "counters" },
    h("dt", {}, "hit ratio"), h("dd", { id: "hit-ratio" }, ratio),
    Object.entries(c).map(([name, value]) => [h("dt", {}, name.replaceAll("_", " ")), h("dd", {}, value)]));
  const servers = h("div", { id: "servers" });
  main.replaceChildren(
    h("section", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Warm containers"),
        h("p", {}, `${pools.total} of at most ${pools.max_total} (${pools.max_per_image} per image)`), poolTable),
      h("div", { class: "card" }, h("h2", {}, "Pool counters"), counters),
      h("div", { class: "card" }, h("h2", {}, "Servers"), servers)),
  );
  try {
    const list = await api("/v1/servers");
    servers.append(h("table", {},
      h("thead", {}, h("tr", {}, ["id", "host", "version", "alive", "last seen"].map((x) => h("th", {}, x)))),
      h("tbody", {}, list.items.map((srv) => h("tr", {}, h("td", { class: "mono" }, srv.id), h("td", {}, srv.host),
        h("td", {}, srv.version), h("td", {}, srv.alive ? "yes" : `no${srv.taken_over_by ? ` (taken over by ${srv.taken_over_by})` : ""}`),
        h("td", {}, new Date(srv.last_seen).toLocaleTimeString()))))));
  } catch (error) {
    servers.append(h("p", { class: "hint" }, error.status === 403 ? "Servers are shown to operator keys only." : error.message));
  }
}

// -- overview -----------------------------------------------------------------------

function barChart(values, { id, title, label, height = 120, className = "bar" }) {
  const width = 720;
  const max = Math.max(1, ...values.map((v) => v || 0));
  const step = width / Math.max(1, values.length);
  const svg = s("svg", { id, viewBox: `0 0 ${width + 60} ${height + 30}`, class: "chart", role: "img" });
  svg.append(s("title", {}, title));
  svg.append(s("line", { x1: 0, y1: height, x2: width, y2: height, class: "axis" }));
  svg.append(s("text", { x: width + 4, y: 12, class: "label" }, label(max)));
  svg.append(s("text", { x: width + 4, y: height, class: "label" }, "0"));
  values.forEach((value, i) => {
    if (!value) return;
    const h2 = (value / max) * height;
    const rect = s("rect", { x: i * step + 1, y: height - h2, width: Math.max(1, step - 2), height: h2, class: className });
    rect.append(s("title", {}, `${values.length - i - 1} min ago: ${label(value)}`));
    svg.append(rect);
  });
  svg.append(s("text", { x: 0, y: height + 22, class: "label" }, `${values.length} min ago`));
  svg.append(s("text", { x: width - 30, y: height + 22, class: "label" }, "now"));
  return svg;
}

async function overviewPage(main) {
  const data = await api("/v1/overview?minutes=60");
  const ended = data.minutes.map((m) => m.ended);
  const p50 = data.minutes.map((m) => m.p50_ms);
  const failures = h("table", { id: "failures" },
    h("thead", {}, h("tr", {}, h("th", {}, "code"), h("th", {}, "tasks"), h("th", {}, ""))),
    h("tbody", {}, data.failures.map((f) => {
      const most = data.failures[0].count;
      const bar = s("svg", { viewBox: "0 0 200 14", class: "inline-bar" }, s("rect", { x: 0, y: 2, width: (f.count / most) * 200, height: 10, class: "bar-failed" }));
      return h("tr", {}, h("td", { class: "mono" }, f.code), h("td", {}, f.count), h("td", {}, bar));
    })));
  main.replaceChildren(
    h("section", { class: "grid" },
      h("div", { class: "card wide" }, h("h2", {}, "Tasks per minute, last hour"),
        barChart(ended, { id: "chart-tasks", title: "Tasks ended per minute", label: (v) => `${v}/min` })),
      h("div", { class: "card wide" }, h("h2", {}, "Median latency (p50, submit to end)"),
        barChart(p50, { id: "chart-p50", title: "p50 latency per minute", label: ms, className: "bar bar-run" })),
      h("div", { class: "card wide" }, h("h2", {}, "Failures by code"),
        data.failures.length ? failures : h("p", { class: "hint" }, "No failures in the last hour."),
        h("p", { class: "hint" }, `${data.counted} tasks counted${data.sampled ? " (the latest only)" : ""}.`))),
  );
}

// -- the shell ----------------------------------------------------------------------

async function main() {
  const main = document.getElementById("main");
  try {
    session = await api("/ui/session");
  } catch (error) {
    return;
  }
  document.getElementById("who").textContent = session.login ? `tenant ${session.tenant}` : "";
  const logout = document.getElementById("logout");
  logout.hidden = !session.login;
  logout.addEventListener("click", async () => {
    await fetch("/ui/logout", { method: "POST", headers: { "X-CSRF-Token": session.csrf }, credentials: "same-origin" });
    window.location.assign("/ui/login");
  });
  const path = window.location.pathname.replace(/\/+$/, "");
  const taskMatch = path.match(/^\/ui\/tasks\/([^/]+)$/);
  let page = "tasks";
  try {
    if (taskMatch) {
      page = "task";
      taskPage(main, decodeURIComponent(taskMatch[1]));
    } else if (path === "/ui/pools") {
      page = "pools";
      await poolsPage(main);
    } else if (path === "/ui/overview") {
      page = "overview";
      await overviewPage(main);
    } else {
      tasksPage(main);
    }
  } catch (error) {
    main.replaceChildren(h("p", { class: "error" }, error.message));
  }
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
  }
}

document.addEventListener("DOMContentLoaded", main);
