// The player page: geodrop-client.js drawn on a Leaflet map without tiles (the window's cells are the map).
// Everything the service says is text: it goes into the page through textContent and createElement only.
import { GeodropClient, cellBounds } from "/static/geodrop-client.js";

const L = window.L;
const TOKEN_KEY = "geodrop.token"; // sessionStorage only: gone with the tab, never in a URL
const $ = (id) => document.getElementById(id);
const REFUSALS = {
  limit: "You have reached the event's limit", busy: "Catching…", no_position: "Waiting for your position",
  task_cap: "You have won all this task allows", not_open: "Not open for you yet", no_token: "Enter your token",
};
const OUTCOMES = {
  won: (r) => `You won: ${r.prize_type}!`,
  no_prize_left: () => "Empty: none left here",
  cap_reached: () => "You have won all this task allows",
  too_far: () => "Too far: walk closer",
  task_inactive: () => "This envelope has closed",
  implausible_movement: () => "That was fast: try again in a moment",
  player_cap_reached: () => "You have reached the event's limit",
  not_yet: (r) => `Not open for you yet: opens ${clock(r.opens_at)}`,
  rejected: (r) => (r.error && r.error.message) || `Refused (${r.status})`,
  not_sent: (r) => REFUSALS[r.reason] || r.reason,
  unsettled: () => "Not settled yet: see my prizes",
};

let client = null;
let map, cells, envelopes, me, ring;
let walking = true; // click-to-walk, until the browser's geolocation gives a fix
let target = null; // the POI the catch button would claim

function clock(at) {
  const when = typeof at === "number" ? new Date(at) : new Date(at);
  return Number.isNaN(when.getTime()) ? "later" : when.toLocaleTimeString();
}

function countdown(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
    : `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function say(text, kind = "") {
  const el = $("message");
  el.textContent = text;
  el.className = kind;
}

function setupMap() {
  map = L.map("map", { zoomControl: false, attributionControl: false, zoomSnap: 0.5 }).setView([22.5329, 113.9305], 3);
  cells = L.layerGroup().addTo(map);
  envelopes = L.layerGroup().addTo(map);
  map.on("click", (e) => {
    if (walking && client) client.setPosition(e.latlng.lat, e.latlng.lng);
  });
}

function drawAnswer(answer) {
  cells.clearLayers();
  const grid = client.grid;
  if (grid && grid.kind === "square") {
    for (const cell of answer.cells) {
      const className = cell === answer.center_cell ? "cell center" : "cell";
      L.rectangle(cellBounds(cell, grid), { className, interactive: false }).addTo(cells);
    }
  }
  drawEnvelopes();
}

function drawEnvelopes() {
  envelopes.clearLayers();
  const answer = client && client.answer;
  if (!answer || client.limitReached) return;
  for (const poi of answer.pois) {
    const open = client.isOpen(poi.task_id);
    const inReach = target && target.poi_id === poi.poi_id;
    const className = `envelope${open ? "" : " closed"}${inReach ? " reach" : ""}`;
    const marker = L.circleMarker([poi.lat, poi.lng], { radius: 9, className, bubblingMouseEvents: false });
    marker.on("click", () => {
      const task = answer.tasks.find((t) => t.task_id === poi.task_id);
      say(`${task ? task.name : `task ${poi.task_id}`}: ${Math.round(client.distanceTo(poi))} m away`);
    });
    marker.addTo(envelopes);
  }
}

function drawMe() {
  const { lat, lng } = client.position;
  const radius = client.me ? client.me.catch_radius_m : 50;
  if (!me) {
    ring = L.circle([lat, lng], { radius, className: "reach-ring", interactive: false }).addTo(map);
    me = L.circleMarker([lat, lng], { radius: 8, className: "me", interactive: false }).addTo(map);
    map.setView([lat, lng], 17);
  } else {
    me.setLatLng([lat, lng]);
    ring.setLatLng([lat, lng]).setRadius(radius);
    if (!map.getBounds().pad(-0.2).contains([lat, lng])) map.panTo([lat, lng]);
  }
}

// The nearest envelope the player could catch now, else the nearest one at all (to say how far, or when it opens).
function pickTarget() {
  const answer = client.answer;
  if (!answer || !client.position) return null;
  let best = null;
  for (const poi of answer.pois) {
    const why = client.whyNot(poi);
    const rank = [why === "" ? 0 : why === "not_open" && client.distanceTo(poi) <= radiusM() ? 1 : 2,
                  client.distanceTo(poi)];
    if (!best || rank[0] < best.rank[0] || (rank[0] === best.rank[0] && rank[1] < best.rank[1])) best = { poi, why, rank };
  }
  return best;
}

function radiusM() {
  return client.me ? client.me.catch_radius_m : 50;
}

function taskName(taskId) {
  const task = client.answer && client.answer.tasks.find((t) => t.task_id === taskId);
  return task ? task.name : `task ${taskId}`;
}

let openTasks = ""; // which tasks of the answer are open for the player: their envelopes turn red as they open

function updateButton() {
  const button = $("catch");
  const best = client ? pickTarget() : null;
  const before = target;
  const open = client && client.answer ? client.answer.tasks.filter((t) => client.isOpen(t.task_id)).length : 0;
  if (String(open) !== openTasks) {
    openTasks = String(open);
    drawEnvelopes();
  }
  target = best && best.why === "" ? best.poi : null;
  let state, text;
  if (!client || !client.position) [state, text] = ["none", "Waiting for your position"];
  else if (client.limitReached) [state, text] = ["limit", "Event limit reached"];
  else if (!best) [state, text] = ["none", "No envelopes around: keep walking"];
  else if (best.why === "") [state, text] = ["ready", `Catch! ${taskName(best.poi.task_id)}`];
  else if (best.why === "busy") [state, text] = ["busy", "Catching…"];
  else if (best.why === "not_open" && best.rank[0] === 1) {
    [state, text] = ["not_open", `Opens for you in ${countdown(client.opensAt(best.poi.task_id) - client.now())}`];
  } else if (best.why === "too_far" || best.why === "not_open") {
    [state, text] = ["far", `Walk to an envelope: ${Math.round(best.rank[1])} m`];
  } else [state, text] = [best.why, REFUSALS[best.why] || best.why];
  button.dataset.state = state;
  button.textContent = text;
  button.disabled = state !== "ready";
  if ((before && before.poi_id) !== (target && target.poi_id)) drawEnvelopes();
}

function showWins() {
  const wins = $("wins");
  wins.hidden = client.winsLeft === null;
  wins.textContent = client.winsLeft === 1 ? "1 win left" : `${client.winsLeft} wins left`;
}

function setNet(text, bad) {
  const net = $("net");
  net.textContent = text;
  net.classList.toggle("bad", bad);
}

async function catchTarget() {
  if (!target) return;
  const poi = target;
  say("Catching…");
  const pending = client.claim(poi);
  updateButton();
  const result = await pending;
  const describe = OUTCOMES[result.outcome] || ((r) => `Outcome: ${r.outcome}`);
  const last = client.limitReached && result.outcome === "won" ? " That was your last: the event's limit is reached." : "";
  say(describe(result) + last, result.outcome === "won" ? "won" : "");
  showWins();
  updateButton();
  if (result.outcome === "won" && !$("prizes").hidden) loadPrizes();
}

function prizeItem(prize) {
  const li = document.createElement("li");
  li.dataset.claimId = prize.claim_id;
  const type = document.createElement("span");
  type.className = "type";
  type.textContent = prize.prize_type;
  const state = document.createElement("span");
  state.className = `state ${prize.state}`;
  state.textContent = prize.state;
  const detail = document.createElement("span");
  detail.className = "detail";
  const parts = [`won ${clock(prize.won_at)}`, taskName(prize.task_id)];
  if (prize.reference) parts.push(`ref ${prize.reference}`);
  else if (prize.eta) parts.push(prize.eta);
  detail.textContent = parts.join(" · ");
  li.append(type, state, detail);
  return li;
}

async function loadPrizes() {
  const list = $("prize-list");
  $("prizes-note").textContent = "Loading…";
  try {
    const prizes = await client.prizes();
    list.replaceChildren(...prizes.map(prizeItem));
    $("prizes-note").textContent = prizes.length ? "" : "None yet: catch an envelope!";
  } catch (error) {
    $("prizes-note").textContent = error.message || String(error);
  }
}

function watchPosition() {
  if (!("geolocation" in navigator)) {
    $("hint").textContent = "Tap the map to walk there";
    return;
  }
  navigator.geolocation.watchPosition((fix) => {
    walking = false;
    $("hint").textContent = "";
    if (client) client.setPosition(fix.coords.latitude, fix.coords.longitude);
  }, () => {
    walking = true;
    $("hint").textContent = "No location from this device: tap the map to walk there";
  }, { enableHighAccuracy: true, maximumAge: 5000, timeout: 30000 });
}

function listen() {
  client.addEventListener("answer", (e) => { drawAnswer(e.detail.answer); updateButton(); });
  client.addEventListener("grid", () => { if (client.answer) drawAnswer(client.answer); });
  client.addEventListener("position", () => { drawMe(); updateButton(); });
  client.addEventListener("player", () => { showWins(); updateButton(); });
  client.addEventListener("limit", () => {
    envelopes.clearLayers();
    say("You have reached the event's limit: thank you for playing!");
    showWins();
    updateButton();
  });
  client.addEventListener("offline", () => setNet("offline: retrying", true));
  client.addEventListener("online", () => setNet("online", false));
  client.addEventListener("poll", (e) => { if (e.detail.status < 400) setNet("online", false); });
  client.addEventListener("backoff", (e) => {
    if (e.detail.reason !== "network") setNet(`busy: retry in ${Math.ceil(e.detail.delay_ms / 1000)} s`, true);
  });
  client.addEventListener("error", (e) => {
    if (e.detail.error && e.detail.error.status === 401) logout("That token was refused: enter another");
  });
}

let watching = false;

function start(token) {
  const position = client && client.position;
  client = new GeodropClient({ token });
  window.geodrop = client; // for the console (and the tests)
  listen();
  client.start();
  if (position) client.setPosition(position.lat, position.lng);
  $("logout").hidden = false;
  $("show-prizes").disabled = false;
  if (!watching) {
    watching = true;
    setInterval(updateButton, 1000); // countdowns to staggered openings
    watchPosition();
  }
  document.body.dataset.ready = "true";
}

function logout(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  if (client) client.stop();
  cells.clearLayers();
  envelopes.clearLayers();
  $("prizes").hidden = true;
  $("logout").hidden = true;
  $("show-prizes").disabled = true;
  $("login-error").textContent = message;
  $("login").hidden = false;
  document.body.dataset.ready = "login";
}

function setupControls() {
  $("catch").addEventListener("click", catchTarget);
  $("show-prizes").addEventListener("click", () => { $("prizes").hidden = false; loadPrizes(); });
  $("close-prizes").addEventListener("click", () => { $("prizes").hidden = true; });
  $("logout").addEventListener("click", () => logout());
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    start(token);
  });
}

setupMap();
setupControls();
const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) start(saved);
else {
  $("login").hidden = false;
  document.body.dataset.ready = "login";
}
