// The client against a fake WebSocket (and a fake SSE fetch) played by the
// tests as the server: subscriptions, resume after reconnects, dedupe,
// holes, gaps, close codes, token refresh, liveness, the SSE fallback.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, test } from 'node:test';
import { connect } from '../.build/index.js';
import { WS_FAILURES_BEFORE_SSE } from '../.build/conn.js';
import { FakeWebSocket, events, fakeFetch, install, note, record, socket, subscribed, tick, until } from './fakes.mjs';

const URL_ = 'ws://herald.test/notifications';
let client;
beforeEach(() => install());
afterEach(() => client?.close());

const open = (options = {}) => (client = connect(URL_, { shareAcrossTabs: false, ...options }));

test('connects with defaults=false and subscribes each channel with its own rewind or last id', async () => {
  open();
  const states = [];
  client.on('state', (s) => states.push(s));
  client.subscribe('a', { rewind: 20 });
  client.subscribe('b', { lastId: 'E-5', rewind: 3 });
  assert.equal(client.subscribe('a'), client.subscribe('a'), 'one subscription per channel');
  const ws = await socket(1);
  assert.equal(ws.url.pathname, '/notifications');
  assert.equal(ws.url.searchParams.get('defaults'), 'false');
  assert.equal(ws.url.searchParams.get('token'), null);
  assert.equal(client.state, 'connecting');
  ws.accept();
  assert.deepEqual(ws.frames('subscribe'), [
    { type: 'subscribe', channel: 'a', rewind: 20 },
    { type: 'subscribe', channel: 'b', last_id: 'E-5' },
  ]);
  assert.deepEqual(states, ['open']);
});

test('a token goes in the query; channels subscribed while open are sent at once', async () => {
  open({ token: 't0k' });
  const ws = await socket(1);
  assert.equal(ws.url.searchParams.get('token'), 't0k');
  ws.accept();
  client.subscribe('late');
  assert.deepEqual(ws.frames('subscribe'), [{ type: 'subscribe', channel: 'late' }]);
  client.subscribe('late').unsubscribe();
  assert.deepEqual(ws.frames('unsubscribe'), [{ type: 'unsubscribe', channel: 'late' }]);
});

test('ignores channels it did not subscribe; survives an error frame answering an unknown frame', async () => {
  open();
  const a = record(client.subscribe('a'));
  const errors = [];
  client.on('error', (e) => errors.push(e));
  const ws = await socket(1);
  ws.accept();
  // Today's server joins broadcast even with defaults=false.
  ws.push(subscribed('broadcast', 'E-40'));
  ws.push(note('broadcast', 41));
  ws.push({ type: 'error', code: 'bad_frame', message: 'invalid frame: unknown variant `refresh`' });
  ws.push('not json');
  ws.push(subscribed('a', 'E-0'));
  ws.push(note('a', 1));
  assert.deepEqual(a.notes, ['E-1']);
  assert.deepEqual(errors, [{ code: 'bad_frame', message: 'invalid frame: unknown variant `refresh`' }]);
  assert.equal(client.state, 'open');
  assert.equal(FakeWebSocket.all.length, 1, 'no reconnect');
});

test('a rewind answered with replayed: 0 is fine (a server without rewind)', async () => {
  open();
  const a = record(client.subscribe('a', { rewind: 20 }));
  const ws = await socket(1);
  ws.accept();
  ws.push(subscribed('a', 'E-7', true, 0));
  ws.push(note('a', 8));
  assert.deepEqual(a.notes, ['E-8']);
  assert.deepEqual(a.gaps, []);
});

test('after a reconnect every channel resumes from its own last id; duplicates are dropped', async () => {
  open();
  const a = record(client.subscribe('a'));
  const b = record(client.subscribe('b', { rewind: 5 }));
  const states = [];
  client.on('state', (s, d) => states.push([s, d?.code]));
  const ws = await socket(1);
  ws.accept();
  ws.push(subscribed('a', 'E-0'));
  ws.push(subscribed('b', 'F-6'));
  for (const o of [1, 2, 3]) ws.push(note('a', o));
  ws.push(note('b', 7, 'F'));
  ws.end(1006);
  const ws2 = await socket(2);
  ws2.accept();
  assert.deepEqual(ws2.frames('subscribe'), [
    { type: 'subscribe', channel: 'a', last_id: 'E-3' },
    { type: 'subscribe', channel: 'b', last_id: 'F-7' },
  ]);
  for (const o of [2, 3, 4]) ws2.push(note('a', o)); // a replay overlapping what was seen
  ws2.push(subscribed('a', 'E-4', true, 3));
  ws2.push(note('a', 4));
  ws2.push(note('a', 5));
  ws2.push(subscribed('b', 'F-7'));
  ws2.push(note('b', 8, 'F'));
  assert.deepEqual(a.notes, ['E-1', 'E-2', 'E-3', 'E-4', 'E-5']);
  assert.deepEqual(b.notes, ['F-7', 'F-8']);
  assert.equal(client.subscribe('a').lastId, 'E-5');
  assert.deepEqual(states, [['open', undefined], ['reconnecting', 1006], ['open', undefined]]);
});

test('a live notification ahead of the replay is a hole: resync from the last id, deliver in order', async () => {
  // Today's server: the default join of broadcast sends live notifications
  // before the client's own subscribe with last_id is answered.
  open();
  const b = record(client.subscribe('broadcast', { lastId: 'E-2' }));
  const ws = await socket(1);
  ws.accept();
  ws.push(subscribed('broadcast', 'E-4')); // the default join's answer: ahead of E-2
  ws.push(note('broadcast', 5)); // live, ahead of E-2
  assert.deepEqual(ws.frames('subscribe'), [
    { type: 'subscribe', channel: 'broadcast', last_id: 'E-2' },
    { type: 'subscribe', channel: 'broadcast', last_id: 'E-2' },
  ], 'one resync, not one per frame');
  for (const o of [3, 4, 5]) ws.push(note('broadcast', o));
  ws.push(subscribed('broadcast', 'E-5', true, 3));
  for (const o of [3, 4, 5]) ws.push(note('broadcast', o)); // the resync's replay
  ws.push(subscribed('broadcast', 'E-5', true, 3));
  ws.push(note('broadcast', 6));
  assert.deepEqual(b.notes, ['E-3', 'E-4', 'E-5', 'E-6']);
  assert.deepEqual(b.gaps, []);
});

test('recovered: false fires gap with the last id and the new position', async () => {
  open();
  const a = record(client.subscribe('a', { lastId: 'E-9' }));
  const ws = await socket(1);
  ws.accept();
  ws.push(subscribed('a', 'N-0', false)); // the server lost its history (memory store restarted)
  ws.push(note('a', 1, 'N'));
  assert.deepEqual(a.gaps, [{ channel: 'a', lastId: 'E-9', position: 'N-0' }]);
  assert.deepEqual(a.notes, ['N-1']);
});

test('positions persist in storage and a stored id resumes', async () => {
  const map = new Map();
  const storage = { getItem: (k) => map.get(k) ?? null, setItem: (k, v) => map.set(k, v) };
  open({ storage });
  client.subscribe('a');
  let ws = await socket(1);
  ws.accept();
  ws.push(subscribed('a', 'E-3'));
  ws.push(note('a', 4));
  client.close();
  assert.deepEqual([...map.values()], ['E-4']);
  open({ storage });
  client.subscribe('a', { rewind: 20 });
  ws = await socket(2);
  ws.accept();
  assert.deepEqual(ws.frames('subscribe'), [{ type: 'subscribe', channel: 'a', last_id: 'E-4' }]);
});

for (const code of [4001, 4003, 1008, 4000, 1009]) {
  test(`close ${code} stops and reports an error`, async () => {
    open();
    const errors = [];
    client.on('error', (e) => errors.push(e));
    client.subscribe('a');
    const ws = await socket(1);
    ws.accept();
    ws.end(code, 'no');
    await tick(20);
    assert.equal(client.state, 'closed');
    assert.deepEqual(errors, [{ code, message: 'no' }]);
    assert.equal(FakeWebSocket.all.length, 1);
  });
}

for (const code of [1001, 1006, 1011, 1013, 4008, 4009]) {
  test(`close ${code} reconnects`, async () => {
    open();
    client.subscribe('a');
    const ws = await socket(1);
    ws.accept();
    ws.end(code);
    assert.equal(client.state, 'reconnecting');
    (await socket(2)).accept();
    assert.equal(client.state, 'open');
  });
}

test('back-off grows while attempts fail and resets on the first frame', async () => {
  install({ random: 0.999 });
  open({ transport: 'websocket' });
  const delays = [];
  client.on('state', (s, d) => s === 'reconnecting' && delays.push(Math.round(d.delay)));
  client.subscribe('a');
  // `online` skips each wait, so the test does not sit out the delays.
  for (let i = 1; i <= 4; i++) {
    (await socket(i)).end(1006); // never opened
    await until(`delay #${i}`, () => delays.length === i);
    events.dispatchEvent(new Event('online'));
  }
  const ws = await socket(5);
  ws.accept();
  ws.push(subscribed('a', 'E-0'));
  ws.end(1006);
  await until('delay after a frame', () => delays.length === 5);
  assert.deepEqual(delays, [500, 999, 1998, 3996, 500]);
});

test('4008 reconnects at once; the online event cuts a back-off short', async () => {
  install({ random: 0.999 });
  open();
  client.subscribe('a');
  let ws = await socket(1);
  ws.accept();
  ws.end(4008, 'too slow');
  ws = await socket(2); // no back-off: would be up to 0.5 s
  ws.accept();
  ws.push(subscribed('a', 'E-1'));
  ws.end(1001);
  const t0 = Date.now();
  await tick(20);
  assert.equal(FakeWebSocket.all.length, 2, 'waiting out the back-off');
  events.dispatchEvent(new Event('online'));
  await socket(3);
  assert.ok(Date.now() - t0 < 300, 'the online event reconnected at once');
});

test('4010 gets a new token, then reconnects with it; without getToken it stops', async () => {
  let n = 0;
  open({ token: 'old', getToken: async () => `new${++n}` });
  client.subscribe('a');
  const ws = await socket(1);
  ws.accept();
  ws.end(4010, 'token expired');
  const ws2 = await socket(2);
  assert.equal(ws2.url.searchParams.get('token'), 'new1');
  client.close();

  open({ token: 'old' });
  const errors = [];
  client.on('error', (e) => errors.push(e.code));
  const ws3 = await socket(3);
  ws3.accept();
  ws3.end(4010);
  await tick(20);
  assert.deepEqual(errors, [4010]);
  assert.equal(client.state, 'closed');
});

test('getToken is called when there is no token', async () => {
  open({ getToken: () => 'fresh' });
  assert.equal((await socket(1)).url.searchParams.get('token'), 'fresh');
});

const jwt = (exp) => ['{"alg":"HS256"}', JSON.stringify({ sub: '1', exp })].map((p) => Buffer.from(p).toString('base64url')).join('.') + '.x';

test('the token is refreshed over the socket before it expires', async () => {
  const soon = () => jwt(Date.now() / 1000 + 0.2); // refresh due in ~150 ms
  const first = soon();
  let second;
  open({ token: first, getToken: () => (second = soon()) });
  const ws = await socket(1);
  assert.equal(ws.url.searchParams.get('token'), first);
  ws.accept();
  const refresh = await until('a refresh frame', () => ws.frames('refresh')[0]);
  assert.deepEqual(refresh, { type: 'refresh', token: second });
  ws.push({ type: 'refreshed', expires_at: Math.floor(Date.now() / 1000) });
  await until('a second refresh, scheduled from the new token', () => ws.frames('refresh').length === 2);
  assert.equal(FakeWebSocket.all.length, 1, 'no reconnect');
});

test('a server that cannot refresh (error frame) gets a reconnect with the new token', async () => {
  const soon = () => jwt(Date.now() / 1000 + 0.2);
  let fresh;
  open({ token: soon(), getToken: () => (fresh = soon()) });
  client.subscribe('a');
  const ws = await socket(1);
  ws.accept();
  ws.push(subscribed('a', 'E-2'));
  await until('a refresh frame', () => ws.frames('refresh')[0]);
  ws.push({ type: 'error', code: 'bad_frame', message: 'invalid frame: unknown variant `refresh`' });
  const ws2 = await socket(2);
  assert.ok(ws.closedByClient);
  assert.equal(ws2.url.searchParams.get('token'), fresh);
  ws2.accept();
  assert.deepEqual(ws2.frames('subscribe'), [{ type: 'subscribe', channel: 'a', last_id: 'E-2' }]);
  // Next time it does not try the socket again.
  await until('a third connection for the next refresh', () => FakeWebSocket.all.length === 3);
  assert.deepEqual(ws2.frames('refresh'), []);
});

test('liveness: a link with no answer to ping is dropped and reconnected', async () => {
  open({ pingInterval: 30 });
  const ws = await socket(1);
  ws.accept();
  await until('a ping', () => ws.frames('ping').length === 1);
  ws.push({ type: 'pong' });
  await until('a second ping', () => ws.frames('ping').length === 2);
  // silence now
  await socket(2);
  assert.ok(ws.closedByClient);
});

test('the offline event drops the link; online reconnects at once', async () => {
  install({ random: 0.999 });
  open();
  client.subscribe('a');
  const ws = await socket(1);
  ws.accept();
  navigator.onLine = false;
  events.dispatchEvent(new Event('offline'));
  assert.ok(ws.closedByClient);
  assert.equal(client.state, 'reconnecting');
  navigator.onLine = true;
  events.dispatchEvent(new Event('online'));
  await socket(2);
});

test('auto: after repeated WebSocket failures the client falls back to SSE with a cursor per channel', async () => {
  const { fetch, calls } = fakeFetch();
  globalThis.fetch = fetch;
  open({ token: 'tok' });
  const a = record(client.subscribe('a', { lastId: 'E-4' }));
  const b = record(client.subscribe('b', { rewind: 10 }));
  for (let i = 1; i <= WS_FAILURES_BEFORE_SSE; i++) (await socket(i)).end(1006);
  const call = await until('an SSE request', () => calls[0]);
  assert.equal(FakeWebSocket.all.length, WS_FAILURES_BEFORE_SSE);
  assert.equal(call.url.protocol, 'http:');
  assert.equal(call.init.headers.accept, 'text/event-stream');
  assert.equal(call.init.headers.authorization, 'Bearer tok');
  const q = call.url.searchParams;
  assert.equal(q.get('token'), null, 'the token is a header, not in the URL');
  assert.deepEqual(q.getAll('channel'), ['a', 'b']);
  assert.equal(q.get('defaults'), 'false');
  assert.equal(q.get('rewind'), '10');
  assert.deepEqual(JSON.parse(Buffer.from(q.get('last_id').slice(3), 'base64url')), { a: 'E-4' });
  await until('open', () => client.state === 'open');
  call.write('retry: 1000\n\n: ping\n\n');
  call.frame(note('a', 5));
  call.frame(subscribed('a', 'E-5', true, 1));
  call.frame(note('b', 3));
  call.frame(subscribed('b', 'E-3'));
  call.frame(note('b', 4));
  await until('notifications', () => b.notes.length === 2);
  assert.deepEqual(a.notes, ['E-5']);
  assert.deepEqual(b.notes, ['E-3', 'E-4']);
  // The server ends the stream: the next one resumes both channels.
  call.write('event: close\ndata: {"type":"close","code":1001,"reason":"shutting down"}\n\n');
  const next = await until('a second SSE request', () => calls[1]);
  assert.deepEqual(JSON.parse(Buffer.from(next.url.searchParams.get('last_id').slice(3), 'base64url')), { a: 'E-5', b: 'E-4' });
  assert.equal(next.url.searchParams.get('rewind'), null);
  // A channel subscribed later reopens the stream with it.
  await until('open', () => client.state === 'open');
  client.subscribe('c');
  const third = await until('a third SSE request', () => calls[2]);
  assert.deepEqual(third.url.searchParams.getAll('channel'), ['a', 'b', 'c']);
});

test('sse: a channel subscribed while the first stream is opening reopens it with the channel', async () => {
  const { fetch, calls } = fakeFetch();
  globalThis.fetch = fetch;
  open({ transport: 'sse' });
  // The stream is asked for at once, before the subscription exists, and
  // the subscription comes before that stream opens.
  const a = record(client.subscribe('a', { rewind: 5 }));
  const first = await until('an SSE request', () => calls[0]);
  assert.deepEqual(first.url.searchParams.getAll('channel'), []);
  const second = await until('a stream with the channel', () => calls[1]);
  assert.deepEqual(second.url.searchParams.getAll('channel'), ['a']);
  assert.equal(second.url.searchParams.get('rewind'), '5');
  second.frame(note('a', 1));
  await until('the notification', () => a.notes.length === 1);
});

test('sse: a refused stream reports its close code', async () => {
  const { calls } = fakeFetch();
  globalThis.fetch = async () => {
    calls.push(1);
    return new Response(JSON.stringify({ error: 'bad token', code: 4001 }), { status: 401 });
  };
  open({ transport: 'sse' });
  const errors = [];
  client.on('error', (e) => errors.push(e));
  client.subscribe('a');
  await until('closed', () => client.state === 'closed');
  assert.deepEqual(errors, [{ code: 4001, message: 'bad token' }]);
});

test('a listener that throws does not stop the others or the client', async () => {
  // The client rethrows a listener's error from a timer of its own; catch it there.
  const thrown = [];
  const realSetTimeout = globalThis.setTimeout;
  globalThis.setTimeout = (fn, ms) => realSetTimeout(() => {
    try {
      fn();
    } catch (e) {
      thrown.push(e.message);
    }
  }, ms);
  try {
    open();
    const sub = client.subscribe('a');
    const seen = [];
    sub.on('notification', () => {
      throw new Error('app bug');
    });
    sub.on('notification', (n) => seen.push(n.id));
    const ws = await socket(1);
    ws.accept();
    ws.push(note('a', 1));
    ws.push(note('a', 2));
    ws.push(5);
    assert.deepEqual(seen, ['E-1', 'E-2']);
    await until('the errors rethrown', () => thrown.length === 2);
    assert.deepEqual(thrown, ['app bug', 'app bug']);
    assert.equal(client.state, 'open');
  } finally {
    globalThis.setTimeout = realSetTimeout;
  }
});
