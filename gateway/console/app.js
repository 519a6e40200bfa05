// The logpipe console: plain JavaScript, served by the gateway, no build step. It reads only the
// gateway's public API (the same routes, keys and limits as any client):
//   /api/v1/generator/status|start|stop  the header and its controls
//   /api/v1/pipeline                     stage counters sampled by the gateway every 2 s (charts)
//   /api/v1/timeline                     window counts per service and level (error rates, table)
//   /api/v1/alerts, /api/v1/events       the alerts list and the events behind an alert
//   /api/v1/events/stream                the live tail (Server-Sent Events, read with fetch so the
//                                        key goes in a header, resumed with Last-Event-ID)
// The API key is kept in sessionStorage: this tab only, gone when it closes.
"use strict";

const WINDOW_MS = 15 * 60 * 1000;
const TAIL_ROWS = 1000;
const SEEN_IDS = 5000;
const $ = (id) => document.getElementById(id);

const state = {
  config: { zipkin_ui_url: null, keys_required: false },
  samples: [], // {t, generated, acked, consumed, stored, lag: {p: n}}
  lastSampleT: 0,
  tail: { position: null, seen: new Set(), order: [], dropped: 0, received: 0, connects: 0,
          controller: null, filter: { service: "", min_level: "", q: "" }, events: [] },
  charts: {},
};

// ---- API ---------------------------------------------------------------------------------------

function key() { return sessionStorage.getItem("logpipe.key") || ""; }

function headers(extra = {}) {
  const h = { ...extra };
  if (key()) h.Authorization = `Bearer ${key()}`;
  return h;
}

function say(text) { $("message").textContent = text || ""; }

async function api(path, opts = {}) {
  const resp = await fetch(path, { ...opts, headers: headers(opts.headers || {}) });
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const detail = body && body.detail ? body.detail : resp.statusText;
    if (resp.status === 401 || resp.status === 403) say(`${detail}: enter an API key with the route's scope`);
    throw new Error(`${resp.status} ${detail}`);
  }
  return body;
}

// ---- header: generators ------------------------------------------------------------------------

async function refreshStatus() {
  try {
    const s = await api("/api/v1/generator/status");
    $("gen-state").textContent = `${s.state} (${s.instances_running}/${s.instances_total} running)`;
    $("generator").dataset.state = s.state;
    $("gen-rate").textContent = s.rate_per_second;
    $("gen-measured").textContent = Math.round(s.measured_rate_per_second);
    const breakers = (s.instances || []).map((i) => i.body && i.body.breaker_state).filter(Boolean);
    const worst = breakers.includes("open") ? "open" : breakers.includes("half-open") ? "half-open"
      : breakers.length ? "closed" : "unknown";
    $("gen-breaker").textContent = worst;
    $("breaker").dataset.state = worst;
  } catch (e) { $("gen-state").textContent = "unknown"; }
}

async function start(ev) {
  ev.preventDefault();
  const body = { profile: $("profile").value, rate_per_second: Number($("rate").value) };
  if ($("duration").value) body.duration_secs = Number($("duration").value);
  if ($("seed").value) body.seed = Number($("seed").value);
  try {
    const r = await api("/api/v1/generator/start", {
      method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" },
    });
    say(`started ${body.profile} at ${body.rate_per_second}/s on ${r.accepted} generator(s)`);
  } catch (e) { say(`start: ${e.message}`); }
  refreshStatus();
}

async function stop() {
  try {
    const r = await api("/api/v1/generator/stop", { method: "POST" });
    say(`stopped ${r.accepted} generator(s)`);
  } catch (e) { say(`stop: ${e.message}`); }
  refreshStatus();
}

// ---- charts ------------------------------------------------------------------------------------

const COLOURS = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2", "#db2777",
  "#65a30d", "#9333ea", "#475569"];

function chart(el, names) {
  const width = Math.max(320, el.clientWidth || 480);
  const series = [{}].concat(names.map((n, i) => ({ label: n, stroke: COLOURS[i % COLOURS.length], width: 1.5 })));
  return new uPlot({ width, height: 200, series, axes: [{}, { size: 60 }], scales: { x: { time: true } } },
    [[], ...names.map(() => [])], el);
}

/// One chart per element, made again when its series change (new partitions, new services).
function draw(id, names, data) {
  const key = names.join("|");
  let c = state.charts[id];
  if (!c || c.key !== key) {
    if (c) c.plot.destroy();
    $(id).textContent = "";
    c = state.charts[id] = { key, plot: chart($(id), names) };
  }
  c.plot.setData(data);
}

async function refreshPipeline() {
  try {
    const r = await api(`/api/v1/pipeline?since_ms=${state.lastSampleT}`);
    for (const s of r.samples) {
      if (s.t > state.lastSampleT) { state.samples.push(s); state.lastSampleT = s.t; }
    }
    const cutoff = Date.now() - WINDOW_MS;
    while (state.samples.length && state.samples[0].t < cutoff) state.samples.shift();
  } catch (e) { return; }
  const S = state.samples;
  const xs = [], rates = { generated: [], acked: [], consumed: [], stored: [] };
  for (let i = 1; i < S.length; i++) {
    const dt = (S[i].t - S[i - 1].t) / 1000;
    if (dt <= 0) continue;
    xs.push(S[i].t / 1000);
    for (const k of Object.keys(rates)) {
      const a = S[i - 1][k], b = S[i][k];
      // A restarted service starts its counters again: no negative rate, no gap.
      rates[k].push(a == null || b == null ? null : Math.max(0, (b - a) / dt));
    }
  }
  draw("rates", ["generated", "acknowledged", "consumed", "stored"],
    [xs, rates.generated, rates.acked, rates.consumed, rates.stored]);
  const parts = [...new Set(S.flatMap((s) => Object.keys(s.lag || {})))].sort((a, b) => a - b);
  draw("lag", parts.map((p) => `partition ${p}`),
    [S.map((s) => s.t / 1000), ...parts.map((p) => S.map((s) => (s.lag || {})[p] ?? null))]);
}

async function refreshTimeline() {
  const now = new Date();
  const from = new Date(now.getTime() - WINDOW_MS);
  let r;
  try {
    r = await api(`/api/v1/timeline?from=${from.toISOString()}&to=${now.toISOString()}`);
  } catch (e) { return; }
  const byStart = new Map();
  const services = new Set();
  for (const w of r.windows) {
    services.add(w.service);
    const t = Date.parse(w.start) / 1000;
    if (!byStart.has(t)) byStart.set(t, {});
    const cell = (byStart.get(t)[w.service] ||= { total: 0, errors: 0, levels: {} });
    cell.total += w.count;
    if (w.level === "ERROR" || w.level === "FATAL") cell.errors += w.count;
    cell.levels[w.level] = (cell.levels[w.level] || 0) + w.count;
  }
  const xs = [...byStart.keys()].sort((a, b) => a - b);
  const names = [...services].sort();
  draw("errors", names, [xs, ...names.map((s) => xs.map((t) => {
    const c = byStart.get(t)[s];
    return c && c.total ? c.errors / c.total : 0;
  }))]);
  // The newest window still fills; the one before it is complete.
  const latest = xs.length > 1 ? xs[xs.length - 2] : xs[0];
  const levels = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"];
  $("window-start").textContent = latest ? `(${new Date(latest * 1000).toISOString()}, ${r.window_secs} s)` : "";
  $("windows").tHead.innerHTML = `<tr><th>service</th>${levels.map((l) => `<th class="n">${l}</th>`).join("")}</tr>`;
  const rows = latest ? Object.entries(byStart.get(latest)).sort() : [];
  $("windows").tBodies[0].innerHTML = rows.map(([svc, c]) =>
    `<tr><td>${esc(svc)}</td>${levels.map((l) => `<td class="n">${c.levels[l] || 0}</td>`).join("")}</tr>`).join("");
}

// ---- alerts and the events behind one ----------------------------------------------------------

async function refreshAlerts() {
  const from = new Date(Date.now() - 3600 * 1000).toISOString();
  let r;
  try { r = await api(`/api/v1/alerts?from=${from}&limit=50`); } catch (e) { return; }
  $("alerts").tBodies[0].innerHTML = r.alerts.map((a, i) => `<tr data-kind="${esc(a.kind)}">
    <td>${esc(a.kind)}</td><td>${esc(a.severity)}</td><td>${esc(a.service)}</td>
    <td>${esc(a.first_seen)}</td><td>${esc(a.last_seen)}</td><td class="n">${a.occurrences}</td>
    <td><a href="#" data-alert="${i}">events</a></td></tr>`).join("");
  state.alerts = r.alerts;
}

async function showAlertEvents(a) {
  const to = new Date(Date.parse(a.last_seen) + 1000).toISOString();
  const q = new URLSearchParams({ service: a.service, from: a.first_seen, to, limit: "200" });
  if (a.kind === "fatal_event") q.set("level", "FATAL");
  if (a.kind === "brute_force" || a.kind === "error_rate_spike") q.set("min_level", "WARN");
  $("events-title").textContent = `${a.kind} on ${a.service}`;
  $("events-panel").hidden = false;
  const box = $("events");
  box.textContent = "";
  try {
    const r = await api(`/api/v1/events?${q}`);
    for (const e of r.events.reverse()) box.appendChild(row(e, ""));
    if (!r.events.length) box.textContent = "no stored event in that range (a filter may keep them from raw storage)";
  } catch (e) { box.textContent = e.message; }
}

// ---- the live tail -----------------------------------------------------------------------------

function esc(s) {
  return String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function highlight(text, term) {
  if (!term) return esc(text);
  const lower = text.toLowerCase(), t = term.toLowerCase();
  let out = "", i = 0, j;
  while ((j = lower.indexOf(t, i)) >= 0) {
    out += esc(text.slice(i, j)) + `<mark>${esc(text.slice(j, j + t.length))}</mark>`;
    i = j + t.length;
  }
  return out + esc(text.slice(i));
}

function row(e, term) {
  const div = document.createElement("div");
  div.className = "row";
  div.dataset.id = e.event_id;
  div.dataset.service = e.service;
  div.dataset.level = e.level;
  let trace = "";
  if (e.trace_id) {
    trace = state.config.zipkin_ui_url
      ? ` <a class="trace" target="_blank" rel="noopener" href="${esc(state.config.zipkin_ui_url)}/zipkin/traces/${esc(e.trace_id)}">trace ${esc(e.trace_id.slice(0, 12))}</a>`
      : ` <span class="trace">trace ${esc(e.trace_id)}</span>`;
  }
  div.innerHTML = `<span class="ts">${esc(e.timestamp)}</span> <span class="lvl lvl-${esc(e.level)}">${esc(e.level)}</span> ` +
    `<span class="svc">${esc(e.service)}</span> ${highlight(e.message, term)}${trace}`;
  return div;
}

function atBottom(box) { return box.scrollHeight - box.scrollTop - box.clientHeight < 8; }

/// Shows a batch of events: one layout read and one DOM insertion per batch, never per event. An
/// unfiltered tail brings hundreds of events a second; laying the page out for each one kept the
/// renderer busy enough on a slow machine that its timers (charts, status) stopped firing.
function append(events) {
  if (!events.length) return;
  const box = $("tail");
  const follow = atBottom(box);
  const term = state.tail.filter.q;
  const fresh = [];
  for (const e of events) {
    if (state.tail.seen.has(e.event_id)) continue; // a poll read again after a reconnect
    state.tail.seen.add(e.event_id);
    state.tail.order.push(e.event_id);
    state.tail.received++;
    fresh.push(e);
  }
  const over = state.tail.order.length - SEEN_IDS;
  if (over > 0) for (const id of state.tail.order.splice(0, over)) state.tail.seen.delete(id);
  state.tail.events.push(...fresh);
  if (state.tail.events.length > TAIL_ROWS) state.tail.events.splice(0, state.tail.events.length - TAIL_ROWS);
  const frag = document.createDocumentFragment();
  for (const e of fresh.slice(-TAIL_ROWS)) frag.appendChild(row(e, term));
  box.appendChild(frag);
  for (let extra = box.childElementCount - TAIL_ROWS; extra > 0; extra--) box.firstElementChild.remove();
  if (follow) box.scrollTop = box.scrollHeight;
  tailStatus();
}

function tailStatus(extra) {
  const t = state.tail;
  $("tail-status").textContent = `${t.controller ? "live" : "disconnected"} · ${t.received} received · ` +
    `${t.dropped} left out by the stream's rate cap` + (extra ? ` · ${extra}` : "");
}

function tailQuery() {
  const q = new URLSearchParams({ rate: "500" });
  for (const [k, v] of Object.entries(state.tail.filter)) if (v) q.set(k, v);
  return q;
}

/// Read one SSE connection to its end; returns why it ended.
async function readStream(controller) {
  const h = headers({ Accept: "text/event-stream" });
  if (state.tail.position !== null) h["Last-Event-ID"] = state.tail.position;
  const resp = await fetch(`/api/v1/events/stream?${tailQuery()}`, { headers: h, signal: controller.signal });
  if (!resp.ok) {
    let detail = resp.statusText;
    try { detail = (await resp.json()).detail; } catch (_) { /* not JSON */ }
    return `${resp.status} ${detail}`;
  }
  state.tail.connects++;
  tailStatus();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return "the stream ended";
    buf += value;
    // Everything this read brought is shown at once (a poll arrives as one write).
    const batch = [];
    let position = null, note;
    let from = 0, cut;
    while ((cut = buf.indexOf("\n\n", from)) >= 0) {
      const block = buf.slice(from, cut);
      from = cut + 2;
      let event = "message", data = "", id = null;
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue; // a heartbeat
        const i = line.indexOf(":");
        const field = i < 0 ? line : line.slice(0, i);
        const val = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
        if (field === "event") event = val;
        else if (field === "data") data += (data ? "\n" : "") + val;
        else if (field === "id") id = val;
      }
      if (event === "log") batch.push(JSON.parse(data));
      else if (event === "dropped") state.tail.dropped += JSON.parse(data).dropped;
      else if (event === "cutoff" || event === "shutdown" || event === "reset") note = JSON.parse(data).reason;
      // The id comes last in a poll: everything before it is in this batch or an earlier one.
      if (id !== null) position = id;
    }
    buf = buf.slice(from);
    append(batch);
    tailStatus(note);
    if (position !== null) state.tail.position = position;
  }
}

async function runTail() {
  for (;;) {
    const controller = new AbortController();
    state.tail.controller = controller;
    let why;
    try { why = await readStream(controller); } catch (e) { why = e.name === "AbortError" ? "aborted" : e.message; }
    if (state.tail.controller !== controller) return; // replaced by a new filter
    state.tail.controller = null;
    tailStatus(`reconnecting (${why})`);
    await new Promise((r) => setTimeout(r, 1000));
    if (state.tail.controller) return;
  }
}

/// A new filter: a new stream from now, after the latest matching events as a start.
async function restartTail() {
  if (state.tail.controller) { const c = state.tail.controller; state.tail.controller = null; c.abort(); }
  const t = state.tail;
  t.filter = { service: $("tail-service").value.trim(), min_level: $("tail-level").value, q: $("tail-q").value.trim() };
  t.position = null; t.seen = new Set(); t.order = []; t.events = []; t.dropped = 0; t.received = 0;
  $("tail").textContent = "";
  const q = new URLSearchParams({ limit: "50" });
  for (const [k, v] of Object.entries(t.filter)) if (v) q.set(k, v);
  try { append((await api(`/api/v1/events?${q}`)).events.reverse()); } catch (e) { tailStatus(e.message); }
  runTail();
}

/// Drop the connection and resume from the last position (what a network blip does; the browser
/// test calls it to check that nothing is skipped).
function reconnectTail() {
  const c = state.tail.controller;
  if (c) c.abort();
}

// ---- start -------------------------------------------------------------------------------------

async function main() {
  try { state.config = await (await fetch("/console/config.json")).json(); } catch (_) { /* defaults */ }
  $("key").value = key();
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("logpipe.key", $("key").value.trim());
    say("key set for this tab");
    restartTail();
  });
  $("control").addEventListener("submit", start);
  $("stop").addEventListener("click", stop);
  $("tail-filter").addEventListener("submit", (ev) => { ev.preventDefault(); restartTail(); });
  $("events-close").addEventListener("click", () => { $("events-panel").hidden = true; });
  $("alerts").addEventListener("click", (ev) => {
    const i = ev.target.dataset.alert;
    if (i === undefined) return;
    ev.preventDefault();
    showAlertEvents(state.alerts[Number(i)]);
  });
  $("tail").addEventListener("scroll", () => { $("tail-paused").hidden = atBottom($("tail")); });
  if (state.config.keys_required && !key()) say("this gateway needs an API key: enter one above");
  const every = (ms, f) => { f(); setInterval(f, ms); };
  every(2000, refreshStatus);
  every(2000, refreshPipeline);
  every(10000, refreshTimeline);
  every(5000, refreshAlerts);
  restartTail();
}

window.logpipeConsole = { state, reconnectTail, restartTail };
main();
