/**
 * The client a page holds: its subscriptions, each with a cursor, fed by a
 * connection of its own or, when tabs share one, by the leader tab's.
 *
 * Sharing: every tab runs the same code. The tab holding the
 * `navigator.locks` lock named after the URL is the leader: it owns the
 * `Conn` and posts every frame on a `BroadcastChannel` of the same name;
 * the others post their channel requests (`want`) to it. Every tab applies
 * the frames to its own cursors, so each drops duplicates and keeps its own
 * position. When the leader's tab closes, the lock passes to a waiting tab,
 * which opens a connection and asks the others to repeat their requests
 * (`{h}`) with their positions: the new connection resumes each channel
 * from there, so there is no gap, and cursors drop what was already seen.
 *
 * Messages on the channel: `{f: frame}`, `{s: state, d: detail}` and
 * `{e: error}` from the leader; `{h: 1}` from a new leader; `{w, i, l, r}`
 * (want) and `{u, i}` (no longer want) from tabs.
 */
import { Conn, type Want } from './conn.js';
import { Act, Cursor } from './cursor.js';
import { Emitter } from './emitter.js';
import type { ClientEvents, Options, State, StateDetail, SubscribeOptions, SubscriptionEvents } from './index.js';

export class Subscription extends Emitter<SubscriptionEvents> {
  /** @internal */
  cur: Cursor;

  /** @internal */
  constructor(
    private client: Client,
    readonly channel: string,
    lastId: string | null | undefined,
    /** @internal */ readonly rewind: number | undefined,
  ) {
    super();
    this.cur = new Cursor(lastId);
  }

  /** The id of the last notification delivered (or the position confirmed), to resume from. */
  get lastId(): string | null {
    return this.cur.id || null;
  }

  unsubscribe(): void {
    this.client.drop(this);
  }
}

export class Client extends Emitter<ClientEvents> {
  state: State = 'connecting';
  private subs = new Map<string, Subscription>();
  private conn: Conn | undefined;
  private bc: BroadcastChannel | undefined;
  private tab = crypto.getRandomValues(new Uint32Array(2)).join('.');
  private lock: AbortController | undefined;
  private release: (() => void) | undefined;

  /** @internal */
  constructor(
    private url: string,
    private o: Options,
  ) {
    super();
    const name = 'herald ' + url;
    const locks = globalThis.navigator?.locks;
    if (o.shareAcrossTabs ?? (!!locks && typeof BroadcastChannel == 'function')) {
      this.bc = new BroadcastChannel(name);
      this.bc.onmessage = (e) => this.message(e.data);
      this.lock = new AbortController();
      locks
        .request(name, { signal: this.lock.signal }, () => new Promise<void>((done) => ((this.release = done), this.lead())))
        .catch(() => {});
    } else this.lead();
  }

  /** Subscribe to `channel`; subscribing again to the same channel returns the same subscription. */
  subscribe(channel: string, options: SubscribeOptions = {}): Subscription {
    let s = this.subs.get(channel);
    if (!s) {
      const stored = this.o.storage?.getItem(this.key(channel));
      this.subs.set(channel, (s = new Subscription(this, channel, options.lastId || stored, options.rewind)));
      this.want(s);
    }
    return s;
  }

  /** Close for good (the next tab takes over a shared connection). */
  close(): void {
    this.subs.forEach((s) => this.drop(s));
    this.conn?.close();
    this.set('closed');
    this.release?.();
    this.lock?.abort();
    this.bc?.close();
  }

  /** @internal */
  drop(s: Subscription): void {
    if (this.subs.get(s.channel) != s) return;
    this.subs.delete(s.channel);
    this.post({ u: s.channel, i: this.tab });
  }

  private key(channel: string): string {
    return `herald ${this.url} ${channel}`;
  }

  /** This tab holds the lock (or shares nothing): open the connection. */
  private lead(): void {
    if (this.state == 'closed') return;
    this.conn = new Conn(this.url, this.o, {
      frame: (f) => {
        this.bc?.postMessage({ f });
        this.frame(f);
      },
      state: (s, d) => {
        this.bc?.postMessage({ s, d });
        this.set(s, d);
      },
      error: (e) => {
        this.bc?.postMessage({ e });
        this.emit('error', e);
      },
    });
    this.subs.forEach((s) => this.want(s));
    this.bc?.postMessage({ h: 1 });
  }

  private want(s: Subscription): void {
    const l = s.cur.id;
    this.post({ w: s.channel, i: this.tab, l, r: l ? undefined : s.rewind });
  }

  /** To the connection: this tab's own, or the leader's. */
  private post(m: Want | { u: string; i: string }): void {
    if (!this.conn) this.bc?.postMessage(m);
    else if ('w' in m) this.conn.want(m);
    else this.conn.unwant(m);
  }

  private message(m: any): void {
    if (m.f) this.frame(m.f);
    else if (m.s) this.set(m.s, m.d);
    else if (m.e) this.emit('error', m.e);
    else if (m.h) this.subs.forEach((s) => this.want(s));
    else if (this.conn && (m.w || m.u)) {
      this.post(m);
      this.bc!.postMessage({ s: this.conn.state });
    }
  }

  private set(s: State, d?: StateDetail): void {
    if (this.state == 'closed' || (this.state == s && s != 'reconnecting')) return;
    // A new connection answers afresh: resyncs asked for on the old one are void.
    if (s == 'open') this.subs.forEach((sub) => (sub.cur.a = false));
    this.state = s;
    this.emit('state', s, d);
  }

  private frame(f: any): void {
    const s = this.subs.get(f.channel);
    if (!s) return;
    const before = s.lastId;
    const act = f.type == 'notification' ? s.cur.note(f) : f.type == 'subscribed' ? s.cur.sub(f) : Act.Drop;
    if (act == Act.Ask) this.want(s);
    if (s.lastId != before) this.o.storage?.setItem(this.key(s.channel), s.lastId!);
    if (act == Act.Gap) s.emit('gap', { channel: s.channel, lastId: before, position: f.position });
    if (act == Act.Deliver) s.emit('notification', f);
    if (f.type == 'subscribed') s.emit('subscribed', f);
    if (f.type == 'error') s.emit('error', f);
  }
}
