// The operators' dashboard: the districts are the map, coloured by a measure; the stream moves the
// figures live; a click opens a district's tasks (with the kill switch) or probes what a phone gets.
import { el, getJSON } from "/static/dom.js";

const PALETTE = ["#b71c1c", "#e65100", "#f9a825", "#c0ca33", "#7cb342", "#2e7d32", "#1b5e20"];
const NO_TASKS = "#eceff1";  // a district with no task at all: nothing to measure, not "0% left" in red
const CHART_WINDOW_S = 900;  // the collector keeps 15 minutes of ticks
const MEASURES = {
  remaining: { label: "remaining / quota", value: (d) => ratio(d), classes: [0, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95], format: pct },
  active: { label: "active tasks", value: (d) => d.tasks.active, classes: [0, 1, 2, 4, 6, 8, 10], format: String },
  claims: { label: "claims, last minute", value: (d) => d.claims_last_minute, classes: [0, 1, 10, 50, 200, 1000, 5000], format: String },
};
const state = { districts: new Map(), features: new Map(), measure: "remaining", selected: null, probe: false,
  admin: false, pois: null, probeLayer: null };

function ratio(d) {
  const left = Object.values(d.remaining).reduce((a, b) => a + b, 0);
  const quota = Object.values(d.quota).reduce((a, b) => a + b, 0);
  return quota ? left / quota : 0;
}
function pct(x) { return `${Math.round(x * 100)}%`; }
function hasTasks(d) { return Object.values(d.tasks).some((n) => n > 0); }
function colour(d) {
  if (!d) return "#cfd8dc";
  if (!hasTasks(d)) return NO_TASKS;
  const m = MEASURES[state.measure];
  const v = m.value(d);
  let k = 0;
  m.classes.forEach((c, i) => { if (v >= c) k = i; });
  // Fewer envelopes left is worse (red); for the other measures more activity is greener.
  return PALETTE[k];
}
function restyle(code) {
  const layer = state.features.get(code);
  if (layer) layer.setStyle({ fillColor: colour(state.districts.get(code)) });
}
// Every tooltip is a node built from text: Leaflet writes a string tooltip as markup, and what it shows comes from the data.
function tooltip(code) {
  const d = state.districts.get(code);
  if (!d) return el("span", {}, String(code));
  if (!hasTasks(d)) return el("span", {}, el("b", {}, d.name), ` (${code})`, el("br"), "no tasks");
  const left = Object.entries(d.remaining).map(([p, n]) => `${p} ${n.toLocaleString()}`).join(", ") || "nothing";
  return el("span", {}, el("b", {}, d.name), ` (${code})`, el("br"), `left: ${left}`, el("br"),
    `${pct(ratio(d))} of quota · ${d.tasks.active} active tasks`, el("br"), `${d.claims_last_minute} claims in the last minute`);
}

let legend;
function drawLegend(map) {
  if (legend) legend.remove();
  legend = L.control({ position: "bottomleft" });
  legend.onAdd = () => {
    const m = MEASURES[state.measure];
    const box = el("div", { class: "legend" }, el("b", {}, m.label));
    m.classes.forEach((c, i) => box.append(el("br"), el("i", { style: { background: PALETTE[i] } }), `≥ ${m.format(c)}`));
    box.append(el("br"), el("i", { style: { background: NO_TASKS } }), "no tasks");
    return box;
  };
  legend.addTo(map);
}

async function showDistrict(code) {
  state.selected = code;
  const panel = document.getElementById("panel");
  let detail;
  try { detail = await getJSON(`/v1/districts/${code}`); } catch (e) { panel.replaceChildren(el("p", { class: "error" }, e.message)); return; }
  const totals = el("div", { class: "totals", id: "district-totals" });
  for (const [p, n] of Object.entries(detail.remaining)) {
    totals.append(el("span", { class: "remaining", "data-prize": p }, `${p}: ${n.toLocaleString()} / ${(detail.quota[p] || 0).toLocaleString()}`));
  }
  const list = el("div", { id: "tasks" });
  for (const t of detail.task_list) list.append(taskRow(t));
  panel.replaceChildren(el("h2", {}, `${detail.name} · ${code}`), totals, el("div", {}, `${detail.claims_last_minute} claims in the last minute`), list);
}

function taskRow(t) {
  const prizes = t.prizes.map((p) => `${p.prize_type} ${p.remaining}/${p.quota}` +
    (p.rate_per_s === null ? "" : ` at ${p.rate_per_s}/s`) + (p.change ? ` (live change #${p.change.seq})` : "")).join(" · ");
  const row = el("div", { class: "task", "data-task-id": t.task_id, "data-status": t.status },
    el("div", { class: "name" }, `${t.name} `, el("span", { class: `badge ${t.status}` }, t.status)),
    el("div", {}, `#${t.task_id} · ${t.starts_at.slice(0, 16).replace("T", " ")} → ${t.ends_at.slice(0, 16).replace("T", " ")}`),
    el("div", { class: "prizes" }, prizes));
  const pois = el("button", { type: "button", class: "pois" }, "show POIs");
  pois.onclick = () => showPois(t.task_id);
  row.append(pois);
  if (state.admin) {
    const off = t.status === "disabled";
    const kill = el("button", { type: "button", class: "kill", "data-task-id": t.task_id }, off ? "enable" : "disable");
    kill.onclick = () => switchTask(t.task_id, off);
    row.append(kill);
  }
  return row;
}

async function showPois(taskId) {
  const body = await getJSON(`/v1/tasks/${taskId}/pois?limit=2000`);
  if (state.pois) state.pois.remove();
  state.pois = L.layerGroup(body.pois.map(([lng, lat, id]) =>
    L.circleMarker([lat, lng], { radius: 3, color: "#0d47a1", weight: 1, fillOpacity: 0.8, className: "poi" }).bindTooltip(el("span", {}, `POI ${id}`))));
  state.pois.addTo(window.dashboardMap);
  const note = document.getElementById("pois-note") || el("p", { id: "pois-note" });
  note.textContent = `task ${taskId}: showing ${body.pois.length.toLocaleString()} of ${body.total.toLocaleString()} POIs`;
  document.getElementById("panel").append(note);
}

// Admin actions ride on a session cookie the page's script cannot read (HttpOnly). Before one, the page asks whether
// this browser holds a live session; if not, it asks for the token, trades it for a session at /v1/admin/session and
// forgets it. The X-Geodrop-Session header marks the action as the page's own (same origin).
let sessionEnds = null;  // when the session ends (Unix seconds), as the collector last said
async function ensureSession() {
  if (sessionEnds === null) sessionEnds = (await getJSON("/v1/admin/session")).expires_at || 0;
  if (sessionEnds > Date.now() / 1000 + 5) return true;
  const token = window.prompt("Admin token (opens a short session; the page does not keep it)") || "";
  if (!token) return false;
  sessionEnds = (await getJSON("/v1/admin/session", { method: "POST", headers: { Authorization: `Bearer ${token}` } })).expires_at;
  return true;
}
async function adminPost(url, body) {
  if (!await ensureSession()) return null;
  try {
    return await getJSON(url, { method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-Geodrop-Session": "1" } });
  } catch (e) {
    if (e.status === 401) sessionEnds = 0;  // the session ended (or the token changed): ask again next time
    throw e;
  }
}

async function switchTask(taskId, enabled) {
  try {
    if (await adminPost(`/v1/admin/tasks/${taskId}`, { enabled }) === null) return;
  } catch (e) {
    document.getElementById("panel").append(el("p", { class: "error" }, `kill switch: ${e.message}`));
    return;
  }
  // The task changes status within a tick: look again until it has.
  for (let i = 0; i < 40; i++) {
    await new Promise((r) => setTimeout(r, 500));
    if (state.selected !== null) await showDistrict(state.selected);
    const row = document.querySelector(`.task[data-task-id="${taskId}"]`);
    if (row && (row.dataset.status === "disabled") === !enabled) break;
  }
}

async function probe(latlng) {
  const map = window.dashboardMap;
  let body;
  try { body = await getJSON(`/v1/probe?lat=${latlng.lat.toFixed(6)}&lng=${latlng.lng.toFixed(6)}`); } catch (e) {
    document.getElementById("panel").replaceChildren(el("p", { class: "error" }, `probe: ${e.message}`)); return;
  }
  if (state.probeLayer) state.probeLayer.remove();
  const cells = L.geoJSON(body.cells, { style: (f) => ({ className: "probe-cell", color: f.properties.center ? "#d50000" : "#263238",
    weight: f.properties.center ? 2 : 1, fillOpacity: 0.05 }) });
  const pois = body.nearby.pois.map((p) => L.circleMarker([p.lat, p.lng], { radius: 4, color: "#6a1b9a", className: "probe-poi" })
    .bindTooltip(el("span", {}, `POI ${p.poi_id} · task ${p.task_id}`)));
  state.probeLayer = L.layerGroup([cells, ...pois]).addTo(map);
  const tasks = body.nearby.tasks.map((t) => el("li", {}, `${t.name} (#${t.task_id})`));
  document.getElementById("panel").replaceChildren(el("h2", {}, "A phone here gets"),
    el("p", { id: "probe-summary" }, `${body.cells.features.length} cells, ${body.nearby.pois.length} POIs, ` +
      `${body.nearby.tasks.length} tasks from snapshot ${body.nearby.seq}; next poll in ${body.nearby.next_poll_ms} ms`),
    el("ul", {}, ...tasks));
}

function follow() {
  const stream = new EventSource("/v1/stream");
  const flag = document.getElementById("h-stream");
  stream.onopen = () => { flag.textContent = "stream on"; flag.className = ""; };
  stream.onerror = () => {
    flag.textContent = "stream reconnecting"; flag.className = "bad";
    // EventSource retries a dropped stream by itself, but gives up on an error answer (a 503 at the stream cap).
    if (stream.readyState === EventSource.CLOSED) setTimeout(follow, 30_000);
  };
  stream.addEventListener("district", (event) => {
    const d = JSON.parse(event.data);
    state.districts.set(d.code, d);
    restyle(d.code);
    const layer = state.features.get(d.code);
    if (layer) layer.setTooltipContent(tooltip(d.code));
    if (state.selected === d.code) showDistrict(d.code);
  });
}

async function refreshHealth() {
  try {
    const o = await getJSON("/v1/dashboard");
    document.getElementById("h-seq").textContent = o.snapshot.seq;
    document.getElementById("h-age").textContent = `(${Math.round(o.snapshot.age_s / 60)} min old)`;
    document.getElementById("h-tick").textContent = `${Math.round(o.tick.last_tick_s * 1000)} ms`;
    document.getElementById("h-interval").textContent = `${o.tick.interval_s} s`;
    document.getElementById("h-read").textContent = `${Math.round(o.tick.last_read_s * 1000)} ms`;
    const status = document.getElementById("h-status");
    const age = o.service && o.service.status ? o.service.status.age_s : null;
    status.textContent = o.service === null ? "n/a" : o.service.error ? "unreachable" : age === null ? "none yet" : `${age} s old`;
    status.className = o.service && (o.service.error || age > 10) ? "bad" : "";
    return o;
  } catch (e) { document.getElementById("h-seq").textContent = "collector unreachable"; return null; }
}

function clockTime(s) { return new Date(s * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false }); }
let chart;
async function refreshChart() {
  let s;
  try { s = await getJSON("/v1/series"); } catch (e) { return; }
  const prizes = Object.keys(s).filter((k) => k !== "t");
  const data = [s.t, ...prizes.map((p) => s[p])];
  const box = document.getElementById("chart");
  if (!chart || chart.series.length !== prizes.length + 1) {
    if (chart) chart.destroy();
    const colours = ["#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#c62828"];
    // The whole window, ending now, on clock time: a few seconds of data would otherwise fill the axis in milliseconds.
    chart = new uPlot({ width: box.clientWidth - 10, height: 170, title: "issues per second by prize type (15 min)",
      series: [{}, ...prizes.map((p, i) => ({ label: p, stroke: colours[i % colours.length], width: 1.5 }))],
      scales: { x: { time: true, range: () => { const now = Date.now() / 1000; return [now - CHART_WINDOW_S, now]; } } },
      axes: [{ values: (u, splits) => splits.map(clockTime) }, { label: "/s" }] }, data, box);
    box.uplot = chart;  // a module's names are its own: tooling (and the browser test) reads the chart off its element
  } else {
    chart.setData(data);
  }
}

// Deliveries by channel; what a partner said (a dead letter's error) is shown as text, like every name here.
function secondsText(s) { return s === null ? "–" : s < 120 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`; }
function channelRow(c) {
  const rate = c.rate_now_per_s === null ? "–" : c.rate_now_per_s.toLocaleString();
  const states = ["sending", "parked", "failed"].map((k) => `${k} ${(c.states[k] || 0).toLocaleString()}`).join(" · ");
  const row = el("tr", { "data-channel": c.name, class: c.paused ? "paused" : "" },
    el("td", {}, el("b", {}, c.name), ` (${c.class})`), el("td", { class: "backlog" }, c.backlog.toLocaleString()),
    el("td", {}, secondsText(c.oldest_pending_s)), el("td", { class: "rate" }, `${rate} / ${c.pace_per_s} / ${c.rate_per_s}`),
    el("td", {}, states), el("td", {}, c.paused ? "paused" : c.held_s > 0 ? `held ${c.held_s} s` : "sending"));
  if (state.admin) {
    const pause = el("button", { type: "button", class: "pause" }, c.paused ? "resume" : "pause");
    pause.onclick = () => admin(`/v1/admin/channels/${encodeURIComponent(c.name)}`, { paused: !c.paused });
    row.append(el("td", {}, pause));
  }
  return row;
}
function deadLetter(d) {
  const item = el("li", { class: "dead-letter", "data-claim-id": d.claim_id },
    `${d.claim_id} · ${d.prize_type} · ${d.attempts} attempts: `, el("span", { class: "error-text" }, d.last_error || ""));
  if (state.admin) {
    const retry = el("button", { type: "button", class: "retry" }, "retry");
    retry.onclick = () => admin(`/v1/admin/deliveries/${encodeURIComponent(d.claim_id)}/retry`, {});
    item.append(" ", retry);
  }
  return item;
}
async function admin(url, body) {
  try { await adminPost(url, body); } catch (e) {
    document.getElementById("deliveries").append(el("p", { class: "error" }, e.message));
  }
  refreshDeliveries();
}
async function refreshDeliveries() {
  const box = document.getElementById("deliveries");
  let body;
  try { body = await getJSON("/v1/deliveries"); } catch (e) { box.replaceChildren(el("p", { class: "error" }, `deliveries: ${e.message}`)); return; }
  const head = el("tr", {}, ...["channel", "backlog", "oldest pending", "rate now / pace / rate per s", "in flight, parked, failed", ""]
    .map((h) => el("th", {}, h)));
  const dead = body.channels.flatMap((c) => c.dead_letters);
  box.replaceChildren(el("h2", {}, "deliveries"), el("table", {}, head, ...body.channels.map(channelRow)),
    el("h3", {}, `dead letters (${dead.length})`), el("ul", { id: "dead-letters" }, ...dead.map(deadLetter)));
}

async function boot() {
  const overview = await refreshHealth();
  state.admin = Boolean(overview && overview.admin);
  const probeButton = document.getElementById("probe-toggle");
  probeButton.hidden = !(overview && overview.probe);
  probeButton.onclick = () => { state.probe = !state.probe; probeButton.classList.toggle("on", state.probe); };
  const [outlines, list] = await Promise.all([getJSON("/v1/districts.geojson"), getJSON("/v1/districts")]);
  for (const d of list.districts) state.districts.set(d.code, d);
  const map = L.map("map", { zoomSnap: 0.25, attributionControl: false });
  window.dashboardMap = map;
  const layer = L.geoJSON(outlines, {
    style: (f) => ({ className: "district", color: "#37474f", weight: 1, fillOpacity: 0.75,
      fillColor: colour(state.districts.get(f.properties.code)) }),
    onEachFeature: (f, l) => {
      state.features.set(f.properties.code, l);
      l.bindTooltip(tooltip(f.properties.code), { sticky: true });
      l.on("click", (e) => (state.probe ? probe(e.latlng) : showDistrict(f.properties.code)));
    },
  }).addTo(map);
  map.fitBounds(layer.getBounds());
  for (const [code, l] of state.features) l.getElement().dataset.code = code;
  map.on("click", (e) => { if (state.probe) probe(e.latlng); });
  drawLegend(map);
  document.getElementById("measure").onchange = (e) => {
    state.measure = e.target.value;
    for (const code of state.features.keys()) restyle(code);
    drawLegend(map);
  };
  follow();
  refreshChart();
  if (overview && overview.deliveries) {
    document.getElementById("deliveries").hidden = false;
    await refreshDeliveries();
    setInterval(refreshDeliveries, 2000);
  }
  setInterval(refreshHealth, 5000);
  setInterval(refreshChart, 5000);
  document.body.dataset.ready = "true";
}

boot();
