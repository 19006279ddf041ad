#!/usr/bin/env node
// Real-browser tests of herald's client (/client.js) in Chromium, driven by
// tests/browser_client.rs, which starts two herald processes and restarts
// them when asked:
//   HERALD_DISK_URL=http://127.0.0.1:P1 HERALD_MEMORY_URL=http://127.0.0.1:P2 node client.mjs [name-filter...]
// A test asks for a restart by printing "control: restart disk|memory" and
// waits for "ok" on stdin (kill -9, then a start on the same port and files).
// Env: HERALD_BROWSER_TEST_TIMEOUT_MS (per test, default 60000), CHROMIUM_PATH.
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import { pollNode, postEvent, randomTag, runTests, sleep, waitFor } from './lib.mjs';

const base = (name) => {
  const url = (process.env[name] || '').replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+$/.test(url)) {
    console.error(`usage: HERALD_DISK_URL=http://127.0.0.1:P1 HERALD_MEMORY_URL=http://127.0.0.1:P2 node client.mjs (${name} missing)`);
    process.exit(2);
  }
  return url;
};
const DISK = base('HERALD_DISK_URL');
const MEMORY = base('HERALD_MEMORY_URL');
const TEST_TIMEOUT_MS = Number(process.env.HERALD_BROWSER_TEST_TIMEOUT_MS || 60_000);

// --- the driver's side channel: one request line out, one answer line in
const answers = [];
const waiting = [];
createInterface({ input: process.stdin }).on('line', (line) => (waiting.length ? waiting.shift()(line) : answers.push(line)));
async function control(command) {
  console.log(`control: ${command}`);
  const answer = await new Promise((resolve) => (answers.length ? resolve(answers.shift()) : waiting.push(resolve)));
  assert.equal(answer, 'ok', `control "${command}" answered ${answer}`);
}

async function metric(baseUrl, series) {
  const text = await (await fetch(`${baseUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

/** POST events `n<from>`..`n<to - 1>` to `channel`, in one request. */
async function post(baseUrl, channel, from, to, extra = {}) {
  const events = [];
  for (let i = from; i < to; i++) events.push({ channel, title: `n${i}`, ...extra });
  const res = await postEvent(baseUrl, 't', events, { timeoutMs: 20_000 });
  assert.equal(res.status, 202, `POST answered ${res.status}: ${res.text}`);
}

/** The first subscribe frame sent on the page's socket number `index` or a later one. */
const firstSubscribe = (sent, index) =>
  sent.filter((s) => s.index >= index).map((s) => JSON.parse(s.frame)).find((f) => f.type === 'subscribe');

const titles = (from, to) => Array.from({ length: to - from }, (_, i) => `n${from + i}`);

/**
 * Load /client.js in `page` (same origin as herald), connect with `options`
 * and subscribe to `channel`; what the subscription emits is kept in
 * window.got (titles), window.gaps, window.states. Returns once the server
 * confirmed the subscription.
 */
async function clientPage(page, baseUrl, channel, options = {}, subscribe = {}) {
  await page.goto(`${baseUrl}/healthz`);
  await page.evaluate(async ({ channel, options, subscribe }) => {
    const { connect } = await import('/client.js');
    Object.assign(window, { got: [], ids: [], gaps: [], states: [], errors: [], subscribed: 0 });
    window.client = connect(`ws://${location.host}/notifications`, options);
    client.on('state', (s, d) => states.push(d ? `${s} ${d.code}` : s));
    client.on('error', (e) => errors.push(e));
    const sub = client.subscribe(channel, subscribe);
    sub.on('notification', (n) => (got.push(n.title), ids.push(n.id)));
    sub.on('gap', (g) => gaps.push(g));
    sub.on('subscribed', () => (window.subscribed += 1));
  }, { channel, options, subscribe });
  await waitFor(page, 'the subscription to be confirmed', () => window.subscribed > 0);
}

const got = (page) => page.evaluate(() => window.got);
const waitForCount = (page, n, what, timeoutMs = 20_000) =>
  waitFor(page, `${n} notifications (${what})`, (k) => window.got.length >= k, n, { timeoutMs });

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('client: receives notifications, subscribing with defaults=false and a subscribe frame', async ({ page, sockets, sent }) => {
  const channel = `c-${randomTag()}`;
  await clientPage(page, DISK, channel);
  assert.equal(sockets.length, 1);
  assert.equal(new URL(sockets[0]).searchParams.get('defaults'), 'false');
  assert.deepEqual(sent.map((s) => JSON.parse(s.frame)), [{ type: 'subscribe', channel }]);
  await post(DISK, channel, 0, 5);
  await waitForCount(page, 5, 'live');
  await sleep(200);
  assert.deepEqual(await got(page), titles(0, 5));
});

test('client: resuming broadcast, which today\'s server also joins by default: the rest once, in order', async ({ page, context }) => {
  // The server joins broadcast live before it answers the client's own
  // subscribe with last_id: the client must not take that live stream as
  // its resume point (a hole), nor deliver twice what both replays carry.
  const tag = randomTag();
  await clientPage(page, DISK, 'broadcast', { shareAcrossTabs: false });
  await post(DISK, 'broadcast', 0, 5, { body: tag });
  await waitFor(page, 'five', (t) => window.got.length >= 5 && window.ids.length >= 5, tag);
  const lastId = await page.evaluate(() => window.ids[window.ids.length - 1]);
  await page.close();
  await post(DISK, 'broadcast', 5, 25, { body: tag });
  const { newPage } = await import('./lib.mjs');
  const again = await newPage(context);
  // Hold the page's frames back for a while on their way to herald, and keep
  // posting meanwhile: live notifications of the default join then reach
  // the page before the replay its subscribe asks for.
  await again.page.routeWebSocket(/\/notifications/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((m) => setTimeout(() => server.send(m), 300));
  });
  let next = 25;
  let pumping = true;
  const pump = (async () => {
    while (pumping) await post(DISK, 'broadcast', next, ++next, { body: tag });
  })();
  try {
    await clientPage(again.page, DISK, 'broadcast', { shareAcrossTabs: false }, { lastId });
    await sleep(300);
  } finally {
    pumping = false;
    await pump;
  }
  try {
    await waitForCount(again.page, next - 5, 'the replay and the live ones');
    await sleep(300);
    assert.deepEqual(await got(again.page), titles(5, next));
  } finally {
    await again.page.close();
  }
});

test('client: herald killed and restarted (disk store) mid-stream: every notification once, in order', async ({ page, sent }) => {
  const channel = `c-${randomTag()}`;
  await clientPage(page, DISK, channel);
  await post(DISK, channel, 0, 200);
  await waitForCount(page, 10, 'mid-stream');
  await control('restart disk');
  // Posted while the page is still backing off: it gets them as replay.
  await post(DISK, channel, 200, 300);
  await waitForCount(page, 300, 'after the restart');
  await post(DISK, channel, 300, 310);
  await waitForCount(page, 310, 'live after the restart');
  await sleep(300); // let a duplicate show up before comparing
  assert.deepEqual(await got(page), titles(0, 310));
  assert.deepEqual(await page.evaluate(() => window.gaps), []);
  const states = await page.evaluate(() => window.states);
  assert.ok(states.some((s) => s.startsWith('reconnecting')), `states: ${states}`);
  // The first frame on the new socket resumes the channel (a resync would
  // hide a reconnect that forgot the last id).
  const resumed = firstSubscribe(sent, 1);
  assert.equal(resumed?.channel, channel, `no subscribe on a new socket: ${JSON.stringify(sent)}`);
  assert.match(resumed.last_id || '', /^[A-Za-z0-9]+-\d+$/, JSON.stringify(resumed));
});

test('client: herald restarted with the memory store: gap fires', async ({ page }) => {
  const channel = `c-${randomTag()}`;
  await clientPage(page, MEMORY, channel);
  await post(MEMORY, channel, 0, 3);
  await waitForCount(page, 3, 'before the restart');
  const lastId = await page.evaluate(() => window.ids[2]);
  await control('restart memory');
  const gap = await waitFor(page, 'a gap', () => window.gaps[0], undefined, { timeoutMs: 20_000 });
  assert.equal(gap.channel, channel);
  assert.equal(gap.lastId, lastId);
  assert.notEqual(gap.position.split('-')[0], lastId.split('-')[0], `a new epoch: ${JSON.stringify(gap)}`);
  await post(MEMORY, channel, 3, 5);
  await waitForCount(page, 5, 'after the gap');
  assert.deepEqual(await got(page), titles(0, 5));
});

test('client: offline for a few seconds, then back: resumes without a gap', async ({ page, context, sent }) => {
  const channel = `c-${randomTag()}`;
  await clientPage(page, DISK, channel);
  await post(DISK, channel, 0, 5);
  await waitForCount(page, 5, 'before going offline');
  const lastId = await page.evaluate(() => window.ids[4]);
  try {
    await context.setOffline(true);
    await waitFor(page, 'the client to notice', () => client.state === 'reconnecting');
    await post(DISK, channel, 5, 10);
    await sleep(3_000);
    assert.equal((await got(page)).length, 5, 'nothing arrives while offline');
  } finally {
    await context.setOffline(false);
  }
  await waitForCount(page, 10, 'back online');
  await post(DISK, channel, 10, 12);
  await waitForCount(page, 12, 'live');
  await sleep(300);
  assert.deepEqual(await got(page), titles(0, 12));
  assert.deepEqual(await page.evaluate(() => window.gaps), []);
  assert.deepEqual(firstSubscribe(sent, 1), { type: 'subscribe', channel, last_id: lastId });
});

test('client: a page that stops reading is closed with 4008 and resumes', async ({ page }) => {
  // The memory herald runs with a small send buffer and queue (see browser_client.rs).
  const channel = `c-${randomTag()}`;
  await clientPage(page, MEMORY, channel);
  const tooSlow = 'herald_sessions_closed_total{reason="too_slow"}';
  const before = await metric(MEMORY, tooSlow);
  const blockMs = 12_000;
  // Block the page's main thread: it reads nothing while herald writes.
  await page.evaluate((ms) => setTimeout(() => { const end = Date.now() + ms; while (Date.now() < end); }, 0), blockMs);
  const body = 'x'.repeat(16_000);
  const started = Date.now();
  let posted = 0;
  // Paced, and bounded by time, not by count: herald evicts a reader that
  // stopped when its queue overflows or when a ping it was sent while being
  // fed goes unanswered (ping_interval_ms + pong_timeout_ms, ~4 s here), so
  // the posts must go on past that. A count cap let a fast machine post its
  // whole budget in under 3 s and stop before the eviction.
  while (Date.now() - started < blockMs - 2_000 && (await metric(MEMORY, tooSlow)) === before) {
    await post(MEMORY, channel, posted, posted + 25, { body });
    posted += 25;
    await sleep(100);
  }
  assert.ok((await metric(MEMORY, tooSlow)) > before, `herald closed no session as too slow after ${posted} notifications`);
  await waitForCount(page, posted, 'after the page reads again', 40_000);
  await sleep(300);
  assert.deepEqual(await got(page), titles(0, posted));
  // herald closed it with 4008 (the metric above); whether the close frame
  // gets through to a reader that stopped depends on the buffers, so the page
  // sees 4008 or 1006 (no close frame). Either way it reconnected once.
  const states = await page.evaluate(() => window.states);
  assert.ok(states.some((s) => /^reconnecting (4008|1006)$/.test(s)), `states: ${states}`);
  assert.deepEqual(await page.evaluate(() => window.gaps), []);
});

test('client: three tabs share one WebSocket; closing the leader hands over with no gap and no duplicate', async ({ context }) => {
  const channel = `c-${randomTag()}`;
  const { newPage } = await import('./lib.mjs');
  const tabs = [];
  try {
    for (let i = 0; i < 3; i++) {
      const tab = await newPage(context);
      tabs.push(tab);
      await clientPage(tab.page, DISK, channel); // default: shareAcrossTabs where navigator.locks exists
    }
    const leaders = () => tabs.filter((t) => !t.page.isClosed() && t.sockets.length > 0);
    assert.equal(leaders().length, 1, `tabs with a socket: ${tabs.map((t) => t.sockets.length)}`);
    assert.equal(tabs.reduce((n, t) => n + t.sockets.length, 0), 1, 'one WebSocket in all');
    await pollNode('herald_sessions to be 1', async () => (await metric(DISK, 'herald_sessions')) === 1);

    await post(DISK, channel, 0, 20);
    for (const t of tabs) await waitForCount(t.page, 20, 'in every tab');

    // Close the leader; post while the next tab takes over.
    const leader = leaders()[0];
    await leader.page.close();
    await post(DISK, channel, 20, 40);
    const rest = tabs.filter((t) => t !== leader);
    for (const t of rest) await waitForCount(t.page, 40, 'after the handover');
    await post(DISK, channel, 40, 45);
    for (const t of rest) await waitForCount(t.page, 45, 'live after the handover');
    await sleep(300);
    for (const t of rest) assert.deepEqual(await got(t.page), titles(0, 45));
    for (const t of rest) assert.deepEqual(await t.page.evaluate(() => window.gaps), []);
    assert.equal(leaders().length, 1, `tabs with a socket after the handover: ${rest.map((t) => t.sockets.length)}`);
    assert.equal(rest.reduce((n, t) => n + t.sockets.length, 0), 1, 'one new WebSocket in all');
    await pollNode('herald_sessions to be 1 again', async () => (await metric(DISK, 'herald_sessions')) === 1);
  } finally {
    for (const t of tabs) await t.page.close().catch(() => {});
  }
});

await runTests(tests, 'browser-client', { timeoutMs: TEST_TIMEOUT_MS });
process.stdin.destroy();
