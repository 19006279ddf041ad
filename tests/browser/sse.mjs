#!/usr/bin/env node
// Server-Sent Events, rewind and the history API in real Chromium, driven
// by tests/browser_sse.rs, which starts two heralds: HERALD_URL (no auth,
// 25 notifications kept per channel) and HERALD_JWT_URL (auth.mode = "jwt"
// with HERALD_JWT_SECRET, leeway 0). Pages reach herald through a small TCP
// proxy made here, which can cut every connection or refuse WebSocket
// upgrades, and records what the browser sent.
//   HERALD_URL=… HERALD_JWT_URL=… HERALD_JWT_SECRET=… node sse.mjs [name-filter...]
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import net from 'node:net';
import { postEvent, randomTag, runTests, sleep, waitFor } from './lib.mjs';

const env = (name) => {
  const value = (process.env[name] || '').replace(/\/+$/, '');
  if (!value) {
    console.error(`usage: HERALD_URL=… HERALD_JWT_URL=… HERALD_JWT_SECRET=… node sse.mjs (${name} missing)`);
    process.exit(2);
  }
  return value;
};
const HERALD = env('HERALD_URL');
const JWT_HERALD = env('HERALD_JWT_URL');
const SECRET = env('HERALD_JWT_SECRET');

/** An HS256 token for `sub`, valid `ttl` seconds. */
function token(sub, ttl) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const input = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ sub, exp: Math.floor(Date.now() / 1000) + ttl })}`;
  return `${input}.${createHmac('sha256', SECRET).update(input).digest('base64url')}`;
}

/**
 * A TCP proxy to `target` on 127.0.0.1:0. `cut()` destroys every open
 * connection; with `refuseUpgrades` a WebSocket handshake is answered 403.
 * `sent` is everything browsers sent through it (request heads included).
 */
async function proxy(target, { refuseUpgrades = false } = {}) {
  const { hostname, port } = new URL(target);
  const sockets = new Set();
  const p = { sent: '', cut: () => sockets.forEach((s) => s.destroy()) };
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    client.once('data', (first) => {
      p.sent += first.toString('latin1');
      if (refuseUpgrades && /^upgrade:\s*websocket/im.test(first.toString('latin1'))) {
        client.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n');
        return;
      }
      const upstream = net.connect(Number(port), hostname, () => {
        upstream.write(first);
        client.on('data', (d) => (p.sent += d.toString('latin1')));
        client.pipe(upstream);
        upstream.pipe(client);
      });
      sockets.add(upstream);
      upstream.on('error', () => client.destroy());
      upstream.on('close', () => (sockets.delete(upstream), client.destroy()));
      client.on('close', () => upstream.destroy());
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  p.url = `http://127.0.0.1:${server.address().port}`;
  p.close = () => (p.cut(), new Promise((resolve) => server.close(resolve)));
  return p;
}

/** POST events `n<from>`..`n<to - 1>` to `channel` in one request. */
async function post(baseUrl, channel, from, to) {
  const events = [];
  for (let i = from; i < to; i++) events.push({ channel, title: `n${i}` });
  const res = await postEvent(baseUrl, 't', events, { timeoutMs: 20_000 });
  assert.equal(res.status, 202, `POST answered ${res.status}: ${res.text}`);
}

const titles = (from, to) => Array.from({ length: to - from }, (_, i) => `n${from + i}`);

/** Load /client.js from `origin`, connect to it with `options`, subscribe. */
async function clientPage(page, origin, channel, options, subscribe = {}) {
  await page.goto(`${origin}/healthz`);
  await page.evaluate(async ({ channel, options, subscribe }) => {
    const { connect } = await import('/client.js');
    Object.assign(window, { got: [], gaps: [], states: [], errors: [], replayed: [] });
    window.client = connect(`ws://${location.host}/notifications`, { shareAcrossTabs: false, ...options });
    client.on('state', (s, d) => states.push(d ? `${s} ${d.code}` : s));
    client.on('error', (e) => errors.push(e));
    const sub = client.subscribe(channel, subscribe);
    sub.on('notification', (n) => got.push(n.title));
    sub.on('gap', (g) => gaps.push(g));
    sub.on('subscribed', (f) => replayed.push(f.replayed));
  }, { channel, options, subscribe });
}

const got = (page) => page.evaluate(() => window.got);
const waitForCount = (page, n, what, timeoutMs = 20_000) =>
  waitFor(page, `${n} notifications (${what})`, (k) => window.got.length >= k, n, { timeoutMs });

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('sse: EventSource on two channels, the connection cut mid-stream: resumes with Last-Event-ID, nothing lost or repeated', async ({ page }) => {
  const p = await proxy(HERALD);
  try {
    const [a, b] = [`a-${randomTag()}`, `b-${randomTag()}`];
    await page.goto(`${p.url}/healthz`);
    await page.evaluate(({ a, b }) => {
      Object.assign(window, { seen: [], subs: 0, opens: 0 });
      window.es = new EventSource(`/notifications?channel=${a}&channel=${b}`);
      es.onopen = () => (window.opens += 1);
      es.onmessage = (e) => {
        const f = JSON.parse(e.data);
        if (f.type === 'notification') seen.push(`${f.channel === a ? 'a' : 'b'}${f.offset}`);
        if (f.type === 'subscribed') window.subs += 1;
      };
    }, { a, b });
    await waitFor(page, 'both subscriptions', () => window.subs >= 2);
    await post(HERALD, a, 0, 5);
    await post(HERALD, b, 0, 5);
    await waitFor(page, 'ten notifications', () => window.seen.length >= 10);
    p.cut();
    // Posted while the browser waits its retry: they come as replay.
    await post(HERALD, a, 5, 10);
    await post(HERALD, b, 5, 8);
    await waitFor(page, 'the rest after the reconnect', () => window.seen.length >= 18, undefined, { timeoutMs: 20_000 });
    await post(HERALD, b, 8, 10);
    await waitFor(page, 'live after the reconnect', () => window.seen.length >= 20);
    await sleep(300);
    const seen = await page.evaluate(() => window.seen);
    const per = (c) => seen.filter((s) => s[0] === c);
    assert.deepEqual(per('a'), Array.from({ length: 10 }, (_, i) => `a${i + 1}`));
    assert.deepEqual(per('b'), Array.from({ length: 10 }, (_, i) => `b${i + 1}`));
    assert.ok(await page.evaluate(() => window.opens) >= 2, 'the browser reconnected');
    assert.match(p.sent, /last-event-id: c1\.[A-Za-z0-9_-]+/i, 'the reconnect sent the cursor');
    await page.evaluate(() => es.close());
  } finally {
    await p.close();
  }
});

test('sse: WebSocket upgrades refused: the auto transport falls back to SSE and receives', async ({ page }) => {
  const p = await proxy(HERALD, { refuseUpgrades: true });
  try {
    const channel = `c-${randomTag()}`;
    await clientPage(page, p.url, channel, { transport: 'auto' });
    await waitFor(page, 'the SSE subscription', () => window.replayed.length > 0, undefined, { timeoutMs: 20_000 });
    await post(HERALD, channel, 0, 3);
    await waitForCount(page, 3, 'over SSE');
    assert.deepEqual(await got(page), titles(0, 3));
    assert.match(p.sent, /upgrade: websocket/i, 'WebSocket was tried first');
    assert.match(p.sent, /accept: text\/event-stream/i, 'then a stream');
    await page.evaluate(() => client.close());
  } finally {
    await p.close();
  }
});

for (const transport of ['websocket', 'sse']) {
  test(`rewind (${transport}): a page opened after events were posted shows the last N, then live`, async ({ page }) => {
    const channel = `c-${randomTag()}`;
    await post(HERALD, channel, 0, 24);
    await clientPage(page, HERALD, channel, { transport }, { rewind: 20 });
    await waitForCount(page, 20, 'the rewind');
    await post(HERALD, channel, 24, 26);
    await waitForCount(page, 22, 'live');
    await sleep(200);
    assert.deepEqual(await got(page), titles(4, 26));
    assert.deepEqual(await page.evaluate(() => window.replayed), [20]);
    await page.evaluate(() => client.close());
  });
}

test('rewind larger than the history: all of it, no gap', async ({ page }) => {
  const channel = `c-${randomTag()}`;
  await post(HERALD, channel, 0, 7);
  await clientPage(page, HERALD, channel, {}, { rewind: 50 });
  await waitForCount(page, 7, 'the whole history');
  await sleep(200);
  assert.deepEqual(await got(page), titles(0, 7));
  assert.deepEqual(await page.evaluate(() => [window.replayed, window.gaps]), [[7], []]);
  await page.evaluate(() => client.close());
});

test('history: paging back and forward across the retention boundary', async ({ page }) => {
  // herald keeps 25 per channel: of 35, offsets 11..35 (n10..n34) remain.
  const channel = `c-${randomTag()}`;
  await post(HERALD, channel, 0, 35);
  await page.goto(`${HERALD}/healthz`);
  const result = await page.evaluate(async (channel) => {
    const read = async (q) => (await fetch(`/channels/${encodeURIComponent(channel)}/notifications?${q}`)).json();
    const back = [];
    let page = await read('limit=10');
    const epoch = page.position.split('-')[0];
    for (;;) {
      back.unshift(...page.notifications.map((n) => n.title));
      if (!page.more) break;
      page = await read(`before=${page.position}&limit=10`);
    }
    const trimmed = await read(`after=${epoch}-3&limit=10`);
    const forward = trimmed.notifications.map((n) => n.title);
    page = trimmed;
    while (page.more) {
      page = await read(`after=${page.position}&limit=10`);
      forward.push(...page.notifications.map((n) => n.title));
    }
    return { back, forward, recovered: trimmed.recovered, end: page };
  }, channel);
  assert.deepEqual(result.back, titles(10, 35));
  assert.deepEqual(result.forward, titles(10, 35));
  assert.equal(result.recovered, false, 'offset 4 was trimmed');
  assert.equal(result.end.recovered, true);
});

test('sse with auth: 403 for a forbidden channel, 4010 when the token expires', async ({ page }) => {
  const ann = token('ann', 300);
  await page.goto(`${JWT_HERALD}/healthz`);
  const refused = await page.evaluate(async (ann) => {
    const res = await fetch('/notifications?channel=user:bob', {
      headers: { accept: 'text/event-stream', authorization: `Bearer ${ann}` },
    });
    const es = new EventSource(`/notifications?channel=user:bob&token=${ann}`);
    await new Promise((resolve) => (es.onerror = resolve));
    return { status: res.status, body: await res.json(), eventSource: es.readyState };
  }, ann);
  assert.equal(refused.status, 403);
  assert.equal(refused.body.code, 4003);
  assert.equal(refused.eventSource, 2, 'EventSource gives up on a 403');
  // The client over SSE: the forbidden channel is an error that stops it.
  await clientPage(page, JWT_HERALD, 'user:bob', { transport: 'sse', token: ann });
  const forbidden = await waitFor(page, 'an error', () => window.errors[0]);
  assert.equal(forbidden.code, 4003);
  // A token that expires in 3 s, with no getToken: herald ends the stream
  // with 4010 and the client reports it.
  await clientPage(page, JWT_HERALD, 'user:ann', { transport: 'sse', token: token('ann', 3) });
  await waitFor(page, 'the subscription', () => window.replayed.length > 0);
  await post(JWT_HERALD, 'user:ann', 0, 1);
  await waitForCount(page, 1, 'with a valid token');
  const expired = await waitFor(page, 'the expiry', () => window.errors[0], undefined, { timeoutMs: 15_000 });
  assert.equal(expired.code, 4010, JSON.stringify(expired));
});

await runTests(tests, 'browser-sse', { timeoutMs: 60_000 });
