// EventOps dashboard: vanilla JS over the JSON API and two SSE streams.
// The API key lives in localStorage ("eventops.key"); a "#key=eo_…" fragment (printed by
// `make demo`) is moved there and removed from the address bar. EventSource cannot send
// headers, so the streams get the key as ?key=.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: null, host: null, series: null, chart: null, alerts: null, scores: null,
                refresh: null, alertsById: new Map() };

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
// One entry per alert, newest first, showing its state (firing / resolved / silenced): a
// transition updates the entry of its alert instead of adding one.
// opened_at: ISO from the API, epoch seconds in an SSE transition
const openedIso = (a) => (typeof a.opened_at === "number" ? new Date(a.opened_at * 1000).toISOString() : a.opened_at || a.ts_event);

function alertState(a) {
  if (a.state === "resolved" || a.kind === "resolve") return "resolved";
  return (a.silenced_by || []).length ? "silenced" : "open";
}

function stateBadge(a) {
  const s = alertState(a);
  const text = s === "open" ? "firing" : s;
  const title = s === "silenced" ? `silenced by ${a.silenced_by.join(", ")}` : "";
  return el("span", { class: `state state-${s}`, title }, text);
}

function alertItem(a, fresh) {
  const li = el("li", { class: `${fresh ? "new" : ""} ${alertState(a) === "resolved" ? "resolved" : ""}`,
    dataset: { alertId: a.alert_id, state: alertState(a) } });
  fillAlertItem(li, a);
  return li;
}

function fillAlertItem(li, a) {
  const label = el("span", { class: "label" }, a.feedback ? `labelled ${a.feedback.replace("_", " ")}` : "");
  const give = (lab) => async () => {
    try {
      await api(`/alerts/${encodeURIComponent(a.alert_id)}/feedback`, { method: "POST", body: JSON.stringify({ label: lab }) });
      label.textContent = `labelled ${lab.replace("_", " ")}`;
      li.dataset.feedback = lab;
      a.feedback = lab;
    } catch (e) { showError(`feedback not saved: ${e.message}`); }
  };
  const mute = async () => {
    try {
      await api("/silences", { method: "POST", body: JSON.stringify({ matchers: [`host=${a.host}`, `metric=${a.metric}`], duration_s: 3600, comment: "from the alert feed" }) });
      await Promise.all([loadSilences(), refreshAlert(a.alert_id)]);
    } catch (e) { showError(`silence not created: ${e.message}`); }
  };
  li.className = `${li.className.includes("new") ? "new " : ""}${alertState(a) === "resolved" ? "resolved" : ""}`;
  li.dataset.state = alertState(a);
  if (a.feedback) li.dataset.feedback = a.feedback;
  li.replaceChildren(
    el("span", { class: `sev-${a.severity}` }, a.severity), " ",
    el("b", {}, `${a.host} · ${a.metric}`), stateBadge(a), " ",
    el("span", { class: "muted" }, fmtTime(openedIso(a))),
    el("div", {}, a.message || ""),
    el("div", { class: "actions" },
      el("button", { class: "tp", onclick: give("true_positive") }, "True positive"),
      el("button", { class: "fp", onclick: give("false_positive") }, "False positive"),
      alertState(a) === "open" ? el("button", { class: "mute", onclick: mute }, "Silence 1 h") : "",
      el("button", { class: "ghost details", onclick: () => showAlert(a.alert_id) }, "details"), label));
}

function addAlert(a, fresh) {
  const feed = $("feed");
  const have = feed.querySelector(`li[data-alert-id="${CSS.escape(a.alert_id)}"]`);
  if (have) {  // a later transition (escalate, resolve) or a refresh: update in place
    const cur = state.alertsById.get(a.alert_id) || {};
    const merged = { ...cur, ...a, state: a.kind === "resolve" ? "resolved" : (a.state || cur.state) };
    if (a.kind && a.kind !== "resolve" && merged.state !== "resolved") merged.state = "open";
    state.alertsById.set(a.alert_id, merged);
    fillAlertItem(have, merged);
    return;
  }
  if (a.kind && a.kind !== "open") return;  // a transition of an alert that is not listed
  state.alertsById.set(a.alert_id, a);
  fresh ? feed.prepend(alertItem(a, true)) : feed.append(alertItem(a, false));
  while (feed.children.length > 200) feed.lastChild.remove();
}

async function refreshAlert(id) {
  try { addAlert(await api(`/alerts/${encodeURIComponent(id)}`), false); } catch (_) { /* gone */ }
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
    refreshAlert(a.alert_id);  // its stored state, with the silences that mute it
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

// --- silences ------------------------------------------------------------------------------------
const matcherText = (m) => `${m.name}${m.op}${m.value}`;

async function loadSilences() {
  const xs = await api("/silences");
  $("silences").replaceChildren(...(xs.length ? xs.map((s) => el("li", { dataset: { silenceId: s.id, state: s.state } },
    el("span", { class: `state state-${s.state === "active" ? "silenced" : "open"}` }, s.kind === "maintenance" ? `maintenance · ${s.state}` : s.state), " ",
    el("b", {}, s.matchers.map(matcherText).join(" ") || "(every alert)"),
    el("div", { class: "muted" }, s.schedule ? `${s.schedule} (UTC) for ${Math.round(s.duration_s / 60)} min` : `until ${fmtTime(s.ends_at)}`,
      ` · ${s.author}${s.comment ? ` · ${s.comment}` : ""}`),
    el("div", { class: "actions" }, el("button", { class: "expire", onclick: () => expireSilence(s.id) }, "Expire"))))
    : [el("li", { class: "muted" }, "no active silences")]));
}

async function expireSilence(id) {
  try {
    await api(`/silences/${encodeURIComponent(id)}/expire`, { method: "POST" });
    await loadSilences();
    await reloadFeedStates();
  } catch (e) { showError(`silence not expired: ${e.message}`); }
}

async function reloadFeedStates() {
  const alerts = await api("/alerts?limit=50");
  alerts.forEach((a) => addAlert(a, false));
}

async function createSilence(e) {
  e.preventDefault();
  const matchers = $("silence-matchers").value.split(/[\s,]+/).filter(Boolean);
  try {
    // with a schedule it is a maintenance window: the duration each time the schedule fires
    const schedule = $("silence-schedule").value.trim() || null;
    await api("/silences", { method: "POST", body: JSON.stringify({ matchers, duration_s: Number($("silence-duration").value), comment: $("silence-comment").value, schedule }) });
    $("silence-matchers").value = ""; $("silence-comment").value = ""; $("silence-schedule").value = "";
    await loadSilences();
    await reloadFeedStates();
  } catch (err) { showError(`silence not created: ${err.message}`); }
}

// --- channels ------------------------------------------------------------------------------------
async function loadChannels() {
  const xs = await api("/channels");
  $("channels").replaceChildren(...(xs.length ? xs.map((c) => el("li", { dataset: { channel: c.name } },
    el("b", {}, c.name), ` · ${c.kind} · `, el("span", { class: "muted" }, c.url),
    el("div", { class: "muted" }, `${c.filter.min_severity || "warning"}+ ${(c.filter.matchers || []).map(matcherText).join(" ")}`)))
    : [el("li", { class: "muted" }, "no channels: alerts are only stored and shown here")]));
}

async function createChannel(e) {
  e.preventDefault();
  try {
    const c = await api("/channels", { method: "POST", body: JSON.stringify({ name: $("channel-name").value.trim(), kind: $("channel-kind").value,
      url: $("channel-url").value.trim(), filter: { min_severity: $("channel-severity").value, matchers: [] } }) });
    $("channel-secret").hidden = !c.secret;
    $("channel-secret").textContent = c.secret ? `signing secret of ${c.name} (shown once, store it now): ${c.secret}` : "";
    $("channel-name").value = ""; $("channel-url").value = "";
    await loadChannels();
  } catch (err) { showError(`channel not added: ${err.message}${err.message.startsWith("403") ? " (adding channels needs an admin key)" : ""}`); }
}

// --- incident and alert detail ---------------------------------------------------------------------
function deliveryTable(ds) {
  if (!ds.length) return el("p", { class: "muted" }, "no deliveries (no channel matched, or none configured)");
  return el("table", { class: "deliveries" },
    el("tr", {}, ...["transition", "channel", "state", "attempts", "last status", "latency"].map((h) => el("th", {}, h))),
    ...ds.map((d) => el("tr", { dataset: { state: d.state } }, el("td", {}, d.kind), el("td", {}, `${d.channel} (${d.channel_kind})`),
      el("td", {}, d.state + (d.silenced_by.length ? ` by ${d.silenced_by.join(", ")}` : "")), el("td", {}, d.attempts),
      el("td", {}, d.last_status ?? (d.last_error || "–")),
      el("td", {}, d.log.length ? `${d.log[d.log.length - 1].latency_ms.toFixed(0)} ms` : "–"))));
}

async function alertBlock(a) {
  const [full, ds] = await Promise.all([api(`/alerts/${encodeURIComponent(a.alert_id)}`), api(`/alerts/${encodeURIComponent(a.alert_id)}/deliveries`)]);
  return el("div", { class: "alert-detail", dataset: { alertId: a.alert_id } },
    el("h3", {}, el("span", { class: `sev-${full.severity}` }, full.severity), ` ${full.host} · ${full.metric} `, stateBadge(full),
      " ", el("a", { href: "#", onclick: (e) => { e.preventDefault(); state.series = full.metric; selectHost(full.host); } }, "series")),
    el("p", {}, full.message),
    el("ul", { class: "timeline" }, ...full.events.map((ev) => el("li", {}, `${fmtTime(ev.payload.ts_event)} ${ev.kind} (${ev.payload.severity}, score ${fmtNum(ev.payload.score)})`))),
    el("h4", {}, "Deliveries"), deliveryTable(ds));
}

async function showAlert(id) {
  try {
    $("detail-title").textContent = "Alert";
    $("detail").replaceChildren(await alertBlock({ alert_id: id }));
    $("detail-panel").hidden = false;
    $("detail-panel").scrollIntoView({ block: "nearest" });
  } catch (e) { showError(`alert ${id}: ${e.message}`); }
}

async function showIncident(id) {
  try {
    const inc = await api(`/incidents/${encodeURIComponent(id)}`);
    $("detail-title").textContent = `Incident on ${inc.host} (${inc.state}, ${inc.alert_count} alerts, likely root ${inc.root.metric})`;
    const blocks = await Promise.all(inc.alerts.slice(0, 10).map(alertBlock));
    $("detail").replaceChildren(el("p", { class: "muted" }, `from ${fmtTime(inc.started_at)}${inc.ended_at ? ` to ${fmtTime(inc.ended_at)}` : ""}; series in rank order: ${inc.series.join(", ")}`), ...blocks);
    $("detail-panel").hidden = false;
    $("detail-panel").scrollIntoView({ block: "nearest" });
  } catch (e) { showError(`incident: ${e.message}`); }
}

// --- incidents -----------------------------------------------------------------------------------
async function loadIncidents() {
  const incs = await api("/incidents?limit=20");
  $("incidents").replaceChildren(...(incs.length ? incs.map((i) => el("li", { dataset: { incidentId: i.incident_id }, onclick: () => showIncident(i.incident_id) },
    el("span", { class: `sev-${i.severity}` }, i.severity), " ", el("b", {}, i.host), ` · ${i.state} · `,
    `${i.alert_count} alert${i.alert_count > 1 ? "s" : ""} since ${fmtTime(i.started_at)} · root: `,
    el("b", {}, i.root.metric), i.series.length > 1 ? ` → ${i.series.slice(1).join(", ")}` : ""))
    : [el("li", { class: "muted" }, "no incidents in the last 24 h")]));
}

// --- lifecycle -----------------------------------------------------------------------------------
function stop() {
  for (const s of [state.alerts, state.scores]) if (s) s.close();
  clearInterval(state.refresh);
  state.alertsById.clear();
  for (const id of ["feed", "silences", "channels", "detail"]) $(id).replaceChildren();
  $("detail-panel").hidden = true;
  $("channel-secret").hidden = true; $("channel-secret").textContent = "";
  $("main").hidden = true;
  $("live").textContent = "live: off"; $("live").className = "pill off";
}

async function start() {
  showError("");
  $("main").hidden = false;
  $("tenant").textContent = `key ${state.key.split("_")[1] || ""}`;
  try {
    await Promise.all([loadHosts(), loadAlerts(), loadIncidents(), loadModel(), loadSilences(), loadChannels()]);
  } catch (e) { if (e.message !== "401") showError(e.message); return; }
  watchAlerts();
  const deep = location.hash.match(/alert=([^&]+)/);  // the link in a notification
  if (deep) showAlert(decodeURIComponent(deep[1]));
  state.refresh = setInterval(() => { loadHosts().catch(() => {}); loadIncidents().catch(() => {}); loadSilences().catch(() => {}); }, 15000);
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
  $("silence-form").addEventListener("submit", createSilence);
  $("channel-form").addEventListener("submit", createChannel);
  $("detail-close").addEventListener("click", () => { $("detail-panel").hidden = true; });
  window.addEventListener("hashchange", () => {
    const deep = location.hash.match(/alert=([^&]+)/);
    if (deep && state.key) showAlert(decodeURIComponent(deep[1]));
  });
  $("logout").addEventListener("click", () => { localStorage.removeItem("eventops.key"); state.key = null; stop(); showError("No API key: enter one above."); });
  if (state.key) start(); else showError("No API key: enter one above (`eventops keys create --tenant T`).");
}

document.addEventListener("DOMContentLoaded", init);
