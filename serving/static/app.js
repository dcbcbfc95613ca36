// EventOps dashboard: vanilla JS over the JSON API and two SSE streams.
// The API key lives in localStorage ("eventops.key"); a "#key=eo_…" fragment (printed by
// `make demo`) is moved there and removed from the address bar. EventSource cannot send
// headers, so the streams get the key as ?key=.
// Tenant isolation on screen: every view is drawn from answers to the current key only. A key
// change (or a refused key) bumps state.gen, aborts the requests in flight and clears every
// view; an answer that arrives for an older generation is dropped (Stale), never drawn.
// Addresses: #alert=<id>, #incident=<id>, #series=<host>/<metric>[@<ISO time>] (links).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: null, host: null, series: null, at: null, chart: null, alerts: null, scores: null,
                refresh: null, soon: null, redraw: null, alertsById: new Map(), gen: 0, ctl: new AbortController(),
                hostPick: 0, seriesPick: 0 };

// an answer for a key that is no longer the current one: dropped by every caller
class Stale extends Error { constructor() { super("stale"); } }

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
  const gen = state.gen;
  let r, body = null;
  try {
    r = await fetch(path, { ...opts, signal: state.ctl.signal, headers: { Authorization: `Bearer ${state.key}`,
      "Content-Type": "application/json", ...(opts.headers || {}) } });
    if (r.ok && r.status !== 204) body = await r.json();
  } catch (e) {
    if (gen !== state.gen) throw new Stale();
    throw e;
  }
  if (gen !== state.gen) throw new Stale();
  if (r.status === 401) { stop(); showError("The API key was refused (401). Enter a valid key."); throw new Stale(); }
  if (!r.ok) {
    let detail = r.statusText;
    try { detail = (await r.json()).detail; } catch (_) { /* not JSON */ }
    throw new Error(`${r.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return body;
}

// an error worth showing (not a dropped answer of an older key)
function fail(what, e) { if (!(e instanceof Stale)) showError(`${what}: ${e.message}`); }
const quiet = (p) => p.catch((e) => { if (!(e instanceof Stale)) console.warn(e.message); });

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
  } catch (e) { if (!(e instanceof Stale)) $("model").textContent = "model: unknown"; }
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
  if (!state.host && hosts.length) quiet(selectHost(hosts[0].host));
}

// at: an ISO time to centre the chart on (a link from an alert), or null for the last 6 h
async function selectHost(host, metric = null, at = null) {
  const pick = ++state.hostPick;  // a later pick wins over this one's answer
  state.host = host;
  if (metric) state.series = metric;
  document.querySelectorAll(".host").forEach((n) => n.classList.toggle("selected", n.dataset.host === host));
  const d = await api(`/hosts/${encodeURIComponent(host)}`);
  if (pick !== state.hostPick) return;
  $("series-title").textContent = host;
  $("series-list").replaceChildren(...d.metrics.map((s) => el("span", {
    class: `chip${state.series === s.metric ? " selected" : ""}`, dataset: { metric: s.metric, warming: s.score_warming ? "1" : "0" },
    onclick: () => quiet(selectSeries(host, s.metric)) }, `${s.metric} ${fmtNum(s.last_value)} ${s.unit}`
      + (s.score_warming ? ` · ${warmingText(s.score_confidence)}` : ""))));
  const keep = d.metrics.find((s) => s.metric === state.series);
  if (!d.metrics.length) return;
  await selectSeries(host, keep ? keep.metric : d.metrics[0].metric, at);
}

// --- series chart: value envelope (min–max per bucket) and mean, expected band, score, alerts ----
const SPAN_MS = 6 * 3600e3;

async function selectSeries(host, metric, at = null) {
  const pick = ++state.seriesPick;
  state.series = metric;
  state.at = at;
  document.querySelectorAll(".chip").forEach((n) => n.classList.toggle("selected", n.dataset.metric === metric));
  const enc = `${encodeURIComponent(host)}/${encodeURIComponent(metric)}`;
  // a time from a link: that moment in the middle of the view (or as late as now allows)
  const end = at ? new Date(Math.min(Date.now(), Date.parse(at) + SPAN_MS / 2)) : new Date();
  const start = new Date(end - SPAN_MS);
  const q = `start=${start.toISOString()}&end=${end.toISOString()}`;
  const [vals, scores, alerts] = await Promise.all([
    api(`/metrics?host=${encodeURIComponent(host)}&metric=${encodeURIComponent(metric)}&${q}&points=400`),
    api(`/series/${enc}/scores?${q}&limit=10000`),
    api(`/alerts?host=${encodeURIComponent(host)}&metric=${encodeURIComponent(metric)}&since=${start.toISOString()}&limit=200`),
  ]);
  if (pick !== state.seriesPick) return;
  drawChart(vals, scores, alerts.filter((a) => Date.parse(a.opened_at) < end.getTime()), at);
  watchScores(host, metric);
}

// chart columns after x: value min, max, mean, expected low, high, expected, score, alert
const COLS = 8;

// One row per value bucket (start of [x, x + step)): the bucket's min, max and mean, the windows
// scored in it (the highest score, the widest band, the mean expectation) and its alerts, so a
// hover shows every series at once. A hole longer than 2.5 typical spacings between buckets gets
// a null row: lines and bands break there instead of bridging it.
function chartColumns(vals, scores, alerts) {
  const step = vals.step_s;
  const pts = vals.points.map((p) => ({ x: Date.parse(p.ts) / 1000, p }));
  const gaps = pts.slice(1).map((q, i) => q.x - pts[i].x).sort((a, b) => a - b);
  const typical = Math.max(step, gaps.length ? gaps[Math.floor(gaps.length / 2)] : step);
  const ws = scores.map((s) => ({ a: Date.parse(s.window_start) / 1000, b: Date.parse(s.window_end) / 1000, s }))
    .sort((u, v) => u.b - v.b);
  const xs = [], cols = Array.from({ length: COLS }, () => []);
  const push = (x, row) => { xs.push(x); row.forEach((v, i) => cols[i].push(v)); };
  let j = 0;
  pts.forEach(({ x, p }, i) => {
    if (i > 0 && x - pts[i - 1].x > 2.5 * typical) push(pts[i - 1].x + typical, Array(COLS).fill(null));
    while (j < ws.length && ws[j].b <= x) j++;
    let score = null, lo = null, hi = null, ex = 0, n = 0;
    for (let k = j; k < ws.length && ws[k].a < x + step; k++) {
      const s = ws[k].s;
      if (ws[k].b <= x) continue;
      score = Math.max(score ?? 0, s.score);
      if (s.lower != null && s.upper != null) {
        lo = lo == null ? s.lower : Math.min(lo, s.lower);
        hi = hi == null ? s.upper : Math.max(hi, s.upper);
        if (s.expected != null) { ex += s.expected; n++; }
      }
    }
    push(x, [p.min, p.max, p.avg, lo, hi, n ? ex / n : null, score, null]);
  });
  for (const a of alerts) {  // an alert at the bucket of its opening, at its value
    const t = Date.parse(a.opened_at) / 1000;
    let i = xs.length - 1;
    while (i >= 0 && (xs[i] > t || cols[2][i] == null)) i--;
    // at the value that opened it (an alert's value follows the series until it resolves)
    const v = (a.explanation && typeof a.explanation.actual === "number") ? a.explanation.actual : a.value;
    if (i >= 0 && t < xs[i] + step) cols[7][i] = Math.max(cols[7][i] ?? -Infinity, v);
  }
  return [xs, ...cols];
}

function chartNote(scores, stepS) {
  if (!scores.length) return `no window scored yet for this series; step ${stepS}s`;
  const last = scores[scores.length - 1];
  const banded = scores.filter((s) => s.lower != null).length;
  return `${scores.length} scored windows (${banded} with an expected band); step ${stepS}s; `
    + "the shaded blue envelope is each step's min–max, the line its mean"
    + (last.warming ? ` · latest score ${warmingText(last.confidence)}: the series is still `
      + "learning its own baseline and is scored partly from similar series" : "");
}

const chartSize = () => {
  const w = Math.max(200, Math.floor($("chart").clientWidth || 300));
  return { width: w, height: w < 500 ? 220 : 300 };
};
const NOPTS = { show: false };
const legendValue = (digits) => (u, v) => (v == null ? "–" : digits == null ? fmtNum(v) : v.toFixed(digits));

function drawChart(vals, scores, alerts, at) {
  const cols = chartColumns(vals, scores, alerts);
  const envelope = "rgba(76, 141, 255, 0.45)";
  const opts = {
    ...chartSize(), title: `${vals.host} · ${vals.metric}${at ? ` around ${fmtTime(at)}` : ""}`,
    scales: { score: { range: [0, 1] } },
    series: [{},
      { label: "min", points: NOPTS, stroke: envelope, width: 1, value: legendValue() },
      { label: "max", points: NOPTS, stroke: envelope, width: 1, value: legendValue() },
      { label: "mean", points: NOPTS, stroke: "#4c8dff", width: 2, value: legendValue() },
      { label: "expected low", points: NOPTS, stroke: "#5a6a8a", width: 1, value: legendValue() },
      { label: "expected high", points: NOPTS, stroke: "#5a6a8a", width: 1, value: legendValue() },
      { label: "expected", points: NOPTS, stroke: "#8b93a7", dash: [4, 4], value: legendValue() },
      { label: "score", points: NOPTS, stroke: "#e0a100", scale: "score", value: legendValue(2) },
      { label: "alert", stroke: "#e5484d", width: 0, points: { show: true, size: 9, fill: "#e5484d" }, value: legendValue() }],
    // the value envelope (max over min) and the expected band (high over low)
    bands: [{ series: [2, 1], fill: "rgba(76, 141, 255, 0.18)" }, { series: [5, 4], fill: "rgba(139, 147, 167, 0.18)" }],
    axes: [{ stroke: "#8b93a7", grid: { stroke: "#26304a" } }, { stroke: "#8b93a7", grid: { stroke: "#26304a" } },
      { scale: "score", side: 1, stroke: "#e0a100", grid: { show: false } }],
  };
  if (state.chart) state.chart.destroy();
  state.chart = new uPlot(opts, cols, $("chart"));
  state.chartData = cols;
  state.chartStep = vals.step_s;
  $("chart").dataset.series = `${vals.host}/${vals.metric}`;
  $("chart-note").textContent = chartNote(scores, vals.step_s);
  // series → alert: the alerts drawn on the chart, each a link to its detail
  $("chart-alerts").replaceChildren(...alerts.slice(0, 20).map((a) => el("li", {},
    link(`${fmtTime(a.opened_at)} ${a.severity} ${a.state === "resolved" ? "(resolved)" : "(firing)"}: ${fmtNum(a.value)}`,
      `alert=${encodeURIComponent(a.alert_id)}`, { class: `sev-${a.severity}`, dataset: { alertId: a.alert_id } }))));
}

// new scores of the series on view: the chart is read again, at most every 3 s (a view of the
// past around an alert stays as it is)
function watchScores(host, metric) {
  if (state.scores) state.scores.close();
  const url = `/series/${encodeURIComponent(host)}/${encodeURIComponent(metric)}/scores/stream?key=${encodeURIComponent(state.key)}`;
  state.scores = new EventSource(url);
  state.scores.addEventListener("score", (m) => {
    const s = JSON.parse(m.data);
    if (!state.chart || s.host !== state.host || s.metric !== state.series || state.at || state.redraw) return;
    state.redraw = setTimeout(() => { state.redraw = null; quiet(selectSeries(host, metric)); }, 3000);
  });
}

// an in-page link: a real #address (copy it, open it in a tab), followed without a reload
function link(text, hash, attrs = {}) {
  return el("a", { ...attrs, href: `#${hash}`, onclick: (e) => { e.preventDefault(); go(hash); } }, text);
}

// open the view an address names, as a step the back button returns from
function go(hash) { history.pushState(null, "", `#${hash}`); route(); }

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
    } catch (e) { fail("feedback not saved", e); }
  };
  const mute = async () => {
    try {
      await api("/silences", { method: "POST", body: JSON.stringify({ matchers: [`host=${a.host}`, `metric=${a.metric}`], duration_s: 3600, comment: "from the alert feed" }) });
      await Promise.all([loadSilences(), refreshAlert(a.alert_id)]);
    } catch (e) { fail("silence not created", e); }
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
      el("button", { class: "ghost details", onclick: () => go(`alert=${encodeURIComponent(a.alert_id)}`) }, "details"), label));
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
  try { addAlert(await api(`/alerts/${encodeURIComponent(id)}`), false); } catch (_) { /* gone, or another key's */ }
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
    state.soon = setTimeout(() => { quiet(loadHosts()); quiet(loadIncidents()); }, 500);
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
  } catch (e) { fail("silence not expired", e); }
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
  } catch (err) { fail("silence not created", err); }
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
  } catch (err) { fail("channel not added", err.message && err.message.startsWith("403") ? new Error(`${err.message} (adding channels needs an admin key)`) : err); }
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

const seriesHash = (host, metric, at) => `series=${encodeURIComponent(host)}/${encodeURIComponent(metric)}${at ? `@${at}` : ""}`;

async function alertBlock(a, inIncident = null) {
  const [full, ds] = await Promise.all([api(`/alerts/${encodeURIComponent(a.alert_id)}`), api(`/alerts/${encodeURIComponent(a.alert_id)}/deliveries`)]);
  // alert → its series at that time → its incident (and back to the alert from the chart)
  const links = el("span", { class: "links" }, " ", link("series at that time", seriesHash(full.host, full.metric, full.opened_at), { class: "to-series" }),
    ...(full.incident_id && full.incident_id !== inIncident ? [" · ", link("incident", `incident=${encodeURIComponent(full.incident_id)}`, { class: "to-incident" })] : []));
  return el("div", { class: "alert-detail", dataset: { alertId: a.alert_id } },
    el("h3", {}, el("span", { class: `sev-${full.severity}` }, full.severity), ` ${full.host} · ${full.metric} `, stateBadge(full), links),
    el("p", {}, full.message),
    el("ul", { class: "timeline" }, ...full.events.map((ev) => el("li", {}, `${fmtTime(ev.payload.ts_event)} ${ev.kind} (${ev.payload.severity}, score ${fmtNum(ev.payload.score)})`))),
    el("h4", {}, "Deliveries"), deliveryTable(ds));
}

async function showAlert(id) {
  try {
    const block = await alertBlock({ alert_id: id });
    $("detail-title").textContent = "Alert";
    $("detail-panel").dataset.view = `alert=${id}`;
    $("detail").replaceChildren(block);
    $("detail-panel").hidden = false;
    $("detail-panel").scrollIntoView({ block: "nearest" });
  } catch (e) { fail(`alert ${id}`, e); }
}

async function showIncident(id) {
  try {
    const inc = await api(`/incidents/${encodeURIComponent(id)}`);
    const blocks = await Promise.all(inc.alerts.slice(0, 10).map((a) => alertBlock(a, inc.incident_id)));
    $("detail-title").textContent = `Incident on ${inc.host} (${inc.state}, ${inc.alert_count} alerts, likely root ${inc.root.metric})`;
    $("detail-panel").dataset.view = `incident=${id}`;
    $("detail").replaceChildren(el("p", { class: "muted" }, `from ${fmtTime(inc.started_at)}${inc.ended_at ? ` to ${fmtTime(inc.ended_at)}` : ""}; likely root: `,
      link(`${inc.root.metric} at ${fmtTime(inc.started_at)}`, seriesHash(inc.host, inc.root.metric, inc.started_at), { class: "to-series" }),
      `; series in rank order: ${inc.series.join(", ")}`), ...blocks);
    $("detail-panel").hidden = false;
    $("detail-panel").scrollIntoView({ block: "nearest" });
  } catch (e) { fail("incident", e); }
}

// the view an address names: #alert=…, #incident=…, #series=host/metric[@time]
function route() {
  if (!state.key) return;
  const h = location.hash.slice(1);
  let m;
  if ((m = h.match(/^alert=([^&]+)/))) showAlert(decodeURIComponent(m[1]));
  else if ((m = h.match(/^incident=([^&]+)/))) showIncident(decodeURIComponent(m[1]));
  else if ((m = h.match(/^series=([^/]+)\/([^@&]+)(?:@([^&]+))?/))) {
    const [host, metric, at] = [decodeURIComponent(m[1]), decodeURIComponent(m[2]), m[3] ? decodeURIComponent(m[3]) : null];
    quiet(selectHost(host, metric, at).then(() => $("series-panel").scrollIntoView({ block: "start" })));
  }
}

// --- incidents -----------------------------------------------------------------------------------
async function loadIncidents() {
  const incs = await api("/incidents?limit=20");
  $("incidents").replaceChildren(...(incs.length ? incs.map((i) => el("li", { dataset: { incidentId: i.incident_id },
    onclick: () => go(`incident=${encodeURIComponent(i.incident_id)}`) },
    el("span", { class: `sev-${i.severity}` }, i.severity), " ", el("b", {}, i.host), ` · ${i.state} · `,
    `${i.alert_count} alert${i.alert_count > 1 ? "s" : ""} since ${fmtTime(i.started_at)} · root: `,
    el("b", {}, i.root.metric), i.series.length > 1 ? ` → ${i.series.slice(1).join(", ")}` : ""))
    : [el("li", { class: "muted" }, "no incidents in the last 24 h")]));
}

// --- lifecycle -----------------------------------------------------------------------------------
// Everything of the current key goes: its streams, timers, requests in flight and every view.
function stop() {
  state.gen += 1;
  state.ctl.abort();
  state.ctl = new AbortController();
  for (const s of [state.alerts, state.scores]) if (s) s.close();
  state.alerts = state.scores = null;
  clearInterval(state.refresh);
  clearTimeout(state.soon); clearTimeout(state.redraw);
  state.refresh = state.soon = state.redraw = null;
  if (state.chart) state.chart.destroy();
  state.chart = state.chartData = null;
  state.host = state.series = state.at = null;
  state.alertsById.clear();
  for (const id of ["hosts", "series-list", "chart", "chart-alerts", "feed", "incidents", "silences", "channels", "detail"]) $(id).replaceChildren();
  $("series-title").textContent = "pick a host";
  $("chart-note").textContent = "";
  delete $("chart").dataset.series;
  $("detail-title").textContent = "Detail";
  delete $("detail-panel").dataset.view;
  $("detail-panel").hidden = true;
  $("channel-secret").hidden = true; $("channel-secret").textContent = "";
  $("model").textContent = "model: …"; $("model").title = "";
  $("tenant").textContent = "";
  $("main").hidden = true;
  $("live").textContent = "live: off"; $("live").className = "pill off";
  // an address names a view of this key's tenant (#alert=…): it does not carry over
  if (/^#(alert|incident|series)=/.test(location.hash)) history.replaceState(null, "", location.pathname + location.search);
}

// The views are filled while hidden and shown once the key was accepted.
async function start() {
  const gen = state.gen;
  showError("");
  try {
    await Promise.all([loadHosts(), loadAlerts(), loadIncidents(), loadModel(), loadSilences(), loadChannels()]);
  } catch (e) { fail("loading the dashboard", e); return; }
  if (gen !== state.gen) return;
  $("tenant").textContent = `key ${state.key.split("_")[1] || ""}`;
  $("main").hidden = false;
  if (state.chart) state.chart.setSize(chartSize());
  watchAlerts();
  route();  // the address of a link (a notification's #alert=…)
  state.refresh = setInterval(() => { quiet(loadHosts()); quiet(loadIncidents()); quiet(loadSilences()); }, 15000);
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
  window.addEventListener("hashchange", route);
  new ResizeObserver(() => { if (state.chart) state.chart.setSize(chartSize()); }).observe($("chart"));
  $("logout").addEventListener("click", () => { localStorage.removeItem("eventops.key"); state.key = null; stop(); showError("No API key: enter one above."); });
  if (state.key) start(); else showError("No API key: enter one above (`eventops keys create --tenant T`).");
}

document.addEventListener("DOMContentLoaded", init);
