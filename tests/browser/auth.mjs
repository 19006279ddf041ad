#!/usr/bin/env node
// Authentication in a real browser: the page mints its own HS256 tokens
// with WebCrypto (the test hands it the HMAC secret herald is configured
// with, as a backend would keep it), connects with `?token=`, receives its
// own user's notifications only, and refreshes its token on the live
// socket before it expires.
//   HERALD_URL=http://127.0.0.1:PORT HERALD_JWT_SECRET=... node tests/browser/auth.mjs
// herald must run with auth.mode = "jwt", that secret and leeway_secs = 0.
// Prints "browser-auth: N passed, N failed"; exits 1 on a failure, 2 on a
// usage or launch error.
import assert from 'node:assert/strict';
import { launch, newPage, postEvent, randomTag, sleep, waitFor, withTimeout } from './lib.mjs';

const HERALD_URL = (process.env.HERALD_URL || '').replace(/\/+$/, '');
const SECRET = process.env.HERALD_JWT_SECRET || '';
if (!/^https?:\/\/[^/]+$/.test(HERALD_URL) || !SECRET) {
  console.error('usage: HERALD_URL=http://127.0.0.1:PORT HERALD_JWT_SECRET=... node tests/browser/auth.mjs');
  process.exit(2);
}
const WS_URL = HERALD_URL.replace(/^http/, 'ws') + '/notifications';

// Runs in the page: an HS256 JWT signed with WebCrypto.
async function pageMint(secret, claims) {
  const b64url = (bytes) =>
    btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  const enc = new TextEncoder();
  const part = (obj) => b64url(enc.encode(JSON.stringify(obj)));
  const input = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  const key = await crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const signature = await crypto.subtle.sign('HMAC', key, enc.encode(input));
  return `${input}.${b64url(signature)}`;
}

let browser;
let passed = 0;
let failed = 0;
try {
  try {
    browser = await launch();
  } catch (err) {
    console.error(`could not launch chromium: ${err.message}`);
    process.exit(2);
  }
  const session = await newPage(browser.context);
  const { page, logs } = session;
  const name = 'a page with a token gets its own notifications and survives a refresh';
  const started = Date.now();
  try {
    await withTimeout((async () => {
      await page.goto(`${HERALD_URL}/healthz`);
      const user = `alice-${randomTag()}`;
      const other = `bob-${randomTag()}`;
      // A token that expires in 4 s: without a refresh herald closes the
      // socket with 4010 then.
      const firstExp = Math.floor(Date.now() / 1000) + 4;
      await page.evaluate(async ({ wsUrl, secret, user, firstExp, mint }) => {
        const mintFn = new Function(`return (${mint})`)();
        window.mint = (claims) => mintFn(secret, claims);
        window.frames_ = [];
        window.closeCode = null;
        const token = await window.mint({ sub: user, exp: firstExp });
        const ws = new WebSocket(`${wsUrl}?token=${encodeURIComponent(token)}`);
        ws.onmessage = (e) => window.frames_.push(JSON.parse(e.data));
        ws.onclose = (e) => { window.closeCode = e.code; };
        window.ws = ws;
      }, { wsUrl: WS_URL, secret: SECRET, user, firstExp, mint: pageMint.toString() });
      await waitFor(page, `subscribed to user:${user}`, (u) =>
        window.frames_.some((f) => f.type === 'subscribed' && f.channel === `user:${u}`), user);

      const mine = `for ${user}`;
      for (const [to, title] of [[other, `for ${other}`], [user, mine]]) {
        const res = await postEvent(HERALD_URL, 'demo', { channel: `user:${to}`, title });
        assert.equal(res.status, 202, res.text);
      }
      await waitFor(page, 'its own notification', (t) =>
        window.frames_.some((f) => f.type === 'notification' && f.title === t), mine);

      // Refresh on the live socket with a token minted in the page.
      const refreshedAt = await page.evaluate(async (user) => {
        const token = await window.mint({ sub: user, exp: Math.floor(Date.now() / 1000) + 120 });
        window.ws.send(JSON.stringify({ type: 'refresh', token }));
        return Date.now();
      }, user);
      assert.ok(refreshedAt / 1000 < firstExp, 'the refresh was sent before the first token expired');
      await waitFor(page, 'refreshed', () => window.frames_.some((f) => f.type === 'refreshed'));

      // Past the first token's exp, the socket is open and delivering.
      while (Date.now() / 1000 <= firstExp + 1) await sleep(100);
      const later = `later for ${user}`;
      const res = await postEvent(HERALD_URL, 'demo', { channel: `user:${user}`, title: later });
      assert.equal(res.status, 202, res.text);
      await waitFor(page, 'the notification after the first exp', (t) =>
        window.frames_.some((f) => f.type === 'notification' && f.title === t), later);
      const { frames, closed } = await page.evaluate(() => ({ frames: window.frames_, closed: window.closeCode }));
      assert.equal(closed, null, `the socket closed with ${closed}`);
      const notes = frames.filter((f) => f.type === 'notification');
      assert.deepEqual(notes.map((f) => f.channel), [`user:${user}`, `user:${user}`], JSON.stringify(frames));
      assert.ok(!notes.some((f) => String(f.title).includes(other)), 'received another user\'s notification');
      const offsets = notes.map((f) => f.offset);
      assert.deepEqual(offsets, [1, 2], 'no gap across the refresh');
    })(), 30_000, name);
    passed += 1;
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name} (${Date.now() - started} ms): ${err && err.message ? err.message : err}`);
    for (const line of logs) console.log(`    | ${line}`);
  }
} finally {
  if (browser) await browser.close();
}
console.log(`browser-auth: ${passed} passed, ${failed} failed`);
if (failed > 0) process.exitCode = 1;
