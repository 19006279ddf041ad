// Sharing one connection across tabs, in node: each "tab" is a client with
// shareAcrossTabs; navigator.locks is a fake (first come, first served),
// BroadcastChannel is node's own. The browser tests do the same in Chromium.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, test } from 'node:test';
import { connect } from '../.build/index.js';
import { FakeLocks, FakeWebSocket, install, note, record, socket, subscribed, tick, until } from './fakes.mjs';

let tabs = [];
let n = 0;
let url;
beforeEach(() => {
  install();
  navigator.locks = new FakeLocks();
  url = `ws://herald.test/notifications?run=${++n}`; // a fresh lock and channel name per test
  tabs = [];
});
afterEach(() => tabs.forEach((t) => t.close()));

const tab = () => {
  const t = connect(url);
  tabs.push(t);
  return t;
};

test('three tabs share one WebSocket and each gets every notification once', async () => {
  const [t1, t2, t3] = [tab(), tab(), tab()];
  const r1 = record(t1.subscribe('a', { rewind: 5 }));
  const r2 = record(t2.subscribe('a', { rewind: 5 }));
  const r3 = record(t3.subscribe('b'));
  const ws = await socket(1);
  ws.accept();
  await until('all tabs open', () => tabs.every((t) => t.state === 'open'));
  await until('both channels subscribed', () => ws.frames('subscribe').some((f) => f.channel === 'b'));
  assert.equal(FakeWebSocket.all.length, 1, 'one connection');
  for (const o of [1, 2, 3]) ws.push(note('a', o));
  ws.push(note('b', 9));
  await until('the followers got them', () => r2.notes.length === 3 && r3.notes.length === 1);
  await tick();
  assert.deepEqual(r1.notes, ['E-1', 'E-2', 'E-3']);
  assert.deepEqual(r2.notes, ['E-1', 'E-2', 'E-3']);
  assert.deepEqual(r3.notes, ['E-9']);
  assert.equal(FakeWebSocket.all.length, 1);
});

test('the leader closing hands over: the next tab resumes from the shared last ids, no gap, no duplicate', async () => {
  const [t1, t2, t3] = [tab(), tab(), tab()];
  const r2 = record(t2.subscribe('a'));
  const r3 = record(t3.subscribe('a'));
  const r3b = record(t3.subscribe('b')); // only a follower wants b
  record(t1.subscribe('a'));
  const ws = await socket(1);
  ws.accept();
  await until('all open', () => tabs.every((t) => t.state === 'open'));
  await until('b subscribed', () => ws.frames('subscribe').some((f) => f.channel === 'b'));
  ws.push(subscribed('a', 'E-0'));
  for (const o of [1, 2, 3, 4]) ws.push(note('a', o));
  ws.push(note('b', 8));
  await until('the followers got them', () => r2.notes.length === 4 && r3.notes.length === 4 && r3b.notes.length === 1);
  t1.close();
  assert.ok(ws.closedByClient, 'the old leader closed its connection');
  const ws2 = await socket(2);
  ws2.accept();
  // Both channels, each from the shared last id. Their order (and whether a
  // follower's request for `a` repeats it) depends on when each tab's
  // message crosses the BroadcastChannel, so only the first of each counts.
  const first = (ch) => ws2.frames('subscribe').find((f) => f.channel === ch);
  await until('the new leader resubscribed both', () => first('a') && first('b'));
  assert.deepEqual(first('a'), { type: 'subscribe', channel: 'a', last_id: 'E-4' });
  assert.deepEqual(first('b'), { type: 'subscribe', channel: 'b', last_id: 'E-8' });
  ws2.push(note('b', 8));
  ws2.push(note('b', 9));
  // The server replays from the last id (overlap on purpose), then goes live.
  for (const o of [3, 4, 5, 6]) ws2.push(note('a', o));
  ws2.push(subscribed('a', 'E-6', true, 2));
  ws2.push(note('a', 7));
  await until('both tabs got the rest', () => r2.notes.length === 7 && r3.notes.length === 7 && r3b.notes.length === 2);
  await tick(20);
  assert.deepEqual(r3b.notes, ['E-8', 'E-9']);
  const want = ['E-1', 'E-2', 'E-3', 'E-4', 'E-5', 'E-6', 'E-7'];
  assert.deepEqual(r2.notes, want);
  assert.deepEqual(r3.notes, want);
  assert.equal(FakeWebSocket.all.length, 2);
});

test('a tab behind the connection resyncs from its own position', async () => {
  const t1 = tab();
  record(t1.subscribe('a'));
  const ws = await socket(1);
  ws.accept();
  ws.push(subscribed('a', 'E-0'));
  for (const o of [1, 2, 3]) ws.push(note('a', o));
  // A tab that kept E-1 (from storage, say) joins.
  const t2 = tab();
  const r2 = record(t2.subscribe('a', { lastId: 'E-1' }));
  await until('its resume request', () => ws.frames('subscribe').some((f) => f.last_id === 'E-1'));
  ws.push(note('a', 4)); // live, ahead of it: dropped, it waits for its replay
  for (const o of [2, 3, 4]) ws.push(note('a', o));
  ws.push(subscribed('a', 'E-4', true, 3));
  ws.push(note('a', 5));
  await until('its notifications', () => r2.notes.length === 4);
  await tick(20);
  assert.deepEqual(r2.notes, ['E-2', 'E-3', 'E-4', 'E-5']);
});

test('followers see the leader\'s state; a channel no tab wants any more is unsubscribed', async () => {
  const [t1, t2] = [tab(), tab()];
  const states = [];
  t2.on('state', (s) => states.push(s));
  t1.subscribe('a');
  const sub = t2.subscribe('b');
  const ws = await socket(1);
  ws.accept();
  await until('b subscribed', () => ws.frames('subscribe').some((f) => f.channel === 'b'));
  await until('the follower is open', () => t2.state === 'open');
  ws.end(1006);
  await until('the follower is reconnecting', () => t2.state === 'reconnecting');
  (await socket(2)).accept();
  await until('the follower is open again', () => t2.state === 'open');
  assert.deepEqual(states, ['open', 'reconnecting', 'open']);
  const ws2 = FakeWebSocket.all[1];
  assert.deepEqual(ws2.frames('subscribe').map((f) => f.channel), ['a', 'b']);
  sub.unsubscribe();
  await until('b unsubscribed', () => ws2.frames('unsubscribe').length === 1);
  assert.deepEqual(ws2.frames('unsubscribe'), [{ type: 'unsubscribe', channel: 'b' }]);
});
