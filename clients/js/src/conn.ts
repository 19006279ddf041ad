/**
 * The connection: one per client, or one per browser when tabs share it
 * (then only the leader tab has one). It owns the transport, reconnects,
 * liveness and the token, and keeps the set of channels it subscribes for
 * its tabs, each with the connection's position on it. After a reconnect
 * every channel is subscribed again from that position; a tab behind it
 * resyncs through `want` (see `cursor.ts`).
 */
import { backoff } from './backoff.js';
import { closeAction } from './close.js';
import { idOf, parseId, type Pos } from './cursor.js';
import { refreshDelay, tokenExpiry } from './token.js';
import { openSse, openWs, type Link } from './transport.js';
import type { ClientError, Options, State, StateDetail } from './index.js';

/** A tab's request for a channel: `l` resume from this id, else `r` rewind. */
export interface Want {
  w: string;
  i: string;
  l?: string | undefined;
  r?: number | undefined;
}

/** Where the connection's frames and states go. */
export interface Out {
  frame(f: any): void;
  state(s: State, d?: StateDetail): void;
  error(e: ClientError): void;
}

/** WebSocket attempts that never open before `auto` tries SSE. */
export const WS_FAILURES_BEFORE_SSE = 3;

interface Channel {
  /** Tabs that want it. */
  t: Set<string>;
  /** Position of the connection on it. */
  p: Pos | undefined;
  /** Rewind for its first subscription, while it has no position. */
  r: number | undefined;
}

const STATUS_ENDS_SUBSCRIPTION = ['forbidden', 'bad_channel', 'too_many_subscriptions'];

export class Conn {
  state: State = 'connecting';
  private ch = new Map<string, Channel>();
  private link: Link | undefined;
  private up = false;
  /** Failed attempts since the last frame: drives the back-off. */
  private n = 0;
  /** WebSocket attempts in a row that never opened. */
  private fails = 0;
  private sse: boolean;
  private token: string | undefined;
  /** A token sent in `refresh`, not yet confirmed. */
  private pending: string | undefined;
  private noRefresh = false;
  private timers: ReturnType<typeof setTimeout>[] = [];
  private retry: ReturnType<typeof setTimeout> | undefined;
  private last = 0;
  private restart: ReturnType<typeof setTimeout> | undefined;
  /** A channel was wanted while the stream was opening without it. */
  private stale = false;
  private onOnline = () => this.online();
  private onOffline = () => this.up && this.drop(1006, 'offline');

  constructor(
    private url: string,
    private o: Options,
    private out: Out,
  ) {
    this.token = o.token;
    this.sse = o.transport == 'sse';
    globalThis.addEventListener?.('online', this.onOnline);
    globalThis.addEventListener?.('offline', this.onOffline);
    this.connect();
  }

  /**
   * A tab wants a channel. Each want is sent to the server, also for a
   * channel already subscribed: its `subscribed` answer gives a tab that
   * joins a flowing channel its position, and a `last_id` older than the
   * connection's replays what that tab has not seen (the others drop it).
   */
  want(m: Want): void {
    let c = this.ch.get(m.w);
    const fresh = !c;
    if (!c) this.ch.set(m.w, (c = { t: new Set(), p: parseId(m.l), r: m.r }));
    c.t.add(m.i);
    this.sub(m.w, c, m.l, m.r, fresh);
  }

  unwant(m: { u: string; i: string }): void {
    const c = this.ch.get(m.u);
    if (c?.t.delete(m.i) && !c.t.size) {
      this.ch.delete(m.u);
      this.sse ? this.reopen() : this.link?.send({ type: 'unsubscribe', channel: m.u });
    }
  }

  close(): void {
    this.stop();
    this.link?.close();
    this.set('closed');
    globalThis.removeEventListener?.('online', this.onOnline);
    globalThis.removeEventListener?.('offline', this.onOffline);
  }

  private sub(channel: string, c: Channel, l?: string, r?: number, fresh?: boolean): void {
    if (!this.up) {
      // A stream already asked for lacks this channel: reopen once it opens.
      if (this.sse && this.link) this.stale = true;
      return;
    }
    if (!this.sse) {
      this.link!.send({ type: 'subscribe', channel, last_id: l, rewind: l ? undefined : r });
      return;
    }
    // A stream cannot subscribe: reopen it, from the position asked for.
    const q = parseId(l);
    if (q) c.p = q;
    else if (r) c.r = r;
    if (fresh || q || r) this.reopen();
  }

  /** Reopen the SSE stream soon, once for a burst of changes. */
  private reopen(): void {
    clearTimeout(this.restart);
    this.restart = setTimeout(() => this.up && this.drop(1000, 'channels changed', 0), 0);
  }

  private set(s: State, d?: StateDetail): void {
    // `reconnecting` is reported at each attempt, with its close code and delay.
    if (this.state != 'closed' && (this.state != s || s == 'reconnecting')) {
      this.state = s;
      this.out.state(s, d);
    }
  }

  private stop(): void {
    this.timers.forEach(clearTimeout);
    this.timers = [];
    clearTimeout(this.retry);
    clearTimeout(this.restart);
    this.up = false;
  }

  private async connect(): Promise<void> {
    this.retry = undefined;
    const { getToken } = this.o;
    const exp = tokenExpiry(this.token);
    if (getToken && (!this.token || (exp && exp * 1000 <= Date.now()))) {
      try {
        this.token = await getToken();
      } catch (e) {
        return this.closed(4010, `getToken failed: ${e}`);
      }
    }
    if (this.state == 'closed') return;
    const sse = this.sse;
    const h = {
      open: () => this.opened(),
      frame: (f: any) => this.frame(f),
      alive: () => (this.last = Date.now()),
      close: (code: number, reason: string) => {
        this.link = undefined;
        this.closed(code, reason);
      },
    };
    if (!sse) {
      this.link = openWs(this.url, this.token, h);
      return;
    }
    const channels = [...this.ch.keys()];
    this.stale = false;
    const ids: Record<string, string> = {};
    let rewind = 0;
    this.ch.forEach((c, k) => (c.p ? (ids[k] = idOf(c.p)) : (rewind = Math.max(rewind, c.r || 0))));
    this.link = openSse(this.url, this.token, { channels, ids, rewind }, h);
  }

  private opened(): void {
    const sse = this.sse;
    this.up = true;
    if (!sse) this.fails = 0;
    this.last = Date.now();
    this.set('open');
    if (!sse) this.ch.forEach((c, k) => this.sub(k, c, c.p && idOf(c.p), c.r));
    else if (this.stale) this.reopen();
    // Liveness: a WebSocket answers each `ping` with a frame, a stream sends
    // a comment every 15 s; a whole period without a byte means the link is dead.
    const every = sse ? Math.max(this.o.pingInterval || 0, 20_000) : this.o.pingInterval || 20_000;
    let tick = Date.now();
    const t = setInterval(() => {
      if (this.last < tick) return this.drop(1006, 'no answer to ping');
      tick = Date.now();
      this.link?.send({ type: 'ping' });
    }, every);
    this.timers.push(t);
    this.scheduleRefresh();
  }

  /** Before the token expires: refresh it over the socket, or reconnect with a new one. */
  private scheduleRefresh(): void {
    const exp = tokenExpiry(this.token);
    const { getToken } = this.o;
    if (!exp || !getToken) return;
    this.timers.push(
      setTimeout(async () => {
        const link = this.link;
        let t: string;
        try {
          t = await getToken();
        } catch {
          return; // the server closes with 4010 at expiry; getToken is tried again then
        }
        if (link != this.link || !this.up) return;
        if (this.sse || this.noRefresh || !link!.send({ type: 'refresh', token: t })) {
          this.token = t;
          this.drop(1000, 'token refresh', 0);
        } else this.pending = t;
      }, Math.min(refreshDelay(exp), 2 ** 31 - 1)),
    );
  }

  private frame(f: any): void {
    const type = f?.type;
    if (type == 'pong') return;
    this.n = 0;
    if (type == 'refreshed') {
      this.token = this.pending;
      this.pending = undefined;
      return this.scheduleRefresh();
    }
    const c = this.ch.get(f.channel);
    if (type == 'error' && !c) {
      if (this.pending) {
        // This server cannot refresh: reconnect with the new token instead.
        this.noRefresh = true;
        this.token = this.pending;
        this.pending = undefined;
        return this.drop(1000, 'token refresh', 0);
      }
      return this.out.error({ code: f.code, message: f.message });
    }
    if (!c) return; // a channel nobody here subscribed (e.g. a server default)
    const q = type == 'notification' ? { e: f.epoch, o: f.offset } : type == 'subscribed' && parseId(f.position);
    if (q && (!c.p || c.p.e != q.e || q.o > c.p.o)) c.p = q;
    if (type == 'error') {
      if (STATUS_ENDS_SUBSCRIPTION.includes(f.code)) this.ch.delete(f.channel);
      if (f.code == 'unavailable') this.timers.push(setTimeout(() => this.sub(f.channel, c, c.p && idOf(c.p), c.r), backoff(3)));
    }
    this.out.frame(f);
  }

  /** End the current link ourselves and handle it like a close with `code`. */
  private drop(code: number, reason: string, delay?: number): void {
    this.link?.close();
    this.link = undefined;
    this.closed(code, reason, delay);
  }

  private closed(code: number, reason: string, delay?: number): void {
    const wasUp = this.up;
    this.stop();
    if (this.state == 'closed') return;
    // `auto`: a stream that never opened goes back to WebSocket; WebSocket
    // attempts that never open (offline ones aside) go to SSE.
    if ((this.o.transport || 'auto') == 'auto' && !wasUp && globalThis.navigator?.onLine !== false) {
      if (this.sse) this.sse = false;
      else if (++this.fails >= WS_FAILURES_BEFORE_SSE) {
        this.sse = true;
        this.fails = 0;
      }
    }
    const action = closeAction(code);
    if (action == 'token') {
      this.token = undefined;
      if (!this.o.getToken) return this.fail(code, reason);
    }
    if (action == 'stop') return this.fail(code, reason);
    if (delay == undefined) delay = action == 'now' ? 0 : backoff(this.n++);
    this.set('reconnecting', { code, reason, delay });
    this.retry = setTimeout(() => this.connect(), delay);
  }

  private fail(code: number, reason: string): void {
    this.out.error({ code, message: reason });
    this.close();
  }

  private online(): void {
    if (this.retry) {
      clearTimeout(this.retry);
      this.connect();
    }
  }
}
