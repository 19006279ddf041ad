// src/backoff.ts
var BACKOFF_MIN = 500;
var BACKOFF_MAX = 2e4;
var backoff = (attempt, random = Math.random) => random() * Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt);

// src/close.ts
var STOP = [1008, 1009, 4e3, 4001, 4003];
var closeAction = (code) => code == 4008 ? "now" : code == 4010 ? "token" : STOP.includes(code) ? "stop" : "retry";

// src/cursor.ts
function parseId(id) {
  const m = /^([A-Za-z0-9]+)-(\d{1,15})$/.exec(id || "");
  return m ? { e: m[1], o: +m[2] } : void 0;
}
var idOf = (p) => `${p.e}-${p.o}`;
var Cursor = class {
  constructor(id) {
    /** A resync is under way: later holes need no second one. */
    this.a = false;
    this.p = parseId(id);
  }
  get id() {
    return this.p && idOf(this.p);
  }
  /** A notification. */
  note(n) {
    const p = this.p;
    if (!p || p.e == n.epoch && n.offset == p.o + 1) {
      this.p = { e: n.epoch, o: n.offset };
      return 1 /* Deliver */;
    }
    return p.e == n.epoch && n.offset <= p.o ? 0 /* Drop */ : this.ask();
  }
  /**
   * A `subscribed` frame, answering this cursor's subscription or another
   * one on the same connection. `recovered: false` is a gap only for a
   * cursor that has not seen everything up to `position`; a position ahead
   * of this cursor with `recovered: true` answers someone else, and this
   * cursor resyncs.
   */
  sub(f) {
    const q = parseId(f.position);
    const p = this.p;
    if (!q) return 0 /* Drop */;
    if (p && p.e == q.e && q.o <= p.o) {
      this.a = false;
      return 0 /* Drop */;
    }
    if (p && f.recovered !== false) return this.ask();
    this.p = q;
    this.a = false;
    return f.recovered === false ? 3 /* Gap */ : 0 /* Drop */;
  }
  ask() {
    if (this.a) return 0 /* Drop */;
    this.a = true;
    return 2 /* Ask */;
  }
};

// src/token.ts
var REFRESH_LEAD_MAX = 6e4;
function tokenExpiry(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part)).exp;
    return typeof exp == "number" ? exp : void 0;
  } catch {
    return void 0;
  }
}
function refreshDelay(exp, now = Date.now()) {
  const left = exp * 1e3 - now;
  return Math.max(0, left - Math.min(REFRESH_LEAD_MAX, left / 4));
}

// src/transport.ts
var url = (base, scheme, params) => {
  const u = new URL(base, globalThis.location?.href);
  u.protocol = u.protocol.replace(/^(ws|http)/, scheme);
  for (const [k, v] of params) u.searchParams.append(k, v);
  return u;
};
function parse(text) {
  try {
    const f = JSON.parse(text);
    return f && typeof f == "object" ? f : void 0;
  } catch {
    return void 0;
  }
}
function openWs(base, token, h) {
  const s = new WebSocket(url(base, "ws", token ? [["defaults", "false"], ["token", token]] : [["defaults", "false"]]));
  s.onopen = h.open;
  s.onmessage = (e) => {
    h.alive();
    const f = parse(e.data);
    if (f) h.frame(f);
  };
  s.onclose = (e) => h.close(e.code, e.reason);
  return {
    send: (f) => s.readyState == 1 && (s.send(JSON.stringify(f)), true),
    close() {
      s.onclose = s.onmessage = s.onopen = null;
      s.close();
    }
  };
}
function sseCursor(ids) {
  let bin = "";
  for (const b of new TextEncoder().encode(JSON.stringify(ids))) bin += String.fromCharCode(b);
  return "c1." + btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}
var statusCode = (status) => ({ 400: 4e3, 401: 4001, 403: 4003, 503: 1013 })[status] || 1011;
function sseParser(event) {
  let buf = "";
  let type = "";
  let data = [];
  return (chunk) => {
    const lines = (buf + chunk).split(/\r\n|\r|\n/);
    buf = lines.pop();
    for (const line of lines) {
      if (!line) {
        if (data.length) event(type || "message", data.join("\n"));
        type = "";
        data = [];
        continue;
      }
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(line[i + 1] == " " ? i + 2 : i + 1);
      if (field == "event") type = value;
      else if (field == "data") data.push(value);
    }
  };
}
function openSse(base, token, q, h) {
  const params = [["defaults", "false"], ...q.channels.map((c) => ["channel", c])];
  if (Object.keys(q.ids).length) params.push(["last_id", sseCursor(q.ids)]);
  if (q.rewind) params.push(["rewind", String(q.rewind)]);
  const abort = new AbortController();
  let done = false;
  const end = (code, reason) => {
    if (!done) {
      done = true;
      abort.abort();
      h.close(code, reason);
    }
  };
  const feed = sseParser((type, data) => {
    const f = parse(data);
    if (f) type == "close" ? end(f.code, f.reason) : type == "message" && h.frame(f);
  });
  (async () => {
    const res = await fetch(url(base, "http", params), {
      headers: token ? { accept: "text/event-stream", authorization: "Bearer " + token } : { accept: "text/event-stream" },
      cache: "no-store",
      signal: abort.signal
    });
    if (!res.ok || !res.body) {
      const body = await res.json().catch(() => ({}));
      return end(body.code || statusCode(res.status), body.error || `HTTP ${res.status}`);
    }
    h.open();
    const reader = res.body.getReader();
    const text = new TextDecoder();
    for (let r; !(r = await reader.read()).done && !done; ) {
      h.alive();
      feed(text.decode(r.value, { stream: true }));
    }
    end(1006, "stream ended");
  })().catch((e) => end(1006, String(e)));
  return {
    send: () => false,
    close() {
      done = true;
      abort.abort();
    }
  };
}

// src/conn.ts
var WS_FAILURES_BEFORE_SSE = 3;
var STATUS_ENDS_SUBSCRIPTION = ["forbidden", "bad_channel", "too_many_subscriptions"];
var Conn = class {
  constructor(url2, o, out) {
    this.url = url2;
    this.o = o;
    this.out = out;
    this.state = "connecting";
    this.ch = /* @__PURE__ */ new Map();
    this.up = false;
    /** Failed attempts since the last frame: drives the back-off. */
    this.n = 0;
    /** WebSocket attempts in a row that never opened. */
    this.fails = 0;
    this.noRefresh = false;
    this.timers = [];
    this.last = 0;
    /** A channel was wanted while the stream was opening without it. */
    this.stale = false;
    this.onOnline = () => this.online();
    this.onOffline = () => this.up && this.drop(1006, "offline");
    this.token = o.token;
    this.sse = o.transport == "sse";
    globalThis.addEventListener?.("online", this.onOnline);
    globalThis.addEventListener?.("offline", this.onOffline);
    this.connect();
  }
  /**
   * A tab wants a channel. Each want is sent to the server, also for a
   * channel already subscribed: its `subscribed` answer gives a tab that
   * joins a flowing channel its position, and a `last_id` older than the
   * connection's replays what that tab has not seen (the others drop it).
   */
  want(m) {
    let c = this.ch.get(m.w);
    const fresh = !c;
    if (!c) this.ch.set(m.w, c = { t: /* @__PURE__ */ new Set(), p: parseId(m.l), r: m.r });
    c.t.add(m.i);
    this.sub(m.w, c, m.l, m.r, fresh);
  }
  unwant(m) {
    const c = this.ch.get(m.u);
    if (c?.t.delete(m.i) && !c.t.size) {
      this.ch.delete(m.u);
      this.sse ? this.reopen() : this.link?.send({ type: "unsubscribe", channel: m.u });
    }
  }
  close() {
    this.stop();
    this.link?.close();
    this.set("closed");
    globalThis.removeEventListener?.("online", this.onOnline);
    globalThis.removeEventListener?.("offline", this.onOffline);
  }
  sub(channel, c, l, r, fresh) {
    if (!this.up) {
      if (this.sse && this.link) this.stale = true;
      return;
    }
    if (!this.sse) {
      this.link.send({ type: "subscribe", channel, last_id: l, rewind: l ? void 0 : r });
      return;
    }
    const q = parseId(l);
    if (q) c.p = q;
    else if (r) c.r = r;
    if (fresh || q || r) this.reopen();
  }
  /** Reopen the SSE stream soon, once for a burst of changes. */
  reopen() {
    clearTimeout(this.restart);
    this.restart = setTimeout(() => this.up && this.drop(1e3, "channels changed", 0), 0);
  }
  set(s, d) {
    if (this.state != "closed" && (this.state != s || s == "reconnecting")) {
      this.state = s;
      this.out.state(s, d);
    }
  }
  stop() {
    this.timers.forEach(clearTimeout);
    this.timers = [];
    clearTimeout(this.retry);
    clearTimeout(this.restart);
    this.up = false;
  }
  async connect() {
    this.retry = void 0;
    const { getToken } = this.o;
    const exp = tokenExpiry(this.token);
    if (getToken && (!this.token || exp && exp * 1e3 <= Date.now())) {
      try {
        this.token = await getToken();
      } catch (e) {
        return this.closed(4010, `getToken failed: ${e}`);
      }
    }
    if (this.state == "closed") return;
    const sse = this.sse;
    const h = {
      open: () => this.opened(),
      frame: (f) => this.frame(f),
      alive: () => this.last = Date.now(),
      close: (code, reason) => {
        this.link = void 0;
        this.closed(code, reason);
      }
    };
    if (!sse) {
      this.link = openWs(this.url, this.token, h);
      return;
    }
    const channels = [...this.ch.keys()];
    this.stale = false;
    const ids = {};
    let rewind = 0;
    this.ch.forEach((c, k) => c.p ? ids[k] = idOf(c.p) : rewind = Math.max(rewind, c.r || 0));
    this.link = openSse(this.url, this.token, { channels, ids, rewind }, h);
  }
  opened() {
    const sse = this.sse;
    this.up = true;
    if (!sse) this.fails = 0;
    this.last = Date.now();
    this.set("open");
    if (!sse) this.ch.forEach((c, k) => this.sub(k, c, c.p && idOf(c.p), c.r));
    else if (this.stale) this.reopen();
    const every = sse ? Math.max(this.o.pingInterval || 0, 2e4) : this.o.pingInterval || 2e4;
    let tick = Date.now();
    const t = setInterval(() => {
      if (this.last < tick) return this.drop(1006, "no answer to ping");
      tick = Date.now();
      this.link?.send({ type: "ping" });
    }, every);
    this.timers.push(t);
    this.scheduleRefresh();
  }
  /** Before the token expires: refresh it over the socket, or reconnect with a new one. */
  scheduleRefresh() {
    const exp = tokenExpiry(this.token);
    const { getToken } = this.o;
    if (!exp || !getToken) return;
    this.timers.push(
      setTimeout(async () => {
        const link = this.link;
        let t;
        try {
          t = await getToken();
        } catch {
          return;
        }
        if (link != this.link || !this.up) return;
        if (this.sse || this.noRefresh || !link.send({ type: "refresh", token: t })) {
          this.token = t;
          this.drop(1e3, "token refresh", 0);
        } else this.pending = t;
      }, Math.min(refreshDelay(exp), 2 ** 31 - 1))
    );
  }
  frame(f) {
    const type = f?.type;
    if (type == "pong") return;
    this.n = 0;
    if (type == "refreshed") {
      this.token = this.pending;
      this.pending = void 0;
      return this.scheduleRefresh();
    }
    const c = this.ch.get(f.channel);
    if (type == "error" && !c) {
      if (this.pending) {
        this.noRefresh = true;
        this.token = this.pending;
        this.pending = void 0;
        return this.drop(1e3, "token refresh", 0);
      }
      return this.out.error({ code: f.code, message: f.message });
    }
    if (!c) return;
    const q = type == "notification" ? { e: f.epoch, o: f.offset } : type == "subscribed" && parseId(f.position);
    if (q && (!c.p || c.p.e != q.e || q.o > c.p.o)) c.p = q;
    if (type == "error") {
      if (STATUS_ENDS_SUBSCRIPTION.includes(f.code)) this.ch.delete(f.channel);
      if (f.code == "unavailable") this.timers.push(setTimeout(() => this.sub(f.channel, c, c.p && idOf(c.p), c.r), backoff(3)));
    }
    this.out.frame(f);
  }
  /** End the current link ourselves and handle it like a close with `code`. */
  drop(code, reason, delay) {
    this.link?.close();
    this.link = void 0;
    this.closed(code, reason, delay);
  }
  closed(code, reason, delay) {
    const wasUp = this.up;
    this.stop();
    if (this.state == "closed") return;
    if ((this.o.transport || "auto") == "auto" && !wasUp && globalThis.navigator?.onLine !== false) {
      if (this.sse) this.sse = false;
      else if (++this.fails >= WS_FAILURES_BEFORE_SSE) {
        this.sse = true;
        this.fails = 0;
      }
    }
    const action = closeAction(code);
    if (action == "token") {
      this.token = void 0;
      if (!this.o.getToken) return this.fail(code, reason);
    }
    if (action == "stop") return this.fail(code, reason);
    if (delay == void 0) delay = action == "now" ? 0 : backoff(this.n++);
    this.set("reconnecting", { code, reason, delay });
    this.retry = setTimeout(() => this.connect(), delay);
  }
  fail(code, reason) {
    this.out.error({ code, message: reason });
    this.close();
  }
  online() {
    if (this.retry) {
      clearTimeout(this.retry);
      this.connect();
    }
  }
};

// src/emitter.ts
var Emitter = class {
  constructor() {
    this.l = {};
  }
  on(type, fn) {
    var _a;
    ((_a = this.l)[type] || (_a[type] = /* @__PURE__ */ new Set())).add(fn);
    return () => this.off(type, fn);
  }
  off(type, fn) {
    this.l[type]?.delete(fn);
  }
  /**
   * Call the listeners. One that throws does not stop the others or the
   * client: its error is rethrown on its own, so the console still shows it.
   * @internal
   */
  emit(type, ...args) {
    this.l[type]?.forEach((fn) => {
      try {
        fn(...args);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    });
  }
};

// src/client.ts
var Subscription = class extends Emitter {
  /** @internal */
  constructor(client, channel, lastId, rewind) {
    super();
    this.client = client;
    this.channel = channel;
    this.rewind = rewind;
    this.cur = new Cursor(lastId);
  }
  /** The id of the last notification delivered (or the position confirmed), to resume from. */
  get lastId() {
    return this.cur.id || null;
  }
  unsubscribe() {
    this.client.drop(this);
  }
};
var Client = class extends Emitter {
  /** @internal */
  constructor(url2, o) {
    super();
    this.url = url2;
    this.o = o;
    this.state = "connecting";
    this.subs = /* @__PURE__ */ new Map();
    this.tab = crypto.getRandomValues(new Uint32Array(2)).join(".");
    const name = "herald " + url2;
    const locks = globalThis.navigator?.locks;
    if (o.shareAcrossTabs ?? (!!locks && typeof BroadcastChannel == "function")) {
      this.bc = new BroadcastChannel(name);
      this.bc.onmessage = (e) => this.message(e.data);
      this.lock = new AbortController();
      locks.request(name, { signal: this.lock.signal }, () => new Promise((done) => (this.release = done, this.lead()))).catch(() => {
      });
    } else this.lead();
  }
  /** Subscribe to `channel`; subscribing again to the same channel returns the same subscription. */
  subscribe(channel, options = {}) {
    let s = this.subs.get(channel);
    if (!s) {
      const stored = this.o.storage?.getItem(this.key(channel));
      this.subs.set(channel, s = new Subscription(this, channel, options.lastId || stored, options.rewind));
      this.want(s);
    }
    return s;
  }
  /** Close for good (the next tab takes over a shared connection). */
  close() {
    this.subs.forEach((s) => this.drop(s));
    this.conn?.close();
    this.set("closed");
    this.release?.();
    this.lock?.abort();
    this.bc?.close();
  }
  /** @internal */
  drop(s) {
    if (this.subs.get(s.channel) != s) return;
    this.subs.delete(s.channel);
    this.post({ u: s.channel, i: this.tab });
  }
  key(channel) {
    return `herald ${this.url} ${channel}`;
  }
  /** This tab holds the lock (or shares nothing): open the connection. */
  lead() {
    if (this.state == "closed") return;
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
        this.emit("error", e);
      }
    });
    this.subs.forEach((s) => this.want(s));
    this.bc?.postMessage({ h: 1 });
  }
  want(s) {
    const l = s.cur.id;
    this.post({ w: s.channel, i: this.tab, l, r: l ? void 0 : s.rewind });
  }
  /** To the connection: this tab's own, or the leader's. */
  post(m) {
    if (!this.conn) this.bc?.postMessage(m);
    else if ("w" in m) this.conn.want(m);
    else this.conn.unwant(m);
  }
  message(m) {
    if (m.f) this.frame(m.f);
    else if (m.s) this.set(m.s, m.d);
    else if (m.e) this.emit("error", m.e);
    else if (m.h) this.subs.forEach((s) => this.want(s));
    else if (this.conn && (m.w || m.u)) {
      this.post(m);
      this.bc.postMessage({ s: this.conn.state });
    }
  }
  set(s, d) {
    if (this.state == "closed" || this.state == s && s != "reconnecting") return;
    if (s == "open") this.subs.forEach((sub) => sub.cur.a = false);
    this.state = s;
    this.emit("state", s, d);
  }
  frame(f) {
    const s = this.subs.get(f.channel);
    if (!s) return;
    const before = s.lastId;
    const act = f.type == "notification" ? s.cur.note(f) : f.type == "subscribed" ? s.cur.sub(f) : 0 /* Drop */;
    if (act == 2 /* Ask */) this.want(s);
    if (s.lastId != before) this.o.storage?.setItem(this.key(s.channel), s.lastId);
    if (act == 3 /* Gap */) s.emit("gap", { channel: s.channel, lastId: before, position: f.position });
    if (act == 1 /* Deliver */) s.emit("notification", f);
    if (f.type == "subscribed") s.emit("subscribed", f);
    if (f.type == "error") s.emit("error", f);
  }
};

// src/index.ts
function connect(url2, options = {}) {
  return new Client(url2, options);
}
export {
  connect
};
