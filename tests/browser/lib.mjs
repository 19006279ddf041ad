// Helpers for herald's real-browser tests: Debian's chromium driven by
// playwright-core (no Playwright-managed browser downloads on this machine).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

// Without the background-networking flags Chromium keeps trying to reach
// Google services, which only floods the closed network here.
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** Reject with `message` if `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${message} (timed out after ${ms} ms)`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Launch chromium with a fresh, empty profile in a temp dir.
 * Playwright forbids --user-data-dir in args, so this uses a persistent
 * context on our own temp dir. Returns { context, profileDir, close }; close()
 * is idempotent, bounded, and always removes the profile dir.
 */
export async function launch({ launchTimeoutMs = 30_000 } = {}) {
  const profileDir = await mkdtemp(join(tmpdir(), 'herald-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: launchTimeoutMs,
      viewport: { width: 1024, height: 768 },
    });
  } catch (err) {
    await rm(profileDir, { recursive: true, force: true, maxRetries: 3 }).catch(() => {});
    throw err;
  }
  let closed = false;
  async function close() {
    if (closed) return;
    closed = true;
    try {
      await withTimeout(context.close(), 10_000, 'closing chromium');
    } catch (err) {
      process.stderr.write(`warning: ${err.message}\n`);
    }
    await rm(profileDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 }).catch(
      (err) => process.stderr.write(`warning: could not remove ${profileDir}: ${err.message}\n`),
    );
  }
  return { context, profileDir, close };
}

/**
 * Open a new page with default timeouts, collecting console output, page
 * errors, the URLs of WebSockets the page opens and the frames it sends on
 * them (observed through CDP, the page's own WebSocket is not replaced).
 */
export async function newPage(context, { timeoutMs = 10_000 } = {}) {
  const page = await context.newPage();
  page.setDefaultTimeout(timeoutMs);
  page.setDefaultNavigationTimeout(timeoutMs);
  const logs = [];
  const sockets = [];
  const sent = []; // { url, frame } for each text frame the page sends
  page.on('console', (msg) => logs.push(`console.${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
  page.on('websocket', (ws) => {
    sockets.push(ws.url());
    logs.push(`websocket opened: ${ws.url()}`);
    ws.on('framesent', ({ payload }) => sent.push({ url: ws.url(), index: sockets.length - 1, frame: payload }));
    ws.on('close', () => logs.push(`websocket closed: ${ws.url()}`));
  });
  return { page, logs, sockets, sent };
}

/**
 * Poll `predicate` (a function evaluated in the page, given `arg`) until it
 * returns a truthy value; returns that value. Bounded by timeoutMs.
 */
export async function waitFor(page, what, predicate, arg, { timeoutMs = 10_000, pollMs = 50 } = {}) {
  try {
    const handle = await page.waitForFunction(predicate, arg, { timeout: timeoutMs, polling: pollMs });
    const value = await handle.jsonValue().catch(() => true);
    await handle.dispose().catch(() => {});
    return value;
  } catch (err) {
    if (err && err.name === 'TimeoutError') throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    throw err;
  }
}

/** Poll a Node-side async predicate until truthy; bounded by timeoutMs. */
export async function pollNode(what, predicate, { timeoutMs = 10_000, pollMs = 50 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(pollMs);
  }
}

/** POST a JSON event to herald's /events/{topic}; returns { status, text }. */
export async function postEvent(baseUrl, topic, event, { timeoutMs = 5_000 } = {}) {
  const res = await fetch(`${baseUrl}/events/${encodeURIComponent(topic)}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(event),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  return { status: res.status, text };
}

/** Random suffix so every run's events are distinguishable. */
export const randomTag = () => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;

/**
 * Run `tests` ({ name, fn }) one after another, each with a fresh page
 * (`fn({ page, logs, sockets, sent, context })`) and a time limit; the
 * command-line arguments filter them by name. Prints one line per test and a
 * closing "`label`: N passed, N failed" line; sets the exit code (1 if a test
 * failed, 2 if chromium did not launch).
 */
export async function runTests(tests, label, { timeoutMs = 30_000 } = {}) {
  const filters = process.argv.slice(2);
  const selected = tests.filter((t) => filters.length === 0 || filters.some((f) => t.name.includes(f)));
  let browser;
  const cleanup = async () => { if (browser) await browser.close(); };
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.once(sig, () => { cleanup().finally(() => process.exit(130)); });
  }
  let passed = 0;
  let failed = 0;
  try {
    try {
      browser = await launch();
    } catch (err) {
      console.error(`could not launch chromium: ${err.message}`);
      process.exitCode = 2;
    }
    if (browser) {
      for (const t of selected) {
        const started = Date.now();
        let session;
        try {
          session = await newPage(browser.context);
          await withTimeout(t.fn({ ...session, context: browser.context }), timeoutMs, `test "${t.name}"`);
          passed += 1;
          console.log(`ok   ${t.name} (${Date.now() - started} ms)`);
        } catch (err) {
          failed += 1;
          // eslint-disable-next-line no-control-regex
          const [first, ...rest] = String(err && err.message ? err.message : err).replace(/\x1b\[[0-9;]*m/g, '').split('\n');
          console.log(`FAIL ${t.name} (${Date.now() - started} ms): ${first}`);
          for (const line of rest) if (line.trim()) console.log(`    ${line}`);
          if (session) for (const line of session.logs) console.log(`    | ${line}`);
        } finally {
          if (session) await withTimeout(session.page.close(), 5_000, 'closing page').catch(() => {});
        }
      }
    }
  } finally {
    await cleanup();
  }
  console.log(`${label}: ${passed} passed, ${failed} failed`);
  if (failed > 0) process.exitCode = 1;
}
