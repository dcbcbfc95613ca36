// EventOps dashboard: vanilla JS over the JSON API and two SSE streams.
// The API key lives in localStorage ("eventops.key"); a "#key=eo_…" fragment (printed by
// `make demo`) is moved there and removed from the address bar. EventSource cannot send
// headers, so the streams get the key as ?key=.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: null, host: null, series: null, chart: null, alerts: null, scores: null,
                refresh: null, seen: new Set() };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function showError(msg) {
  $("error").textContent = msg;
  $("error").hidden = !msg;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { Authorization: `Bearer ${state.key}`,
    "Content-Type": "application/json", ...(opts.headers || {}) } });
  if (r.status === 401) { showError("The API key was refused (401). Enter a valid key."); stop(); throw new Error("401"); }
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
    throw new Error(`${r.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return r.status === 204 ? null : r.json();
}

const fmtTime = (iso) => new Date(iso).toLocaleTimeString();
const fmtNum = (v) => (v == null ? "–" : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2));
const fmtPct = (c) => `${Math.floor(100 * (c || 0))} %`;
// a series whose latest score is warming (its own history is still short): said, not hidden
const warmingText = (c) => `warming (confidence ${fmtPct(c)})`;

// --- model status ------------------------------------------------------------------------------
async function loadModel() {
  try {
    const m = await api("/models");
    let txt = m.champion ? `model: v${m.champion.version} (champion)` : "model: ensemble only (no champion for this tenant)";
    const tip = [m.name || "", m.detail || ""];
    const d = m.last_decision;
    if (d) {
      // the last promotion decision, with its out-of-sample evidence, in one glance
      txt += ` · last decision: ${d.action} v${d.version}`;
      tip.push(`last decision (${d.at || ""}): ${d.action} v${d.version}: ${d.reason || ""}`);
    }
    for (const h of (m.history || []).slice(-3).reverse()) {
      tip.push(`${h.at || ""} ${h.alias} ${h.from || "–"} → ${h.to} (${h.action}${h.reason ? `: ${h.reason}` : ""})`);
    }
    const sh = m.challenger && m.challenger.shadow;
    if (sh) {
      // the challenger scored in shadow: how it does on the alerts operators labelled
      txt += ` · v${m.challenger.version} in shadow`;
      const tp = sh.feedback.true_positive, fp = sh.feedback.false_positive;
      tip.push(`last ${sh.hours} h, ${sh.windows} windows; high only for the challenger: ${sh.only_challenger_high},`
        + ` only for the champion: ${sh.only_champion_high}`,
        `confirmed alerts flagged — challenger ${tp.challenger_high}/${tp.scored}, champion ${tp.champion_high}/${tp.scored}`,
        `false alarms flagged — challenger ${fp.challenger_high}/${fp.scored}, champion ${fp.champion_high}/${fp.scored}`);
    }
    $("model").textContent = txt;
    $("model").title = tip.filter(Boolean).join("\n");
  } catch (e) { $("model").textContent = "model: unknown"; }
}

// --- hosts overview ----------------------------------------------------------------------------
async function loadHosts() {
  const hosts = await api("/hosts");
  const box = $("hosts");
  box.replaceChildren(...hosts.map((h) => el("div", {
    class: `host lvl-${h.level}${h.host === state.host ? " selected" : ""}${h.warming ? " warming" : ""}`,
    dataset: { host: h.host, level: h.level, warming: h.warming ? "1" : "0" }, onclick: () => selectHost(h.host) },
    el("div", { class: "name" }, h.host),
    el("small", {}, `${h.level}${h.open_alerts ? ` · ${h.open_alerts} open` : ""}`),
    el("small", {}, h.max_score == null ? "no window scored yet" : `score ${h.max_score.toFixed(2)}`),
    ...(h.warming ? [el("small", { class: "warming-note",
      title: `${h.warming} of ${h.series} series still learning their own baseline; scored partly from similar series` },
    warmingText(h.confidence))] : []))));
  if (!state.host && hosts.length) selectHost(hosts[0].host);
}

async function selectHost(host) {
  state.host = host;
  document.querySelectorAll(".host").forEach((n) => n.classList.toggle("selected", n.dataset.host === host));
  const d = await api(`/hosts/${encodeURIComponent(host)}`);
  $("series-title").textContent = host;
  $("series-list").replaceChildren(...d.metrics.map((s) => el("span", {
    class: `chip${state.series === s.metric ? " selected" : ""}`, dataset: { metric: s.metric, warming: s.score_warming ? "1" : "0" },
    onclick: () => selectSeries(host, s.metric) }, `${s.metric} ${fmtNum(s.last_value)} ${s.unit}`
      + (s.score_warming ? ` · ${warmingText(s.score_confidence)}` : ""))));
  const keep = d.metrics.find((s) => s.metric === state.series);
  selectSeries(host, keep ? keep.metric : d.metrics[0].metric);
}

// --- series chart: values (bucket averages), expected band, score, alerts -------------------------
async function selectSeries(host, metric) {
  state.series = metric;
  document.querySelectorAll(".chip").forEach((n) => n.classList.toggle("selected", n.dataset.metric === metric));
  const enc = `${encodeURIComponent(host)}/${encodeURIComponent(metric)}`;
  const end = new Date(), start = new Date(end - 6 * 3600e3);
  const q = `start=${start.toISOString()}&end=${end.toISOString()}`;
  const [vals, scores, alerts] = await Promise.all([
    api(`/metrics?host=${encodeURIComponent(host)}&metric=${encodeURIComponent(metric)}&${q}&points=400`),
    api(`/series/${enc}/scores?${q}`),
    api(`/alerts?host=${encodeURIComponent(host)}&metric=${encodeURIComponent(metric)}&since=${start.toISOString()}&limit=200`),
  ]);
  drawChart(vals, scores, alerts);
  watchScores(host, metric, scores);
}

// chart columns after x: value, expected low, expected high, expected, score, alert
const COLS = 6;
// a score's chart values: the band (expected ± 3 typical deviations) and the score, at window end
const scorePoint = (s) => [null, s.lower, s.upper, s.expected, s.score, null];

function chartNote(scores, stepS) {
  if (!scores.length) return `no window scored yet for this series; step ${stepS}s`;
  const last = scores[scores.length - 1];
  const banded = scores.filter((s) => s.lower != null).length;
  return `${scores.length} scored windows (${banded} with an expected band); step ${stepS}s`
    + (last.warming ? ` · latest score ${warmingText(last.confidence)}: the series is still `
      + "learning its own baseline and is scored partly from similar series" : "");
}

function drawChart(vals, scores, alerts) {
  const t = new Map();
  const row = (ts) => {
    const k = Math.floor(Date.parse(ts) / 1000);
    if (!t.has(k)) t.set(k, Array(COLS).fill(null));
    return t.get(k);
  };
  vals.points.forEach((p) => { row(p.ts)[0] = p.avg; });
  scores.forEach((s) => { const r = row(s.window_end); scorePoint(s).forEach((v, i) => { if (v != null) r[i] = v; }); });
  alerts.forEach((a) => { row(a.ts_event)[5] = a.value; });
  const xs = [...t.keys()].sort((a, b) => a - b);
  const cols = [xs, ...[...Array(COLS).keys()].map((i) => xs.map((x) => t.get(x)[i]))];
  const width = Math.max(300, $("chart").clientWidth || 700);
  const opts = {
    width, height: 300, title: `${vals.host} · ${vals.metric}`,
    scales: { score: { range: [0, 1] } },
    series: [{}, { label: "value", stroke: "#4c8dff", spanGaps: true },
      { label: "expected low", stroke: "#5a6a8a", width: 1, spanGaps: true },
      { label: "expected high", stroke: "#5a6a8a", width: 1, spanGaps: true },
      { label: "expected", stroke: "#8b93a7", dash: [4, 4], spanGaps: true },
      { label: "score", stroke: "#e0a100", scale: "score", spanGaps: true },
      { label: "alert", stroke: "#e5484d", width: 0, points: { show: true, size: 9, fill: "#e5484d" } }],
    // the expected band: filled between "expected high" (series 3) and "expected low" (series 2)
    bands: [{ series: [3, 2], fill: "rgba(139, 147, 167, 0.18)" }],
    axes: [{ stroke: "#8b93a7", grid: { stroke: "#26304a" } }, { stroke: "#8b93a7", grid: { stroke: "#26304a" } },
      { scale: "score", side: 1, stroke: "#e0a100", grid: { show: false } }],
  };
  if (state.chart) state.chart.destroy();
  state.chart = new uPlot(opts, cols, $("chart"));
  state.chartData = cols;
  state.chartScores = scores.slice();
  state.chartStep = vals.step_s;
  $("chart-note").textContent = chartNote(scores, vals.step_s);
}

function watchScores(host, metric) {
  if (state.scores) state.scores.close();
  const url = `/series/${encodeURIComponent(host)}/${encodeURIComponent(metric)}/scores/stream?key=${encodeURIComponent(state.key)}`;
  state.scores = new EventSource(url);
  state.scores.addEventListener("score", (m) => {
    const s = JSON.parse(m.data);
    if (!state.chart || s.host !== state.host || s.metric !== state.series) return;
    const d = state.chartData;
    d[0].push(Math.floor(Date.parse(s.window_end) / 1000));
    scorePoint(s).forEach((v, i) => d[i + 1].push(v));
    state.chart.setData(d);
    state.chartScores.push(s);
    $("chart-note").textContent = chartNote(state.chartScores, state.chartStep);
  });
}

// --- live alert feed + feedback ---------------------------------------------------------------------
function alertItem(a, fresh) {
  const li = el("li", { class: fresh ? "new" : "", dataset: { alertId: a.alert_id } },
    el("span", { class: `sev-${a.severity}` }, a.severity), " ",
    el("b", {}, `${a.host} · ${a.metric}`), " ", el("span", { class: "muted" }, fmtTime(a.ts_event)),
    el("div", {}, a.message || ""));
  const label = el("span", { class: "label" }, a.feedback ? `labelled ${a.feedback.replace("_", " ")}` : "");
  const give = (lab) => async () => {
    try {
      await api(`/alerts/${encodeURIComponent(a.alert_id)}/feedback`, { method: "POST", body: JSON.stringify({ label: lab }) });
      label.textContent = `labelled ${lab.replace("_", " ")}`;
      li.dataset.feedback = lab;
    } catch (e) { showError(`feedback not saved: ${e.message}`); }
  };
  li.append(el("div", { class: "actions" },
    el("button", { class: "tp", onclick: give("true_positive") }, "True positive"),
    el("button", { class: "fp", onclick: give("false_positive") }, "False positive"), label));
  return li;
}

function addAlert(a, fresh) {
  if (a.kind && a.kind !== "open") return;  // the feed lists openings; state is in incidents
  if (state.seen.has(a.alert_id)) return;
  state.seen.add(a.alert_id);
  const feed = $("feed");
  fresh ? feed.prepend(alertItem(a, true)) : feed.append(alertItem(a, false));
  while (feed.children.length > 200) feed.lastChild.remove();
}

async function loadAlerts() {
  const alerts = await api("/alerts?limit=50");
  alerts.forEach((a) => addAlert(a, false));
}

function watchAlerts() {
  if (state.alerts) state.alerts.close();
  state.alerts = new EventSource(`/alerts/stream?key=${encodeURIComponent(state.key)}`);
  state.alerts.onopen = () => { $("live").textContent = "live: on"; $("live").className = "pill on"; };
  state.alerts.onerror = () => { $("live").textContent = "live: reconnecting"; $("live").className = "pill off"; };
  state.alerts.addEventListener("alert", (m) => {
    const a = JSON.parse(m.data);
    addAlert(a, true);
    clearTimeout(state.soon);
    state.soon = setTimeout(() => { loadHosts().catch(() => {}); loadIncidents().catch(() => {}); }, 500);
  });
  // the server ends a stream whose key was revoked (a reconnect would only get 401); on
  // "unavailable" EventSource reconnects by itself and resumes from its Last-Event-ID
  state.alerts.addEventListener("end", (m) => {
    const why = JSON.parse(m.data);
    if (why.reason === "revoked") { stop(); showError("This API key was revoked: enter another key."); }
  });
}

// --- incidents -----------------------------------------------------------------------------------
async function loadIncidents() {
  const incs = await api("/incidents?limit=20");
  $("incidents").replaceChildren(...(incs.length ? incs.map((i) => el("li", { dataset: { incidentId: i.incident_id } },
    el("span", { class: `sev-${i.severity}` }, i.severity), " ", el("b", {}, i.host), ` · ${i.state} · `,
    `${i.alert_count} alert${i.alert_count > 1 ? "s" : ""} since ${fmtTime(i.started_at)} · root: `,
    el("b", {}, i.root.metric), i.series.length > 1 ? ` → ${i.series.slice(1).join(", ")}` : ""))
    : [el("li", { class: "muted" }, "no incidents in the last 24 h")]));
}

// --- lifecycle -----------------------------------------------------------------------------------
function stop() {
  for (const s of [state.alerts, state.scores]) if (s) s.close();
  clearInterval(state.refresh);
  $("main").hidden = true;
  $("live").textContent = "live: off"; $("live").className = "pill off";
}

async function start() {
  showError("");
  $("main").hidden = false;
  $("tenant").textContent = `key ${state.key.split("_")[1] || ""}`;
  try {
    await Promise.all([loadHosts(), loadAlerts(), loadIncidents(), loadModel()]);
  } catch (e) { if (e.message !== "401") showError(e.message); return; }
  watchAlerts();
  state.refresh = setInterval(() => { loadHosts().catch(() => {}); loadIncidents().catch(() => {}); }, 15000);
}

function init() {
  const m = location.hash.match(/key=([^&]+)/);
  if (m) {
    localStorage.setItem("eventops.key", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  state.key = localStorage.getItem("eventops.key");
  $("keyform").addEventListener("submit", (e) => {
    e.preventDefault();
    const k = $("keyinput").value.trim();
    if (!k) return;
    localStorage.setItem("eventops.key", k);
    $("keyinput").value = "";
    state.key = k; stop(); start();
  });
  $("logout").addEventListener("click", () => { localStorage.removeItem("eventops.key"); state.key = null; stop(); showError("No API key: enter one above."); });
  if (state.key) start(); else showError("No API key: enter one above (`eventops keys create --tenant T`).");
}

document.addEventListener("DOMContentLoaded", init);
