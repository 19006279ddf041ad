// Stand-ins for the browser APIs the client uses, driven by the tests as a
// server would be: WebSocket, fetch (an SSE stream), navigator.locks and the
// online/offline events. BroadcastChannel is node's own.

/** A WebSocket whose server side the test plays. */
export class FakeWebSocket {
  static all = [];
  constructor(url) {
    this.url = new URL(url);
    this.sent = [];
    this.readyState = 0;
    this.closedByClient = false;
    FakeWebSocket.all.push(this);
  }
  send(text) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
    this.closedByClient = true;
  }
  // --- the server's side
  accept() {
    this.readyState = 1;
    this.onopen?.({});
  }
  push(frame) {
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
  }
  end(code, reason = '') {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  frames(type) {
    return this.sent.filter((f) => f.type === type);
  }
  get live() {
    return this.readyState === 1 && !this.closedByClient;
  }
}

/** navigator.locks: one holder per name, the others wait in order. */
export class FakeLocks {
  queues = new Map();
  request(name, options, callback) {
    return new Promise((resolve, reject) => {
      const q = this.queues.get(name) || this.queues.set(name, []).get(name);
      const entry = { callback, resolve, reject };
      options.signal?.addEventListener('abort', () => {
        const i = q.indexOf(entry);
        if (i > 0) {
          q.splice(i, 1);
          reject(new DOMException('aborted', 'AbortError'));
        }
      });
      q.push(entry);
      if (q.length === 1) this.grant(name);
    });
  }
  grant(name) {
    const q = this.queues.get(name);
    const entry = q[0];
    if (!entry) return;
    Promise.resolve(entry.callback({ name })).then(entry.resolve, entry.reject).finally(() => {
      q.shift();
      this.grant(name);
    });
  }
}

export const events = new EventTarget();

/** Install the fakes on globalThis; Math.random is fixed so back-off delays are 0. */
export function install({ random = 0 } = {}) {
  FakeWebSocket.all = [];
  globalThis.WebSocket = FakeWebSocket;
  globalThis.addEventListener = events.addEventListener.bind(events);
  globalThis.removeEventListener = events.removeEventListener.bind(events);
  Object.defineProperty(globalThis, 'navigator', { value: { onLine: true }, configurable: true, writable: true });
  Math.random = () => random;
}

/** Poll `predicate` until truthy (every 2 ms, up to 2 s). */
export async function until(what, predicate, ms = 2000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

export const tick = (ms = 10) => new Promise((r) => setTimeout(r, ms));

/** The last socket, once there are `n`. */
export const socket = (n) => until(`socket #${n}`, () => FakeWebSocket.all.length >= n && FakeWebSocket.all[n - 1]);

export const note = (channel, offset, epoch = 'E') => ({
  type: 'notification',
  id: `${epoch}-${offset}`,
  channel,
  offset,
  epoch,
  title: `${channel} ${offset}`,
});

export const subscribed = (channel, position, recovered = true, replayed = 0) => ({
  type: 'subscribed',
  channel,
  replayed,
  recovered,
  position,
});

/** Collect what a subscription emits. */
export function record(sub) {
  const r = { notes: [], gaps: [], errors: [] };
  sub.on('notification', (n) => r.notes.push(n.id));
  sub.on('gap', (g) => r.gaps.push(g));
  sub.on('error', (e) => r.errors.push(e));
  return r;
}

/** A fetch that answers SSE requests with a stream the test writes to. */
export function fakeFetch() {
  const calls = [];
  const fetch = async (url, init) => {
    let controller;
    const body = new ReadableStream({ start: (c) => (controller = c) });
    const call = {
      url: new URL(url),
      init,
      write: (text) => controller.enqueue(new TextEncoder().encode(text)),
      frame: (f) => call.write(`data: ${JSON.stringify(f)}\n\n`),
      end: () => controller.close(),
    };
    calls.push(call);
    init.signal?.addEventListener('abort', () => {
      try {
        controller.error(new DOMException('aborted', 'AbortError'));
      } catch {}
    });
    if (call.refuse) return new Response(JSON.stringify(call.refuse.body), { status: call.refuse.status });
    return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
  };
  return { fetch, calls };
}
