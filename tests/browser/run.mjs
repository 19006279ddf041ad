#!/usr/bin/env node
// Real-browser tests for herald.
//   HERALD_URL=http://127.0.0.1:PORT node tests/browser/run.mjs [name-filter...]
// Env: HERALD_URL (required), HERALD_BROWSER_TEST_TIMEOUT_MS (per test, default 30000),
//      CHROMIUM_PATH (default /usr/bin/chromium).
// Prints one line per test and a closing "browser: N passed, N failed" line;
// exits 1 if any test failed, 2 on a usage or launch error.
import assert from 'node:assert/strict';
import { pollNode, postEvent, randomTag, runTests, waitFor } from './lib.mjs';

const HERALD_URL = (process.env.HERALD_URL || '').replace(/\/+$/, '');
if (!/^https?:\/\/[^/]+$/.test(HERALD_URL)) {
  console.error('usage: HERALD_URL=http://127.0.0.1:PORT node tests/browser/run.mjs [name-filter...]');
  process.exit(2);
}
const HERALD_HOST = new URL(HERALD_URL).host; // host:port
const TEST_TIMEOUT_MS = Number(process.env.HERALD_BROWSER_TEST_TIMEOUT_MS || 30_000);

// The article's snippet, verbatim; only yourserver.com is replaced.
const SEED_SNIPPET = `const socket = new WebSocket('ws://yourserver.com/notifications'); socket.onopen = function() { console.log('WebSocket connection established'); }; socket.onmessage = function(event) { const notification = JSON.parse(event.data); displayNotification(notification); }; socket.onerror = function(error) { console.error('WebSocket error:', error); };`;

// "connected" as a word, so "disconnected" / "not connected" do not count.
function statusIsConnected() {
  const el = document.getElementById('status');
  const t = el ? el.textContent : '';
  return /\bconnected\b/i.test(t) && !/\bnot\s+connected\b/i.test(t);
}

async function readItems(page) {
  return page.$$eval('#notifications > li', (lis) =>
    lis.map((li) => ({ id: li.getAttribute('data-id'), text: li.textContent })),
  );
}

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

test('seed snippet receives a posted event', async ({ page, logs, sockets }) => {
  await page.goto(`${HERALD_URL}/healthz`);
  await page.evaluate(() => {
    window.received = [];
    window.displayNotification = (notification) => window.received.push(notification);
  });
  await page.evaluate(SEED_SNIPPET.replace('yourserver.com', HERALD_HOST));

  await waitFor(page, 'a {"type":"subscribed","channel":"broadcast"} frame', () =>
    window.received.some((m) => m && m.type === 'subscribed' && m.channel === 'broadcast'),
  );
  assert.ok(logs.some((l) => l.includes('WebSocket connection established')), 'onopen did not log');
  assert.deepEqual(sockets, [`ws://${HERALD_HOST}/notifications`]);

  const body = `from the test ${randomTag()}`;
  const res = await postEvent(HERALD_URL, 'demo', { type: 'greeting', title: 'Hello', body });
  assert.equal(res.status, 202, `POST /events/demo answered ${res.status}: ${res.text}`);

  await waitFor(page, 'the notification', (b) =>
    window.received.some((m) => m && m.type === 'notification' && m.body === b), body);
  const received = await page.evaluate(() => window.received);
  for (const m of received) {
    assert.ok(m !== null && typeof m === 'object' && !Array.isArray(m), `frame is not an object: ${JSON.stringify(m)}`);
  }
  const n = received.find((m) => m.type === 'notification' && m.body === body);
  assert.equal(n.channel, 'broadcast');
  assert.equal(n.title, 'Hello');
  assert.equal(typeof n.id, 'string', `id is not a string: ${JSON.stringify(n)}`);
  assert.ok(n.id.length > 0, 'id is empty');
  assert.ok(!logs.some((l) => l.includes('WebSocket error:')), 'the snippet logged a WebSocket error');
});

test('demo page posts, shows, and replays after a drop', async ({ page, sockets, sent, context }) => {
  await page.goto(`${HERALD_URL}/`);
  await waitFor(page, '#status to say connected', statusIsConnected);

  // The page runs herald's client: defaults=false and one subscribe frame,
  // asking for the last 20 notifications.
  assert.equal(sockets.length, 1, `sockets: ${sockets}`);
  assert.equal(new URL(sockets[0]).searchParams.get('defaults'), 'false');
  const subscribes = (from) => sent.filter((s) => s.index >= from).map((s) => JSON.parse(s.frame)).filter((f) => f.type === 'subscribe');
  const first = await pollNode('a subscribe frame', () => subscribes(0)[0]);
  assert.deepEqual(first, { type: 'subscribe', channel: 'broadcast', rewind: 20 });

  // Post through the form.
  await page.fill('#topic', 'demo');
  await page.fill('#event', '{"title":"From the form","body":"b1"}');
  await page
    .locator('#post-form button[type=submit], #post-form input[type=submit], #post-form button:not([type])')
    .first()
    .click();
  await waitFor(page, '#post-status to show 202', () =>
    /\b202\b/.test(document.getElementById('post-status')?.textContent || ''));
  await waitFor(page, 'an <li> titled "From the form"', () =>
    [...document.querySelectorAll('#notifications > li')].some(
      (li) => li.textContent.includes('From the form') && li.textContent.includes('b1') && li.getAttribute('data-id')));

  // Cut the network: the page's client drops its socket at the browser's
  // offline event and cannot reconnect until the network is back.
  const lastIdBeforeDrop = await page.evaluate(() => {
    const lis = document.querySelectorAll('#notifications > li');
    return lis[lis.length - 1].getAttribute('data-id');
  });
  const socketsBeforeDrop = sockets.length;
  const tag = randomTag();
  const bodies = [`after drop 1 ${tag}`, `after drop 2 ${tag}`];
  try {
    await context.setOffline(true);
    await waitFor(page, '#status to stop saying connected after the drop', () => {
      const t = document.getElementById('status')?.textContent || '';
      return !(/\bconnected\b/i.test(t) && !/\bnot\s+connected\b/i.test(t)); // !statusIsConnected()
    }, undefined, { timeoutMs: 5_000 });

    // While it is away, post two more events, in order.
    for (const [i, body] of bodies.entries()) {
      const res = await postEvent(HERALD_URL, 'demo', { title: `After drop ${i + 1}`, body });
      assert.equal(res.status, 202, `POST /events/demo answered ${res.status}: ${res.text}`);
    }
  } finally {
    await context.setOffline(false);
  }

  // Back online: a new socket at once, resubscribing from the last id.
  await waitFor(page, '#status connected again', statusIsConnected, undefined, { timeoutMs: 8_000 });
  const resubscribe = await pollNode('a subscribe frame on a socket opened after the drop', () => subscribes(socketsBeforeDrop)[0]);
  assert.deepEqual(resubscribe, { type: 'subscribe', channel: 'broadcast', last_id: lastIdBeforeDrop },
    `the last id seen was ${lastIdBeforeDrop}`);

  await waitFor(page, 'both events after the drop to be listed', (bs) => {
    const texts = [...document.querySelectorAll('#notifications > li')].map((li) => li.textContent);
    return bs.every((b) => texts.some((t) => t.includes(b)));
  }, bodies);
  // One more, live: frames arrive in order, so once it is listed anything
  // herald sent before it (a duplicate of the replay) has been handled too.
  const marker = `live after reconnect ${tag}`;
  const res = await postEvent(HERALD_URL, 'demo', { title: 'Live', body: marker });
  assert.equal(res.status, 202, `POST /events/demo answered ${res.status}: ${res.text}`);
  await waitFor(page, 'the live event after the reconnect to be listed', (m) =>
    [...document.querySelectorAll('#notifications > li')].some((li) => li.textContent.includes(m)), marker);

  const items = await readItems(page);
  const ids = items.map((it) => it.id);
  assert.equal(new Set(ids).size, ids.length, `duplicate data-id in the list: ${JSON.stringify(ids)}`);
  const index = (needle) => {
    const hits = items.map((it, i) => (it.text.includes(needle) ? i : -1)).filter((i) => i >= 0);
    assert.equal(hits.length, 1, `expected exactly one <li> containing "${needle}", got ${hits.length}`);
    assert.ok(items[hits[0]].id, `<li> containing "${needle}" has no data-id`);
    return hits[0];
  };
  const iForm = index('From the form');
  const [i1, i2] = bodies.map(index);
  assert.ok(items[i1].text.includes('After drop 1') && items[i2].text.includes('After drop 2'), 'titles missing');
  const iLive = index(marker);
  assert.ok(iForm < i1 && i1 < i2 && i2 < iLive, `out of order: form@${iForm}, drop1@${i1}, drop2@${i2}, live@${iLive}`);
  assert.ok(await page.evaluate(statusIsConnected), '#status does not say connected at the end');
});

await runTests(tests, 'browser', { timeoutMs: TEST_TIMEOUT_MS });
