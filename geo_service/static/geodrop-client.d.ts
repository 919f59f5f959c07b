// Declarations of geodrop-client.js, the reference client of a geodrop service (README: "The reference client").

export declare const VERSION: string;

/** GET /v1/grid's answer. */
export type Grid =
  | { seq: number; key: string; kind: "square"; cell_m: number; radius: number; band_rows: number; row_height_deg: number;
      n_rows: number; max_cols: number; band_cols: number[] }
  | { seq: number; key: string; kind: "h3"; h3_res: number; radius: number };

export interface Stagger { groups: number; step_s: number; starts_at: string }
export interface Prize { prize_type: string; level: "plenty" | "few" | "last" | "none" | null }
export interface Task {
  task_id: number; name: string; district_code?: number; status: "active"; ends_at?: string; prizes: Prize[];
  stagger?: Stagger;
}
export interface Poi { poi_id: number; task_id: number; lat: number; lng: number }
/** GET /v1/cells/{cell} and GET /v1/nearby's answer. */
export interface Answer {
  answer_version: number; seq: number; center_cell: number; cells: number[]; pois: Poi[]; tasks: Task[];
  truncated: boolean; next_poll_ms: number; status_age_s?: number | null;
}
/** GET /v1/me's answer. */
export interface Me { user_id: string; catch_radius_m: number; win_cap: number; player_win_cap: number | null }
/** The service's one error shape: {"error": {...}}'s inside. */
export interface ErrorBody { status: number; code: string; message: string; field?: string; details?: unknown; [k: string]: unknown }

export type Refusal = "no_token" | "limit" | "busy" | "no_position" | "task_cap" | "not_open";
export type ClaimResult =
  /** Settled by the service (200): won, no_prize_left, cap_reached, too_far, task_inactive, implausible_movement,
   * player_cap_reached, not_yet (with opens_at), and whatever outcome a later service adds. */
  | { claim_id: string; outcome: string; prize_type?: string; reason?: string; wins_left?: number; opens_at?: string }
  /** Refused by the service (a 4xx other than 429): the claim will never settle otherwise. */
  | { claim_id: string; outcome: "rejected"; task_id: number; poi_id: number; status: number; error: ErrorBody | null }
  /** Refused by the client without a request. */
  | { claim_id: null; outcome: "not_sent"; reason: Refusal; task_id: number; poi_id: number; opens_at?: string }
  /** stop() ended its retries: its prize, if it won, shows in prizes(). */
  | { claim_id: string; outcome: "unsettled"; task_id: number; poi_id: number };

/** GET /v1/me/prizes' entries. */
export interface WonPrize {
  claim_id: string; task_id: number; prize_type: string; won_at: string;
  state: "pending" | "sending" | "delivered" | "parked" | "failed"; attempts: number; eta?: string; channel?: string;
  reference?: string; delivered_at?: string;
}

export interface GeodropEvents {
  answer: { answer: Answer };
  poll: { path: string; status: number; answer?: Answer | null; error?: ErrorBody | null };
  grid: { grid: Grid };
  player: { me: Me };
  position: { lat: number; lng: number };
  claim: { claim_id: string; task_id: number; poi_id: number; attempt: number };
  outcome: ClaimResult;
  limit: { wins_left: 0; source: "answer" | "prizes" | "count" };
  backoff: { what: "poll" | "claim"; path?: string; claim_id?: string; status?: number; reason?: "network";
             error?: ErrorBody | null; delay_ms: number; retry_after_ms: number; failures: number };
  offline: { error: unknown };
  online: Record<string, never>;
  error: { error: unknown; path?: string };
}

export interface ClientOptions {
  /** The service's URL ("" or absent: this page's origin). */
  base?: string;
  /** A player token: needed for claims, /v1/me and prizes; polling needs none. */
  token?: string | null;
  /** Sent as X-Geodrop-Player (the load balancer pins a player to a host by it); read from the token if absent. */
  player?: string | null;
  fetch?: typeof fetch;
  /** A source of [0, 1) numbers for the back-off's jitter (Math.random). */
  random?: () => number;
  backoff?: { firstMs?: number; maxMs?: number };
  /** One request's time limit (15 s). */
  timeoutMs?: number;
  /** The least time between two polls, however often the cell changes (1 s). */
  minPollMs?: number;
}

export declare class ApiError extends Error {
  status: number;
  code: string;
  error: ErrorBody | null;
}

export declare class GeodropClient extends EventTarget {
  constructor(options?: ClientOptions);
  readonly base: string;
  player: string | null;
  backoff: { firstMs: number; maxMs: number };
  timeoutMs: number;
  minPollMs: number;
  position: { lat: number; lng: number } | null;
  grid: Grid | null;
  answer: Answer | null;
  me: Me | null;
  winsLeft: number | null;
  limitReached: boolean;
  online: boolean;
  polls: { sent: number; ok: number; notModified: number; failed: number };
  start(): void;
  stop(): void;
  setPosition(lat: number, lng: number): void;
  opensAt(taskId: number): number | null;
  isOpen(taskId: number): boolean;
  now(): number;
  distanceTo(poi: { lat: number; lng: number }): number;
  whyNot(poi: { task_id: number; lat: number; lng: number }): Refusal | "too_far" | "";
  claim(poi: { task_id: number; poi_id: number }): Promise<ClaimResult>;
  prizes(): Promise<WonPrize[]>;
  deliverAgain(claimId: string): Promise<unknown>;
  addEventListener<K extends keyof GeodropEvents>(type: K, listener: (event: CustomEvent<GeodropEvents[K]>) => void,
                                                  options?: boolean | AddEventListenerOptions): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null,
                   options?: boolean | AddEventListenerOptions): void;
}

export declare function cellOf(lat: number, lng: number, grid: Grid): number | null;
export declare function cellBounds(cell: number, grid: Grid & { kind: "square" }): [[number, number], [number, number]];
export declare function fnv1a32(text: string): number;
export declare function groupOf(playerId: string, groups: number): number;
export declare function openingOf(task: Task, playerId: string): number | null;
export declare function distanceM(lat0: number, lng0: number, lat1: number, lng1: number): number;
export declare function newClaimId(): string;
export declare function playerOfToken(token: string): string | null;
