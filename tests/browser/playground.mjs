// The rules playground (/admin/) in Chromium: an edit with an error shows
// the diagnostic at its line; the fix shows the diff against the active
// version; Activate makes a connected client receive the new shape.
import { launch, withTimeout } from './lib.mjs';

const base = process.env.HERALD_URL;
const channel = process.env.HERALD_CHANNEL;
const good = (title) =>
  `rules:\n  - id: r\n    emit: { channel: "${channel}", title: "${title}" }\n`;

const browser = await launch();
let failed = 0;
try {
  const page = await browser.context.newPage();
  await page.goto(`${base}/admin/`);
  await page.waitForFunction(() => document.getElementById('rules').value.includes('rules'));
  // A client of the bridge, in the same browser.
  await page.evaluate(({ base, channel }) => {
    window.frames_ = [];
    const ws = new WebSocket(base.replace('http', 'ws') + '/notifications?channel=' + channel);
    ws.onmessage = (m) => window.frames_.push(JSON.parse(m.data));
  }, { base, channel });
  await page.waitForFunction(() => window.frames_.some((f) => f.type === 'subscribed'));

  await page.fill('#rules', 'rules:\n  - id: r\n    emit: { channel: "{{ x" }\n');
  await page.waitForFunction(() => document.getElementById('diagnostics').textContent.includes('line 3'));
  await page.fill('#rules', good('from the playground'));
  await page.waitForFunction(() => /^ {2}[~+] /m.test(document.getElementById('diff').textContent));
  await page.waitForFunction(() => !document.getElementById('activate').disabled);
  await page.click('#activate');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('activated'));
  await fetch(`${base}/events/t`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ n: 1 }),
  });
  const title = await withTimeout(
    page.waitForFunction(() => window.frames_.find((f) => f.type === 'notification')?.title),
    10_000,
    'the notification after activation',
  );
  const got = await title.jsonValue();
  if (got !== 'from the playground') throw new Error(`title ${got}`);
  console.log('ok - playground: diagnostic, diff, activation');
} catch (e) {
  failed += 1;
  console.log('not ok - playground:', e.message);
} finally {
  await browser.close();
}
console.log(`playground: ${1 - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
