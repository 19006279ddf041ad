/**
 * herald's browser client: resumable notifications over WebSocket or
 * Server-Sent Events, with per-channel positions, duplicate dropping,
 * reconnects with back-off, token refresh, and one connection per browser
 * shared by its tabs.
 *
 * ```js
 * import { connect } from '/client.js';
 * const client = connect('ws://host/notifications', { getToken });
 * const sub = client.subscribe('user:42', { rewind: 20 });
 * sub.on('notification', (n) => render(n));
 * sub.on('gap', () => refetch());
 * client.on('state', (s) => show(s));
 * ```
 */
import { Client } from './client.js';

export type { Client, Subscription } from './client.js';

/** `connecting` (first connect), `open`, `reconnecting`, `closed` (by `close()` or a fatal close code). */
export type State = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface Options {
  /** A JWT, sent as the `token` query (WebSocket) or `Authorization: Bearer` (SSE). */
  token?: string;
  /**
   * Returns a fresh token: called when there is none, when the server says
   * it expired (4010), and before the current one expires (its `exp` claim),
   * to refresh it over the socket or, where the server cannot, to reconnect.
   */
  getToken?: () => string | Promise<string>;
  /** `auto` (default): WebSocket, and SSE after WebSocket attempts fail 3 times in a row. */
  transport?: 'auto' | 'websocket' | 'sse';
  /** Where each channel's last id is kept across page loads, e.g. `localStorage`. */
  storage?: { getItem(key: string): string | null; setItem(key: string, value: string): void } | null;
  /**
   * One connection for all the tabs of this origin that connect to the same
   * URL: the tabs elect a leader (`navigator.locks`) that holds it and passes
   * frames to the others (`BroadcastChannel`). Default: true where both exist.
   */
  shareAcrossTabs?: boolean;
  /** Liveness: a `ping` this often (ms, default 20000); a period without an answer reconnects. */
  pingInterval?: number;
}

export interface SubscribeOptions {
  /** Resume after this id (`<epoch>-<offset>`): wins over a stored id and `rewind`. */
  lastId?: string;
  /** Without a position: start with the last N retained notifications (0–1000), then live. */
  rewind?: number;
}

/** A notification frame (see the server's `schemas/server-frame.schema.json`). */
export interface Notification {
  type: 'notification';
  id: string;
  channel: string;
  offset: number;
  epoch: string;
  time?: string;
  event?: string;
  title?: string;
  body?: string;
  data?: Record<string, unknown>;
  priority?: string;
  [field: string]: unknown;
}

/** The server confirmed a subscription; `replayed` notifications came before it. */
export interface Subscribed {
  type: 'subscribed';
  channel: string;
  replayed: number;
  recovered: boolean;
  position: string;
}

/** An `error` frame about one subscription (`forbidden`, `bad_channel`, `unavailable`, …). */
export interface ErrorFrame {
  type: 'error';
  code: string;
  message: string;
  channel?: string;
}

/**
 * Notifications were missed and cannot be replayed (history trimmed, or the
 * server lost it): refetch the state this channel feeds. Delivery goes on
 * from `position`.
 */
export interface Gap {
  channel: string;
  /** The last id seen before the gap (null when none). */
  lastId: string | null;
  position: string;
}

/** With `reconnecting`: why the connection ended and when the next try is (ms). */
export interface StateDetail {
  code: number;
  reason: string;
  delay: number;
}

/** A close code that stops the client (number) or an `error` frame's code (string). */
export interface ClientError {
  code: number | string;
  message: string;
}

export interface ClientEvents {
  state(state: State, detail?: StateDetail): void;
  error(error: ClientError): void;
}

export interface SubscriptionEvents {
  notification(n: Notification): void;
  gap(gap: Gap): void;
  subscribed(f: Subscribed): void;
  error(e: ErrorFrame): void;
}

/** Connect to herald's `/notifications` (`ws://`, `wss://`, `http://`, `https://`, or a path). */
export function connect(url: string, options: Options = {}): Client {
  return new Client(url, options);
}
