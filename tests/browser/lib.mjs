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
 * errors and the URLs of WebSockets the page opens (observed through CDP,
 * the page's own WebSocket is not replaced).
 */
export async function newPage(context, { timeoutMs = 10_000 } = {}) {
  const page = await context.newPage();
  page.setDefaultTimeout(timeoutMs);
  page.setDefaultNavigationTimeout(timeoutMs);
  const logs = [];
  const sockets = [];
  page.on('console', (msg) => logs.push(`console.${msg.type()}: ${msg.text()}`));
  page.on('pageerror', (err) => logs.push(`pageerror: ${err.message}`));
  page.on('websocket', (ws) => {
    sockets.push(ws.url());
    logs.push(`websocket opened: ${ws.url()}`);
    ws.on('close', () => logs.push(`websocket closed: ${ws.url()}`));
  });
  return { page, logs, sockets };
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
