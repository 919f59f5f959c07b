// @ts-self-types="/static/geodrop-client.d.ts"
/**
 * geodrop-client: the reference client of a geodrop service, as one dependency-free ES module.
 *
 * It computes the player's cell from GET /v1/grid and polls GET /v1/cells/{cell} with If-None-Match (a 304 keeps
 * the last answer), waits what the service says (next_poll_ms, X-Next-Poll-Ms), obeys Retry-After and backs off
 * with jitter on 503, 429 and a dropped network, and recovers by itself. It claims with POST /v1/claims, one claim
 * at a time, a random claim id each, retried with the same id until the service settles it; it stops claiming at
 * the player's event-wide limit and before a staggered task opens for the player. README: "The reference client".
 */

export const VERSION = "1.0.0";

const FNV_OFFSET = 2166136261;
const FNV_PRIME = 16777619;
const EARTH_RADIUS_M = 6371008.8; // the service's sphere (geo_service/snapshot/grid.py)
const MAX_ABS_LAT = 85; // the served band
// 64 characters the service takes in a claim id (A-Z a-z 0-9 _ . : -): a random byte's low 6 bits pick one evenly.
const CLAIM_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";
const CLAIM_ID_LENGTH = 22; // 132 random bits
const DEFAULT_POLL_MS = 5000;
const NEARBY_MOVE_M = 25; // without a square grid: how far a player moves before the next poll comes early
const CLOCK_SKEW_MIN_MS = 2000; // a Date header has whole seconds: a smaller difference is its rounding, not a clock

/** Return the cell id of a position from GET /v1/grid's answer: a number (square grid), or null on an H3 grid. */
export function cellOf(lat, lng, grid) {
  if (!(Math.abs(lat) <= MAX_ABS_LAT && Math.abs(lng) <= 180)) {
    throw new RangeError(`position (${lat}, ${lng}) is outside the served band (|lat| <= ${MAX_ABS_LAT})`);
  }
  if (grid.kind !== "square") return null;
  // IEEE double division and truncation of non-negative numbers: the service's arithmetic, bit for bit.
  const row = Math.min(Math.trunc((lat + 90) / grid.row_height_deg), grid.n_rows - 1);
  const band = Math.trunc(row / grid.band_rows);
  const k = row - band * grid.band_rows;
  const n = grid.band_cols[band];
  return (band * grid.max_cols + (Math.trunc((lng + 180) / 360 * n) % n)) * grid.band_rows + k;
}

/** Return a square cell's bounds, [[south, west], [north, east]] in degrees (for drawing it). */
export function cellBounds(cell, grid) {
  const rest = Math.trunc(cell / grid.band_rows);
  const k = cell - rest * grid.band_rows;
  const band = Math.trunc(rest / grid.max_cols);
  const col = rest - band * grid.max_cols;
  const south = (band * grid.band_rows + k) * grid.row_height_deg - 90;
  const n = grid.band_cols[band];
  return [[south, col / n * 360 - 180], [Math.min(south + grid.row_height_deg, 90), (col + 1) / n * 360 - 180]];
}

/** Return FNV-1a (32 bits, unsigned) of a string's UTF-8 bytes. */
export function fnv1a32(text) {
  let hash = FNV_OFFSET;
  for (const byte of new TextEncoder().encode(text)) hash = Math.imul(hash ^ byte, FNV_PRIME) >>> 0;
  return hash;
}

/** Return the player's group of a staggered task: FNV-1a 32 of the player id, mod groups. */
export function groupOf(playerId, groups) {
  return fnv1a32(playerId) % groups;
}

/** Return when a task opens for a player (ms since the epoch), or null when the task carries no stagger. */
export function openingOf(task, playerId) {
  const s = task && task.stagger;
  if (!s || !(Number.isInteger(s.groups) && s.groups >= 1) || !(s.step_s >= 0)) return null;
  const start = Date.parse(s.starts_at);
  return Number.isFinite(start) ? start + groupOf(playerId, s.groups) * s.step_s * 1000 : null;
}

/** Return the great-circle distance in metres (haversine on the service's sphere). */
export function distanceM(lat0, lng0, lat1, lng1) {
  const rad = Math.PI / 180;
  const a = Math.sin((lat1 - lat0) * rad / 2) ** 2
    + Math.cos(lat0 * rad) * Math.cos(lat1 * rad) * Math.sin((lng1 - lng0) * rad / 2) ** 2;
  return 2 * EARTH_RADIUS_M * Math.asin(Math.sqrt(Math.min(a, 1)));
}

/** Return a fresh random claim id (crypto.getRandomValues; characters the service accepts). */
export function newClaimId() {
  const bytes = crypto.getRandomValues(new Uint8Array(CLAIM_ID_LENGTH));
  return Array.from(bytes, (b) => CLAIM_ID_CHARS[b & 63]).join("");
}

/**
 * Return the player id a token names, or null: a geodrop token's ("<base64url of v1:<user_id>:<expires>>.<MAC>"),
 * a JWT's `sub` (a service reading another claim says so in /v1/me, whose user_id the client then takes).
 */
export function playerOfToken(token) {
  const decode = (part) => new TextDecoder().decode(
    Uint8Array.from(atob(part.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0)));
  try {
    const parts = token.split(".");
    if (parts.length === 3) return String(JSON.parse(decode(parts[1])).sub || "") || null;
    const [version, user] = decode(parts[0]).split(":");
    return version === "v1" && user ? user : null;
  } catch {
    return null;
  }
}

/** An error answer of the service: its one shape, {"error": {status, code, message, ...}}. */
export class ApiError extends Error {
  constructor(status, error) {
    super((error && error.message) || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = (error && error.code) || "http_error";
    this.error = error || null;
  }
}

function retryAfterMs(response) {
  const value = response.headers.get("Retry-After");
  if (!value) return 0;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - Date.now()) : 0;
}

async function errorOf(response) {
  try {
    return (await response.json()).error || null;
  } catch {
    return null;
  }
}

const retryable = (status) => status === 429 || status >= 500;

export class GeodropClient extends EventTarget {
  #fetch; #random; #token; #running = false; #stop = null; #sleepers = new Set(); #unlisten = null;
  #etag = null; #gridLoading = null; #gridAskedAt = null; #lastPollAt = -Infinity;
  #polledAt = null; #failures = 0; #claiming = null; #opens = new Map(); #capped = new Set(); #skewMs = 0;

  /**
   * @param {object} options base (the service's URL; "" is this page's origin), token (a player token: claims
   *   and /v1/me), player (the id sent in X-Geodrop-Player; read from the token when not given), fetch, random,
   *   backoff {firstMs, maxMs}, timeoutMs (one request's limit), minPollMs (the least time between two polls).
   */
  constructor(options = {}) {
    super();
    this.base = (options.base || "").replace(/\/$/, "");
    this.#token = options.token || null;
    this.player = options.player || (this.#token ? playerOfToken(this.#token) : null);
    this.#fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.#random = options.random || Math.random;
    this.backoff = { firstMs: 500, maxMs: 30000, ...options.backoff };
    this.timeoutMs = options.timeoutMs || 15000;
    this.minPollMs = options.minPollMs ?? 1000;
    this.position = null; // {lat, lng}
    this.grid = null; // GET /v1/grid's answer
    this.answer = null; // the last answer of /v1/cells (or /v1/nearby)
    this.me = null; // GET /v1/me's answer
    this.winsLeft = null; // wins the event still allows this player (null: no limit known)
    this.limitReached = false;
    this.online = true;
    this.polls = { sent: 0, ok: 0, notModified: 0, failed: 0 };
  }

  /** Start polling (and read /v1/me, the grid): idempotent. */
  start() {
    if (this.#running) return;
    this.#running = true;
    this.#stop = new AbortController();
    const onOnline = () => this.#wakeUp("online");
    globalThis.addEventListener?.("online", onOnline);
    this.#unlisten = () => globalThis.removeEventListener?.("online", onOnline);
    this.#run(this.#stop.signal).catch((error) => {
      if (!this.#stop.signal.aborted) this.#emit("error", { error });
    });
  }

  /** Stop polling and any claim being retried (its promise resolves with outcome "unsettled"). */
  stop() {
    if (!this.#running) return;
    this.#running = false;
    this.#unlisten();
    this.#stop.abort();
  }

  /**
   * Tell the client where the player is. A move into another cell polls at once (at most every minPollMs);
   * without a square grid, a move of more than NEARBY_MOVE_M from where the last poll asked does.
   */
  setPosition(lat, lng) {
    if (!Number.isFinite(lat) || !Number.isFinite(lng)) throw new RangeError("lat and lng must be numbers");
    this.position = { lat, lng };
    this.#emit("position", { lat, lng });
    const at = this.#polledAt;
    const cell = this.#cell(this.position);
    const moved = !at || (cell !== null ? cell !== at.cell : distanceM(lat, lng, at.lat, at.lng) > NEARBY_MOVE_M);
    if (moved) this.#wakeUp("move");
  }

  /** When a task opens for this player (ms since the epoch), or null if it is open as the answer shows it. */
  opensAt(taskId) {
    if (this.#opens.has(taskId)) return this.#opens.get(taskId);
    const task = this.answer && this.answer.tasks.find((t) => t.task_id === taskId);
    return task && this.player ? openingOf(task, this.player) : null;
  }

  /** Whether a task is open for this player now (by the service's clock, as far as the client knows it). */
  isOpen(taskId) {
    const at = this.opensAt(taskId);
    return at === null || at <= this.now();
  }

  /** The time now by the service's clock: the local clock, corrected when the Date headers show it is off. */
  now() {
    return Date.now() + this.#skewMs;
  }

  /** Metres from the player to a POI ({lat, lng}), or Infinity without a position. */
  distanceTo(poi) {
    return this.position ? distanceM(this.position.lat, this.position.lng, poi.lat, poi.lng) : Infinity;
  }

  /** Why the player cannot catch this POI ({task_id, lat, lng}) now, or "": claim()'s refusals, or too_far. */
  whyNot(poi) {
    const radius = this.me ? this.me.catch_radius_m : 50;
    return this.#refusal(poi) || (this.distanceTo(poi) <= radius ? "" : "too_far");
  }

  #refusal(poi) {
    if (!this.#token) return "no_token";
    if (this.limitReached) return "limit";
    if (this.#claiming) return "busy";
    if (!this.position) return "no_position";
    if (this.#capped.has(poi.task_id)) return "task_cap";
    return this.isOpen(poi.task_id) ? "" : "not_open";
  }

  /**
   * Claim the envelope at a POI ({poi_id, task_id}) from the player's position. Resolves with the service's
   * settled answer ({claim_id, outcome, ...}); with {claim_id, outcome: "rejected", status, error} on a 4xx; with
   * {claim_id: null, outcome: "not_sent", reason} when the client refuses without asking (limit, busy, no_token,
   * no_position, not_open, task_cap); with {claim_id, outcome: "unsettled"} when stop() ends its retries.
   */
  async claim(poi) {
    const reason = this.#refusal(poi);
    if (reason) {
      const refused = { claim_id: null, outcome: "not_sent", reason, task_id: poi.task_id, poi_id: poi.poi_id };
      if (reason === "not_open") refused.opens_at = new Date(this.opensAt(poi.task_id)).toISOString();
      this.#emit("outcome", refused);
      return refused;
    }
    const claimId = newClaimId();
    const body = JSON.stringify({ claim_id: claimId, task_id: poi.task_id, poi_id: poi.poi_id,
                                  lat: this.position.lat, lng: this.position.lng });
    this.#claiming = claimId;
    let result;
    try {
      result = await this.#settle(claimId, poi, body);
    } finally {
      this.#claiming = null;
    }
    this.#learn(result, poi);
    this.#emit("outcome", result);
    return result;
  }

  /** The player's won prizes with their delivery state (GET /v1/me/prizes); throws ApiError. */
  async prizes() {
    const response = await this.#request("/v1/me/prizes", { headers: this.#playerHeaders() });
    if (!response.ok) throw new ApiError(response.status, await errorOf(response));
    return (await response.json()).prizes;
  }

  /** Ask for a prize again (POST /v1/me/prizes/{claim_id}/deliver); throws ApiError (429: not so soon). */
  async deliverAgain(claimId) {
    const path = `/v1/me/prizes/${encodeURIComponent(claimId)}/deliver`;
    const response = await this.#request(path, { method: "POST", headers: this.#playerHeaders() });
    if (!response.ok) throw new ApiError(response.status, await errorOf(response));
    return response.json();
  }

  // --- polling -------------------------------------------------------------------------------------------------

  async #run(signal) {
    if (this.#token) this.#loadMe(signal);
    this.#loadGrid(signal);
    while (!signal.aborted) {
      if (!this.position) {
        await this.#sleep(Infinity, ["move"], signal);
        continue;
      }
      const since = performance.now() - this.#lastPollAt;
      if (since < this.minPollMs) await this.#sleep(this.minPollMs - since, [], signal);
      if (signal.aborted) return;
      let wait;
      try {
        wait = await this.#poll(signal);
      } catch (error) { // a body cut short, say: as a dropped network
        if (signal.aborted) return;
        this.#setOnline(false, error);
        wait = this.#pollBackOff({ what: "poll", reason: "network" }, 0, ["online"]);
      }
      await this.#sleep(wait.ms, wait.wakeOn, signal);
    }
  }

  async #poll(signal) {
    const { lat, lng } = this.position;
    const cell = this.#cell(this.position);
    // Without a square grid (not loaded yet, or H3, whose ids JavaScript numbers cannot hold) ask by position.
    // A cell names the grid it was computed on: an edge cache keys on it, and the service refuses another grid's (409).
    const path = cell === null ? `/v1/nearby?lat=${lat.toFixed(6)}&lng=${lng.toFixed(6)}`
      : `/v1/cells/${cell}${this.grid && this.grid.key ? `?grid=${encodeURIComponent(this.grid.key)}` : ""}`;
    // An ETag names the window and what it shows, so the last answer's tag is right to send after a move too:
    // another window's answer cannot match it.
    const headers = this.#etag ? { "If-None-Match": this.#etag } : {};
    this.#lastPollAt = performance.now();
    this.#polledAt = { lat, lng, cell };
    this.polls.sent += 1;
    let response;
    try {
      response = await this.#request(path, { headers }, signal);
    } catch (error) {
      if (signal.aborted) return { ms: 0, wakeOn: [] };
      this.polls.failed += 1;
      this.#setOnline(false, error);
      return this.#pollBackOff({ what: "poll", path, reason: "network" }, 0, ["online"]);
    }
    this.#setOnline(true);
    const nextMs = Number(response.headers.get("X-Next-Poll-Ms"));
    if (response.status === 304) {
      this.polls.notModified += 1;
      this.#failures = 0;
      this.#emit("poll", { path, status: 304, answer: this.answer });
      return { ms: this.#nextPoll(nextMs), wakeOn: ["move"] };
    }
    if (response.ok) return this.#took(path, await response.json(), response.headers.get("ETag"), nextMs, signal);
    this.polls.failed += 1;
    const error = await errorOf(response);
    this.#emit("poll", { path, status: response.status, error });
    if ((response.status === 404 || response.status === 409) && cell !== null) {
      this.grid = null; // a cell of a grid the service no longer has: a new snapshot changed the grid
      this.#loadGrid(signal);
    }
    if (!retryable(response.status) && response.status !== 409) {  // a grid that moved on is no error: it is reloaded
      this.#emit("error", { error: new ApiError(response.status, error), path });
    }
    return this.#pollBackOff({ what: "poll", path, status: response.status, error }, retryAfterMs(response), []);
  }

  #took(path, answer, etag, nextMs, signal) {
    this.polls.ok += 1;
    this.#failures = 0;
    this.#etag = etag;
    this.answer = answer;
    if (this.grid && this.grid.seq !== answer.seq && this.#gridAskedAt !== answer.seq) {
      this.#gridAskedAt = answer.seq; // once a seq: the grid is asked again (with its ETag) when a snapshot moves
      this.#loadGrid(signal);
    }
    this.#emit("poll", { path, status: 200, answer });
    this.#emit("answer", { answer });
    return { ms: this.#nextPoll(Number.isFinite(nextMs) && nextMs > 0 ? nextMs : answer.next_poll_ms), wakeOn: ["move"] };
  }

  #nextPoll(ms) {
    return Number.isFinite(ms) && ms > 0 ? Math.min(ms, 600000) : DEFAULT_POLL_MS;
  }

  #cell(position) {
    if (!position || !this.grid) return null;
    try {
      return cellOf(position.lat, position.lng, this.grid);
    } catch {
      return null;
    }
  }

  async #loadGrid(signal) {
    if (this.#gridLoading) return this.#gridLoading;
    this.#gridLoading = (async () => {
      for (let attempt = 0; !signal.aborted; attempt++) {
        let response, grid;
        try {
          // Through the browser's cache, revalidated every time: a reload or a seq that moved without changing
          // the grid costs a 304, not the ~65 KB of a 100 m grid's column counts.
          response = await this.#request("/v1/grid", { cache: "no-cache" }, signal);
          if (response.ok) grid = await response.json();
        } catch {
          await this.#sleep(this.#delay(attempt, 0), ["online"], signal);
          continue;
        }
        if (grid) {
          this.grid = grid;
          this.#emit("grid", { grid });
          return;
        }
        await this.#sleep(this.#delay(attempt, retryAfterMs(response)), [], signal);
      }
    })().finally(() => { this.#gridLoading = null; });
    return this.#gridLoading;
  }

  async #loadMe(signal) {
    for (let attempt = 0; !signal.aborted; attempt++) {
      let response, me;
      try {
        response = await this.#request("/v1/me", { headers: this.#playerHeaders() }, signal);
        if (response.ok) me = await response.json();
      } catch {
        await this.#sleep(this.#delay(attempt, 0), ["online"], signal);
        continue;
      }
      if (me) {
        this.me = me;
        this.player = me.user_id;
        this.#emit("player", { me: this.me });
        if (this.me.player_win_cap !== null && this.me.player_win_cap !== undefined) await this.#countWins();
        return;
      }
      if (!retryable(response.status)) {
        this.#emit("error", { error: new ApiError(response.status, await errorOf(response)), path: "/v1/me" });
        return;
      }
      await this.#sleep(this.#delay(attempt, retryAfterMs(response)), [], signal);
    }
  }

  // Under an event-wide limit, what is left of it: the cap less the player's wins so far (their prizes). Claim
  // answers carry wins_left and correct it; until one does, the client counts its own wins against it.
  async #countWins() {
    try {
      const won = (await this.prizes()).length;
      if (this.winsLeft === null) this.#setWinsLeft(Math.max(0, this.me.player_win_cap - won), "prizes");
    } catch {
      // unknown for now: the first claim's answer tells
    }
  }

  // --- claims --------------------------------------------------------------------------------------------------

  async #settle(claimId, poi, body) {
    const signal = this.#stop ? this.#stop.signal : new AbortController().signal;
    let failures = 0;
    for (let attempt = 0; ; attempt++) {
      if (signal.aborted) return { claim_id: claimId, outcome: "unsettled", task_id: poi.task_id, poi_id: poi.poi_id };
      this.#emit("claim", { claim_id: claimId, task_id: poi.task_id, poi_id: poi.poi_id, attempt });
      let response;
      try {
        response = await this.#request("/v1/claims", {
          method: "POST", body, headers: { ...this.#playerHeaders(), "Content-Type": "application/json" },
        }, signal);
        if (response.status === 200) return await response.json(); // a body cut short: asked again, same id
      } catch (error) {
        if (signal.aborted) continue;
        this.#setOnline(false, error);
        const wait = this.#backOff({ what: "claim", claim_id: claimId, reason: "network" }, 0, failures++);
        await this.#sleep(wait, ["online"], signal);
        continue;
      }
      this.#setOnline(true);
      if (!retryable(response.status)) {
        return { claim_id: claimId, outcome: "rejected", task_id: poi.task_id, poi_id: poi.poi_id,
                 status: response.status, error: await errorOf(response) };
      }
      const error = await errorOf(response);
      const wait = this.#backOff({ what: "claim", claim_id: claimId, status: response.status, error },
                                 retryAfterMs(response), failures++);
      await this.#sleep(wait, [], signal);
    }
  }

  #learn(result, poi) {
    if (Number.isInteger(result.wins_left)) this.#setWinsLeft(result.wins_left, "answer");
    else if (result.outcome === "won" && this.winsLeft !== null) this.#setWinsLeft(Math.max(0, this.winsLeft - 1), "count");
    if (result.outcome === "player_cap_reached") this.#setWinsLeft(0, "answer");
    if (result.outcome === "cap_reached") this.#capped.add(poi.task_id);
    if (result.outcome === "not_yet" && result.opens_at !== undefined) {
      const at = typeof result.opens_at === "number" ? result.opens_at * 1000 : Date.parse(result.opens_at);
      if (Number.isFinite(at)) this.#opens.set(poi.task_id, at);
    }
  }

  #setWinsLeft(left, source) {
    this.winsLeft = left;
    if (left <= 0 && !this.limitReached) {
      this.limitReached = true;
      this.#emit("limit", { wins_left: 0, source });
    }
  }

  // --- requests, waits, back-off --------------------------------------------------------------------------------

  #playerHeaders() {
    const headers = { Authorization: `Bearer ${this.#token}` };
    if (this.player) headers["X-Geodrop-Player"] = this.player;
    return headers;
  }

  async #request(path, init, signal) {
    const limit = AbortSignal.timeout(this.timeoutMs);
    const sentAt = Date.now();
    // no-store: the browser's cache never answers for the service; the client revalidates answers itself.
    const response = await this.#fetch(this.base + path, {
      cache: "no-store", ...init, credentials: "omit",
      signal: signal ? AbortSignal.any([signal, limit]) : limit,
    });
    this.#clock(response.headers.get("Date"), sentAt);
    return response;
  }

  #clock(date, sentAt) {
    const server = Date.parse(date || "");
    if (!Number.isFinite(server)) return;
    const skew = server + 500 - (sentAt + Date.now()) / 2; // the header's whole second, at its middle
    this.#skewMs = Math.abs(skew) >= CLOCK_SKEW_MIN_MS ? Math.round(skew) : 0;
  }

  #setOnline(online, error) {
    if (online === this.online) return;
    this.online = online;
    this.#emit(online ? "online" : "offline", online ? {} : { error });
  }

  // Back-off: the longer of Retry-After (plus up to a fifth more, so a crowd told the same second spreads out)
  // and half to all of min(maxMs, firstMs * 2^n), n the failures in a row.
  #delay(failures, retryMs) {
    const ceiling = Math.min(this.backoff.maxMs, this.backoff.firstMs * 2 ** Math.min(failures, 30));
    const exponential = ceiling / 2 + this.#random() * ceiling / 2;
    return Math.round(Math.max(exponential, retryMs * (1 + 0.2 * this.#random())));
  }

  #backOff(detail, retryMs, failures) {
    const ms = this.#delay(failures, retryMs);
    this.#emit("backoff", { ...detail, delay_ms: ms, retry_after_ms: retryMs, failures: failures + 1 });
    return ms;
  }

  #pollBackOff(detail, retryMs, wakeOn) {
    return { ms: this.#backOff(detail, retryMs, this.#failures++), wakeOn };
  }

  // Wait ms, or until stop(), or until one of the wakeOn reasons ("move", "online") happens.
  #sleep(ms, wakeOn, signal) {
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const sleeper = { wakeOn, done: () => {
        clearTimeout(timer);
        signal.removeEventListener("abort", sleeper.done);
        this.#sleepers.delete(sleeper);
        resolve();
      } };
      const timer = Number.isFinite(ms) ? setTimeout(sleeper.done, ms) : null;
      signal.addEventListener("abort", sleeper.done);
      this.#sleepers.add(sleeper);
    });
  }

  #wakeUp(why) {
    for (const sleeper of [...this.#sleepers]) if (sleeper.wakeOn.includes(why)) sleeper.done();
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
