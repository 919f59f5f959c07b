// The placement console: districts and tasks on the map; a task's editor checks as you go with the build's own
// rules (POST /v1/check), places and drags points, uploads CSV or GeoJSON; saves name the version they were based
// on; preview shows what a publish would change; publish and rollback are followed phase by phase.
import { el, getJSON } from "/static/dom.js";

const PHASES = ["export", "tables", "pois", "merge", "poi order", "published", "upload", "waiting for the services", "served"];
const MAX_MARKERS = 2000;  // draggable markers up to this many points; beyond, dots
const state = { me: null, draft: null, map: null, outlines: null, points: null, zones: null, editor: null, preview: null,
  live: null, placing: false };
const $ = (id) => document.getElementById(id);

function api(url, method = "GET", body) {
  const options = { method, headers: { "X-Geodrop-Session": "1" } };
  if (body !== undefined) {
    options.body = typeof body === "string" || body instanceof Blob ? body : JSON.stringify(body);
    if (!(body instanceof Blob)) options.headers["Content-Type"] = "application/json";
  }
  return getJSON(url, options);
}
const fmtTime = (s) => new Date(s * 1000).toLocaleString();
const zoneLabel = () => {
  const minutes = -new Date().getTimezoneOffset();
  const sign = minutes >= 0 ? "+" : "-";
  const hh = String(Math.floor(Math.abs(minutes) / 60)).padStart(2, "0"), mm = String(Math.abs(minutes) % 60).padStart(2, "0");
  return `${Intl.DateTimeFormat().resolvedOptions().timeZone} (UTC${sign}${hh}:${mm})`;
};
function toLocalInput(epoch) {
  const d = new Date(epoch * 1000);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}
const fromLocalInput = (value) => (value ? new Date(value).toISOString() : "");

// -- sign-in ----------------------------------------------------------------------------------------------------
async function signIn(event) {
  event.preventDefault();
  const token = $("token").value;
  $("token").value = "";
  try {
    state.me = await getJSON("/v1/session", { method: "POST", headers: { Authorization: `Bearer ${token}` } });
    await start();
  } catch (e) { $("sign-in-error").textContent = e.message; }
}
async function signOut() {
  await api("/v1/session", "DELETE");
  location.reload();
}

// -- the map and the lists --------------------------------------------------------------------------------------
function setupMap() {
  state.map = L.map("map", { preferCanvas: false });
  state.zones = L.featureGroup().addTo(state.map);
  state.points = L.featureGroup().addTo(state.map);
  state.map.pm.setGlobalOptions({ allowSelfIntersection: false });
  state.map.on("pm:create", (e) => {
    if (e.shape === "Marker") { e.layer.remove(); addPoint(e.layer.getLatLng()); }
    if (e.shape === "Polygon") { const geometry = e.layer.toGeoJSON().geometry; e.layer.remove(); zoneForm(geometry); }
  });
}
async function loadOutlines() {
  const geo = await api("/v1/districts.geojson");
  state.outlines = L.geoJSON(geo, { style: { color: "#607d8b", weight: 1, fillOpacity: 0.05 }, pmIgnore: true,
    onEachFeature: (f, layer) => layer.bindTooltip(el("span", {}, `${f.properties.name} (${f.properties.code})`)) })
    .addTo(state.map);
  if (geo.features.length) state.map.fitBounds(state.outlines.getBounds());
}
async function loadDraft() {
  state.draft = await api("/v1/draft");
  drawZones();
  if (!state.editor) renderTasks();  // an open editor stays; it lists the tasks again when it closes
}
function districtName(code) { return (state.draft.districts.find((d) => d.code === code) || {}).name || "?"; }
function renderTasks() {
  const box = $("tab-tasks");
  const q = $("search").value.trim().toLowerCase();
  const match = (t) => !q || String(t.task_id).includes(q) || t.name.toLowerCase().includes(q) ||
    String(t.district_code).includes(q) || districtName(t.district_code).toLowerCase().includes(q);
  const shown = state.draft.tasks.filter(match);
  const head = el("p", {}, `${shown.length} of ${state.draft.tasks.length} tasks · draft revision ${state.draft.revision} `);
  if (state.me.role === "admin") {
    const add = el("button", { type: "button", id: "new-task" }, "new task");
    add.onclick = () => openEditor(null);
    head.append(add);
  }
  const rows = shown.slice(0, 300).map((t) => {
    const row = el("div", { class: "task-row", "data-task-id": t.task_id },
      el("b", {}, t.name), ` #${t.task_id} · ${districtName(t.district_code)} (${t.district_code}) · ${t.pois} POIs`,
      el("div", { class: "muted" }, t.prizes.map((p) => `${p.prize_type} ${p.quota}`).join(", "), t.enabled ? "" : " · disabled"));
    row.onclick = () => openEditor(t.task_id);
    return row;
  });
  box.replaceChildren(head, ...rows, shown.length > 300 ? el("p", { class: "muted" }, "… refine the search") : "");
}

// -- the task editor ----------------------------------------------------------------------------------------------
function field(label, name, input) {
  return el("label", { class: "field" }, el("span", { class: "name" }, label), input, el("span", { class: "error", "data-field": name }));
}
function input(id, attrs = {}) { return el("input", { id, ...attrs }); }
async function openEditor(taskId) {
  const t = taskId === null ? { task_id: null, version: 0, name: "", district_code: state.draft.districts[0].code,
    starts_at: Math.floor(Date.now() / 1000), ends_at: Math.floor(Date.now() / 1000) + 86400 * 30, enabled: true,
    stagger_s: 0, stagger_groups: 1, prizes: [{ prize_type: "", quota: 0, weight: 1, rate_per_s: null }], points: [] }
    : await api(`/v1/tasks/${taskId}`);
  state.editor = { id: t.task_id, version: t.version, points: t.points.map(([poi_id, lat, lng]) => ({ poi_id, lat, lng })),
    poiSet: null, screening: t.screening || null, dirtyPoints: false, original: t };
  const district = el("select", { id: "f-district" }, ...state.draft.districts.map((d) =>
    el("option", { value: d.code }, `${d.name} (${d.code})`)));
  district.value = String(t.district_code);
  const enabled = input("f-enabled", { type: "checkbox" });
  enabled.checked = t.enabled;
  const form = el("form", { id: "editor" },
    el("h2", {}, t.task_id === null ? "New task" : `Task #${t.task_id} (version ${t.version})`),
    field("name", "name", input("f-name", { value: t.name, maxlength: "200" })),
    field("district", "district_code", district),
    el("p", { class: "muted" }, `times in ${zoneLabel()}`),
    field("starts", "starts_at", input("f-starts", { type: "datetime-local", value: toLocalInput(t.starts_at) })),
    field("ends", "ends_at", input("f-ends", { type: "datetime-local", value: toLocalInput(t.ends_at) })),
    field("enabled", "enabled", enabled),
    t.published ? el("p", { class: "muted", id: "live-note" }, "Published: its prizes' quotas and rates and its kill " +
      "switch are the ledger's; change them in “live” below (no rebuild).") : "",
    field("stagger (s)", "stagger_s", input("f-stagger-s", { type: "number", min: "0", value: t.stagger_s })),
    field("groups", "stagger_groups", input("f-stagger-groups", { type: "number", min: "1", value: t.stagger_groups })),
    el("h3", {}, "prizes"), prizeTable(t.prizes, new Set(t.published || [])),
    el("h3", {}, "points"), pointControls(t),
    el("p", {}, el("button", { type: "submit", id: "save" }, "save"), " ",
      t.task_id === null ? "" : el("button", { type: "button", id: "delete" }, "delete"), " ",
      el("button", { type: "button", id: "close" }, "close")),
    el("div", { id: "save-result" }));
  if (t.task_id !== null && state.live && state.live.live_changes) form.append(liveControls(t));
  form.onsubmit = (e) => { e.preventDefault(); save(); };
  form.oninput = () => scheduleCheck();
  $("tab-tasks").replaceChildren(form);
  $("close").onclick = () => { state.editor = null; state.points.clearLayers(); renderTasks(); };
  if ($("delete")) $("delete").onclick = () => removeTask();
  if (state.me.role !== "admin") form.querySelectorAll("input, select, button[type=submit]").forEach((n) => { n.disabled = true; });
  if (t.published) $("f-enabled").disabled = true;
  if (t.points_total) {  // a set this big is edited by import: the page holds only part of it
    ["f-upload", "place-points"].forEach((id) => { $(id).disabled = true; });
    $("points-summary").textContent = `${t.points_total.toLocaleString()} points; the map shows the first ` +
      `${t.points.length.toLocaleString()}; edit a set this big with geo-snapshot import`;
  }
  drawPoints();
  if (state.editor.points.length) state.map.fitBounds(state.points.getBounds(), { maxZoom: 16 });
  scheduleCheck();
}
function prizeTable(prizes, published) {  // published: the prize types whose quota and rate the ledger holds
  const body = el("tbody", { id: "prize-rows" });
  const addRow = (p, live) => {
    const row = el("tr", { class: "prize" },
      el("td", {}, el("input", { class: "type", value: p.prize_type, placeholder: "type" })),
      el("td", {}, el("input", { class: "quota", type: "number", min: "0", value: p.quota })),
      el("td", {}, el("input", { class: "weight", type: "number", min: "0", step: "any", value: p.weight })),
      el("td", {}, el("input", { class: "rate", type: "number", min: "0", step: "any", value: p.rate_per_s ?? "", placeholder: "no limit" })),
      el("td", {}, el("button", { type: "button", class: "remove-prize" }, "×")),
      el("td", { class: "error prize-error" }));
    row.querySelector(".remove-prize").onclick = () => { row.remove(); scheduleCheck(); };
    if (live) {
      row.querySelectorAll(".type, .quota, .rate").forEach((n) => { n.readOnly = true; });
      row.querySelector(".remove-prize").disabled = true;
    }
    body.append(row);
  };
  prizes.forEach((p) => addRow(p, published.has(p.prize_type)));
  const add = el("button", { type: "button", id: "add-prize" }, "add prize");
  add.onclick = () => { addRow({ prize_type: "", quota: 0, weight: 1, rate_per_s: null }, false); };
  return el("div", {}, el("table", { class: "prizes" },
    el("thead", {}, el("tr", {}, ...["type", "quota", "weight", "rate/s"].map((h) => el("th", {}, h)))), body), add,
    el("span", { class: "error", "data-field": "prizes" }));
}
function pointControls(t) {
  const upload = input("f-upload", { type: "file", accept: ".csv,.geojson,.json" });
  upload.onchange = () => uploadPoints(upload.files[0]);
  const place = el("button", { type: "button", id: "place-points" }, "place points");
  place.onclick = () => {
    state.placing = !state.placing;
    place.classList.toggle("on", state.placing);
    if (state.placing) state.map.pm.enableDraw("Marker", { continueDrawing: true }); else state.map.pm.disableDraw();
    drawPoints();  // while placing, the points let clicks through to the map
  };
  const set = input("f-set", { type: "number", min: "1", placeholder: "POI set id" });
  set.onchange = () => { state.editor.poiSet = set.value ? Number(set.value) : null; scheduleCheck(); };
  return el("div", {},
    el("p", { class: "muted" }, t.set_shared_with && t.set_shared_with.length
      ? `this set is also used by tasks ${t.set_shared_with.join(", ")}: editing its points gives this task its own set` : ""),
    el("p", {}, "upload CSV (lat,lng[,poi_id]) or GeoJSON points: ", upload), el("ul", { id: "upload-problems", class: "problems" }),
    el("p", {}, place, " click the map to add; drag to move; or use an existing set: ", set),
    el("p", { id: "points-summary" }), el("ul", { id: "point-problems", class: "problems" }));
}
function addPoint(latlng) {
  state.editor.points.push({ poi_id: null, lat: +latlng.lat.toFixed(6), lng: +latlng.lng.toFixed(6) });
  state.editor.dirtyPoints = true;
  drawPoints();
  scheduleCheck();
}
function pointClass(i) {
  const s = state.editor.screening;
  if (!s || i >= s.zone.length) return "pt";
  return s.zone[i] ? "pt zone" : s.outside[i] ? "pt outside" : "pt ok";
}
function drawPoints() {
  state.points.clearLayers();
  const ed = state.editor;
  if (!ed) return;
  ed.points.forEach((p, i) => {
    const why = ed.screening && i < ed.screening.zone.length
      ? (ed.screening.zone[i] ? `dropped: inside exclusion zone ${ed.screening.zone[i]}` : ed.screening.outside[i] ? "outside the task's district" : "kept") : "";
    if (ed.points.length > MAX_MARKERS) {
      state.points.addLayer(L.circleMarker([p.lat, p.lng], { radius: 3, className: pointClass(i), pmIgnore: true,
        interactive: false }));
      return;
    }
    const marker = L.marker([p.lat, p.lng], { draggable: state.me.role === "admin" && !state.placing,
      interactive: !state.placing, pmIgnore: true,
      icon: L.divIcon({ className: pointClass(i), iconSize: [10, 10] }) });
    marker.bindTooltip(el("span", {}, `${p.poi_id ? `POI ${p.poi_id}` : "new point"} ${why}`));
    marker.on("dragend", () => { const at = marker.getLatLng(); p.lat = +at.lat.toFixed(6); p.lng = +at.lng.toFixed(6); ed.dirtyPoints = true; scheduleCheck(); });
    state.points.addLayer(marker);
  });
}
async function uploadPoints(file) {
  if (!file) return;
  const format = /\.(geo)?json$/i.test(file.name) ? "geojson" : "csv";
  let answer;
  try { answer = await api(`/v1/uploads/points?format=${format}`, "POST", file); } catch (e) {
    const problems = (e.details && e.details.problems) || [];
    $("upload-problems").replaceChildren(
      el("li", {}, `${file.name}: ${e.details ? `${e.details.count} bad line(s); nothing was added. Fix them and upload the file again.` : e.message}`),
      ...problems.map((p) => el("li", { class: "bad-line" }, `${p.row}: ${p.field}: ${p.reason}`)),
      e.details && e.details.count > problems.length ? el("li", {}, `… ${e.details.count - problems.length} more`) : "");
    return;
  }
  $("upload-problems").replaceChildren();
  state.editor.points.push(...answer.points);
  state.editor.dirtyPoints = true;
  drawPoints();
  if (state.editor.points.length) state.map.fitBounds(state.points.getBounds(), { maxZoom: 16 });
  scheduleCheck();
}
function body() {
  const prizes = [...document.querySelectorAll("#prize-rows tr.prize")].map((row) => ({
    prize_type: row.querySelector(".type").value, quota: row.querySelector(".quota").value,
    weight: row.querySelector(".weight").value, rate_per_s: row.querySelector(".rate").value || null }));
  const ed = state.editor;
  const out = { version: ed.version, prizes, task: { name: $("f-name").value, district_code: $("f-district").value,
    starts_at: fromLocalInput($("f-starts").value), ends_at: fromLocalInput($("f-ends").value), enabled: $("f-enabled").checked,
    stagger_s: $("f-stagger-s").value, stagger_groups: $("f-stagger-groups").value } };
  if (ed.poiSet !== null) out.poi_set_id = ed.poiSet;
  if (ed.poiSet === null && (ed.dirtyPoints || ed.id === null)) out.points = ed.points;
  return out;
}
let checkTimer = null;
function scheduleCheck() { clearTimeout(checkTimer); checkTimer = setTimeout(runCheck, 300); }
async function runCheck() {
  const ed = state.editor;
  if (!ed || !$("editor") || state.me.role !== "admin") return;  // checks are a save's: an admin's
  const b = body();  // points only when they changed (the task's own came screened), or the district did
  if (!b.points && !b.poi_set_id && b.task.district_code !== String(ed.original.district_code)) b.points = ed.points;
  let answer;
  try { answer = await api("/v1/check", "POST", b); } catch (e) {
    if (e.status !== 422) return;
    answer = e.details;  // the problems by row and field, and the screening of the points that parsed
  }
  if (state.editor !== ed || !$("editor")) return;  // the editor closed or moved to another task meanwhile
  showProblems(answer.problems);
  if (b.points) { ed.screening = answer.screening; drawPoints(); }
  if (ed.original.points_total) return;
  const s = ed.screening;
  $("points-summary").textContent = s ? `${state.editor.points.length} points: ${s.zone.filter(Boolean).length} dropped by ` +
    `exclusion zones, ${s.outside_count} outside the district` : `${state.editor.points.length} points`;
}
function showProblems(problems) {
  document.querySelectorAll("#editor .error").forEach((n) => { n.textContent = ""; });
  const pointLines = [];
  for (const p of problems) {
    const prize = /^prizes\[(\d+)\]$/.exec(p.row);
    const target = prize ? document.querySelectorAll("#prize-rows .prize-error")[Number(prize[1])]
      : p.row === "task" || p.row === "prizes" ? document.querySelector(`#editor .error[data-field="${CSS.escape(p.field)}"]`) : null;
    if (target) target.textContent = `${target.textContent} ${p.field}: ${p.reason}`.trim();
    else pointLines.push(el("li", {}, `${p.row}: ${p.field}: ${p.reason}`));
  }
  $("point-problems").replaceChildren(...pointLines);
}
async function save() {
  const ed = state.editor;
  const result = $("save-result");
  try {
    const saved = ed.id === null ? await api("/v1/tasks", "POST", body()) : await api(`/v1/tasks/${ed.id}`, "PUT", body());
    result.replaceChildren(el("p", { class: "ok" }, `saved task #${saved.task_id} as version ${saved.version}`));
    await loadDraft();
    await openEditor(saved.task_id);
    $("save-result").replaceChildren(el("p", { class: "ok" }, `saved task #${saved.task_id} as version ${saved.version}`));
    refreshAudit();
  } catch (e) {
    if (e.status === 409 && e.code === "version_conflict") result.replaceChildren(conflictView(e.details));
    else if (e.status === 422) { showProblems(e.details.problems); result.replaceChildren(el("p", { class: "error" }, e.message)); }
    else result.replaceChildren(el("p", { class: "error" }, e.message));
  }
}
function conflictView(d) {
  const items = d.changes.map((c) => {
    const fields = (c.changed || []).map((f) => el("li", {}, `${f}: ${show(c.before && c.before[f])} → ${show(c.after && c.after[f])}`));
    return el("li", {}, `${c.who} at ${fmtTime(c.at)}: ${c.action} (version ${c.version})`, el("ul", {}, ...fields));
  });
  const reload = el("button", { type: "button", id: "reload-task" }, "load their version (drops your edits)");
  reload.onclick = () => openEditor(state.editor.id);
  return el("div", { class: "conflict" }, el("p", {}, `Not saved: this task is at version ${d.now}; you started from ` +
    `version ${d.based_on}. What changed since:`), el("ul", { class: "changes" }, ...items), reload);
}
function show(v) { return v === undefined || v === null ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v); }
async function removeTask() {
  if (!window.confirm(`Delete task #${state.editor.id}?`)) return;
  try { await api(`/v1/tasks/${state.editor.id}?version=${state.editor.version}`, "DELETE"); } catch (e) {
    $("save-result").replaceChildren(e.code === "version_conflict" ? conflictView(e.details) : el("p", { class: "error" }, e.message));
    return;
  }
  state.editor = null;
  state.points.clearLayers();
  await loadDraft();
  refreshAudit();
}
function liveControls(t) {
  const box = el("div", { id: "live-controls" }, el("h3", {}, "live (no rebuild)"),
    el("p", { class: "muted" }, "Quota, rate and the kill switch change now, through the collector, and the draft follows."));
  const say = el("p", { id: "live-result" });
  for (const p of t.prizes) {
    const quota = el("input", { type: "number", min: "0", value: p.quota, class: "live-quota" });
    const rate = el("input", { type: "number", min: "0", step: "any", value: p.rate_per_s ?? "", placeholder: "no limit", class: "live-rate" });
    const apply = el("button", { type: "button" }, "apply live");
    apply.onclick = () => liveCall(`/v1/live/prizes/${t.task_id}/${encodeURIComponent(p.prize_type)}`,
      { quota: Number(quota.value), rate_per_s: rate.value === "" ? null : Number(rate.value) }, say);
    box.append(el("div", {}, `${p.prize_type}: quota `, quota, " rate/s ", rate, " ", apply));
  }
  const kill = el("button", { type: "button", id: "live-kill" }, t.enabled ? "disable now" : "enable now");
  kill.onclick = () => liveCall(`/v1/live/tasks/${t.task_id}`, { enabled: !t.enabled }, say);
  box.append(kill, say);
  return box;
}
async function liveCall(url, payload, say) {
  try { await api(url, "POST", payload); } catch (e) { say.replaceChildren(el("span", { class: "error" }, e.message)); return; }
  await loadDraft();
  await openEditor(state.editor.id);  // the draft followed the change: its new version is the one to edit from
  $("live-result").replaceChildren(el("span", { class: "ok" }, "applied live, no rebuild"));
  refreshAudit();
}

// -- exclusion zones ----------------------------------------------------------------------------------------------
function drawZones() {
  state.zones.clearLayers();
  for (const z of state.draft.zones.filter((zone) => zone.geometry)) {
    const layer = L.geoJSON(z.geometry, { style: { color: "#c62828", weight: 2, fillOpacity: 0.15 }, pmIgnore: true });
    layer.bindTooltip(el("span", {}, `exclusion zone ${z.id}: ${z.reason}`));
    state.zones.addLayer(layer);
  }
}
async function renderZones() {
  const box = $("tab-zones");
  const drops = await api("/v1/zone-drops");
  const byId = new Map(drops.zones.map((z) => [z.id, z]));
  const draw = el("button", { type: "button", id: "draw-zone" }, "draw a zone");
  draw.onclick = () => state.map.pm.enableDraw("Polygon");
  const upload = el("input", { type: "file", id: "zone-upload", accept: ".geojson,.json" });
  upload.onchange = async () => {
    try { const doc = JSON.parse(await upload.files[0].text()); zoneForm(doc.type === "Feature" ? doc.geometry : doc.features ? doc.features[0].geometry : doc); }
    catch (e) { box.append(el("p", { class: "error" }, `${upload.files[0].name}: ${e.message}`)); }
  };
  const rows = state.draft.zones.map((z) => {
    const d = byId.get(z.id) || { pois: 0, tasks: [] };
    const del = el("button", { type: "button" }, "delete");
    del.onclick = async () => { try { await api(`/v1/zones/${encodeURIComponent(z.id)}?version=${z.version}`, "DELETE"); await loadDraft(); renderZones(); } catch (e) { box.append(el("p", { class: "error" }, e.message)); } };
    return el("div", { class: "task-row" }, el("b", {}, z.id),
      z.problem ? el("span", { class: "error" }, ` cannot be built (${z.problem}): replace or delete it `) : "",
      ` ${z.reason} · drops ${d.pois} POIs of ${d.tasks.length} tasks `,
      state.me.role === "admin" ? del : "", el("div", { class: "muted" }, d.tasks.slice(0, 8).map((t) => `#${t.task_id}: ${t.pois}`).join(", ")));
  });
  box.replaceChildren(state.me.role === "admin" ? el("p", {}, draw, " or upload a GeoJSON polygon: ", upload) : "", el("div", { id: "zone-form" }), ...rows);
}
function zoneForm(geometry) {
  showTab("zones");
  const id = el("input", { id: "z-id", maxlength: "64", placeholder: "zone id" });
  const reason = el("input", { id: "z-reason", maxlength: "200", placeholder: "reason" });
  const result = el("span", { class: "error" });
  const form = el("form", {}, "new zone: ", id, " ", reason, " ", el("button", { type: "submit" }, "save zone"), result);
  form.onsubmit = async (e) => {
    e.preventDefault();
    try { await api(`/v1/zones/${encodeURIComponent(id.value)}`, "PUT", { version: 0, reason: reason.value, geometry }); await loadDraft(); renderZones(); refreshAudit(); }
    catch (err) { result.textContent = ` ${err.message}`; }
  };
  $("zone-form").replaceChildren(form);
}

// -- preview, publish, rollback ------------------------------------------------------------------------------------
async function renderPublish() {
  state.live = await api("/v1/live");
  $("live-seq").textContent = state.live.current ?? "none";
  const box = $("tab-publish");
  const previewButton = el("button", { type: "button", id: "preview" }, "preview the draft");
  previewButton.onclick = runPreview;
  const publish = el("button", { type: "button", id: "publish", disabled: "" }, "publish");
  publish.onclick = runPublish;
  const older = state.live.snapshots.filter((s) => s < (state.live.current ?? 0)).reverse();
  const to = el("select", { id: "rollback-to" }, ...older.map((s) => el("option", { value: s }, `snapshot ${s}`)));
  const rollback = el("button", { type: "button", id: "rollback" }, "roll back");
  rollback.onclick = () => runJob("/v1/rollback", { to: Number(to.value) || null });
  if (!older.length) rollback.disabled = true;
  box.replaceChildren(state.me.role === "admin" ? el("p", {}, previewButton, " ", publish)
    : el("p", { class: "muted" }, "Preview and publish are an admin's."), el("div", { id: "diff" }),
    el("progress", { id: "progress", max: PHASES.length, value: 0 }), el("p", { id: "job-state" }),
    state.me.role === "admin" ? el("p", {}, "roll back to ", to, " ", rollback) : "");
}
async function runPreview() {
  $("diff").replaceChildren(el("p", {}, "building a dry run…"));
  try { state.preview = await api("/v1/preview", "POST", {}); } catch (e) { $("diff").replaceChildren(el("p", { class: "error" }, e.message)); return; }
  const p = state.preview, t = p.totals;
  const list = (items, what) => el("ul", { class: "diff" }, ...items.map((c) => el("li", {}, `#${c.task_id} ${c.name}: ${what(c)}`)));
  $("diff").replaceChildren(
    el("p", { id: "diff-totals" }, `against snapshot ${p.live_seq ?? "none"}: ${t.tasks_added} tasks added, ${t.tasks_removed} removed, ` +
      `${t.tasks_changed} changed; POIs +${t.pois_added} −${t.pois_removed}, ${t.pois_moved} moved`),
    list(p.tasks_added, (c) => `added, ${c.pois} POIs`), list(p.tasks_removed, () => "removed"),
    list(p.tasks_changed, (c) => [...Object.entries(c.fields).map(([f, [a, b]]) => `${f} ${show(a)} → ${show(b)}`),
      ...Object.entries(c.quotas).map(([k, [a, b]]) => `${k} quota ${show(a)} → ${show(b)}`),
      `POIs +${c.pois_added} −${c.pois_removed} moved ${c.pois_moved}`].join("; ")),
    el("p", {}, `screening drops ${p.counts.pois_excluded} POIs in exclusion zones; ` +
      `${Object.keys(p.screening.outside_district).length} tasks have POIs outside their district`));
  if ($("publish")) $("publish").disabled = false;
}
function runPublish() { return runJob("/v1/publish", { revision: state.preview.revision }); }
async function runJob(url, payload) {
  let job;
  try { job = await api(url, "POST", payload); } catch (e) { $("job-state").textContent = e.message; return; }
  if ($("publish")) $("publish").disabled = true;
  for (let i = 0; i < 2400 && job.state === "running"; i++) {  // bounded: 10 minutes of polls
    $("progress").value = PHASES.indexOf(job.phase) + 1;
    $("job-state").textContent = `${job.action}: ${job.phase} (${job.done.toLocaleString()}) · ${job.elapsed_s.toFixed(1)} s`;
    await new Promise((r) => setTimeout(r, 250));
    job = await api(`/v1/jobs/${job.id}`);
  }
  $("progress").value = job.state === "failed" ? 0 : PHASES.length;
  $("job-state").textContent = job.state === "failed" ? `${job.action} failed: ${job.error}`
    : `${job.action}: snapshot ${job.seq} ${job.state} after ${job.elapsed_s.toFixed(1)} s`;
  $("job-state").className = job.state === "failed" ? "error" : "ok";
  await renderPublish();
  $("job-state").textContent = job.state === "failed" ? `${job.action} failed: ${job.error}`
    : `${job.action}: snapshot ${job.seq} ${job.state} after ${job.elapsed_s.toFixed(1)} s`;
  refreshAudit();
}

// -- audit ---------------------------------------------------------------------------------------------------------
async function refreshAudit() {
  const { entries } = await api("/v1/audit?limit=100");
  $("tab-audit").replaceChildren(el("ul", { class: "audit" }, ...entries.map((a) => el("li", { "data-action": a.action },
    `${fmtTime(a.at)} · ${a.who} · ${a.action} ${a.target}` + (a.changed ? ` (${a.changed.join(", ")})` : "") +
    (a.pois_added || a.pois_removed ? ` POIs +${a.pois_added} −${a.pois_removed}` : "")))));
}

function showTab(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("on", b.dataset.tab === name));
  for (const tab of ["tasks", "zones", "publish", "audit"]) $(`tab-${tab}`).hidden = tab !== name;
  if (name === "zones") renderZones();
  if (name === "audit") refreshAudit();
}

async function start() {
  $("sign-in").hidden = true;
  document.querySelector("main").hidden = false;
  $("who").textContent = `${state.me.name} (${state.me.role})`;
  $("sign-out").hidden = false;
  $("search").disabled = false;
  setupMap();
  await Promise.all([loadOutlines(), loadDraft(), renderPublish(), refreshAudit()]);
  document.body.dataset.ready = "true";  // the map and the lists drawn: what the first-load benchmark waits for
}

document.querySelectorAll("nav button").forEach((b) => { b.onclick = () => showTab(b.dataset.tab); });
$("search").oninput = () => { if (!state.editor) renderTasks(); };
$("sign-in").onsubmit = signIn;
$("sign-out").onclick = signOut;
api("/v1/session").then((me) => { if (me.name) { state.me = me; start(); } else $("sign-in").hidden = false; });
