// Unit tests of the client's pure parts: back-off, close-code classes, token
// timing, cursors (dedupe, holes, gaps), the SSE cursor and parser.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BACKOFF_MAX, BACKOFF_MIN, backoff } from '../.build/backoff.js';
import { closeAction } from '../.build/close.js';
import { Cursor, parseId } from '../.build/cursor.js';
import { refreshDelay, tokenExpiry } from '../.build/token.js';
import { sseCursor, sseParser, statusCode } from '../.build/transport.js';

// Act values (a const enum inlined in the bundle).
const DROP = 0, DELIVER = 1, ASK = 2, GAP = 3;

test('back-off: full jitter between 0 and min(20 s, 0.5 s × 2^attempt)', () => {
  assert.equal(BACKOFF_MIN, 500);
  assert.equal(BACKOFF_MAX, 20_000);
  const top = (attempt) => backoff(attempt, () => 1);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map(top), [500, 1000, 2000, 4000, 8000, 16000, 20000, 20000]);
  assert.equal(top(1000), 20_000, 'no overflow far out');
  for (let attempt = 0; attempt < 10; attempt++) assert.equal(backoff(attempt, () => 0), 0, 'full jitter reaches 0');
  assert.equal(backoff(3, () => 0.25), 1000);
  for (let i = 0; i < 1000; i++) {
    const d = backoff(2);
    assert.ok(d >= 0 && d < 2000, `${d} out of [0, 2000)`);
  }
});

test('close codes by class', () => {
  for (const code of [1001, 1006, 1011, 1013, 4009, 1000, 1005, 3000, 4999]) assert.equal(closeAction(code), 'retry', `${code}`);
  assert.equal(closeAction(4008), 'now');
  assert.equal(closeAction(4010), 'token');
  for (const code of [4001, 4003, 1008, 4000, 1009]) assert.equal(closeAction(code), 'stop', `${code}`);
});

const jwt = (payload) =>
  ['{"alg":"HS256","typ":"JWT"}', JSON.stringify(payload)]
    .map((p) => Buffer.from(p).toString('base64url'))
    .join('.') + '.c2ln';

test('token expiry from the JWT payload', () => {
  assert.equal(tokenExpiry(jwt({ sub: '42', exp: 1_900_000_000 })), 1_900_000_000);
  // base64url characters (- and _) in the payload
  assert.equal(tokenExpiry(jwt({ sub: '>>>???', exp: 5 })), 5);
  assert.equal(tokenExpiry(jwt({ sub: '42' })), undefined, 'no exp');
  assert.equal(tokenExpiry(jwt({ exp: 'soon' })), undefined, 'exp not a number');
  for (const bad of [undefined, '', 'opaque-token', 'a.b.c', 'a..c']) assert.equal(tokenExpiry(bad), undefined, `${bad}`);
});

test('token refresh timing: a quarter of the time left, at most a minute, before expiry', () => {
  const now = 1_000_000_000_000;
  const exp = (ms) => (now + ms) / 1000;
  assert.equal(refreshDelay(exp(3_600_000), now), 3_540_000, 'an hour: a minute before');
  assert.equal(refreshDelay(exp(60_000), now), 45_000, 'a minute: 15 s before');
  assert.equal(refreshDelay(exp(2_000), now), 1_500);
  assert.equal(refreshDelay(exp(0), now), 0);
  assert.equal(refreshDelay(exp(-5_000), now), 0, 'expired: at once');
});

test('ids parse as <epoch>-<offset>', () => {
  assert.deepEqual(parseId('k3x9-42'), { e: 'k3x9', o: 42 });
  assert.deepEqual(parseId('A0-0'), { e: 'A0', o: 0 });
  for (const bad of [null, undefined, '', '42', '-42', 'e-', 'e-x', 'e-1.5', 'e--1', 'e-1e3', 'a-b-0', 'e-1234567890123456']) assert.equal(parseId(bad), undefined, `${bad}`);
});

const n = (epoch, offset) => ({ type: 'notification', epoch, offset, id: `${epoch}-${offset}` });

test('cursor: in order once, duplicates dropped by offset', () => {
  const c = new Cursor();
  assert.equal(c.id, undefined);
  assert.equal(c.note(n('e', 7)), DELIVER, 'the first notification starts the cursor');
  assert.equal(c.note(n('e', 8)), DELIVER);
  assert.equal(c.note(n('e', 8)), DROP, 'duplicate');
  assert.equal(c.note(n('e', 3)), DROP, 'older');
  assert.equal(c.id, 'e-8');
});

test('cursor: a hole asks for a resync once, and the replay fills it', () => {
  const c = new Cursor('e-2');
  assert.equal(c.note(n('e', 5)), ASK, 'a hole: resync');
  assert.equal(c.note(n('e', 6)), DROP, 'one resync at a time');
  assert.equal(c.sub({ position: 'e-6', recovered: true }), DROP, 'an answer to someone else, resync under way');
  for (const o of [3, 4, 5, 6]) assert.equal(c.note(n('e', o)), DELIVER, `replayed ${o}`);
  assert.equal(c.sub({ position: 'e-6', recovered: true }), DROP);
  assert.equal(c.a, false, 'caught up');
  assert.equal(c.note(n('e', 9)), ASK, 'a later hole asks again');
});

test('cursor: a subscribed position ahead of it, recovered, is someone else\'s answer: resync', () => {
  const c = new Cursor('e-2');
  assert.equal(c.sub({ position: 'e-9', recovered: true }), ASK);
  assert.equal(c.id, 'e-2', 'the position is not taken');
  const other = new Cursor('e-2');
  assert.equal(other.sub({ position: 'f-9', recovered: true }), ASK, 'another epoch, recovered: resync, the answer tells');
});

test('cursor: recovered false is a gap only for a cursor behind the position', () => {
  const lost = new Cursor('e-4');
  assert.equal(lost.sub({ position: 'f-0', recovered: false }), GAP, 'another epoch');
  assert.equal(lost.id, 'f-0');
  assert.equal(lost.note(n('f', 1)), DELIVER);
  const trimmed = new Cursor('e-4');
  assert.equal(trimmed.sub({ position: 'e-90', recovered: false }), GAP, 'history trimmed');
  assert.equal(trimmed.id, 'e-90');
  const current = new Cursor('e-4');
  assert.equal(current.sub({ position: 'e-4', recovered: false }), DROP, 'has everything up to the position');
  const fresh = new Cursor();
  assert.equal(fresh.sub({ position: 'e-12', recovered: true }), DROP);
  assert.equal(fresh.id, 'e-12', 'a fresh subscription takes the position');
  assert.equal(new Cursor('e-1').sub({ position: 'junk', recovered: false }), DROP);
});

test('cursor: another epoch without notice resyncs rather than delivering', () => {
  const c = new Cursor('e-4');
  assert.equal(c.note(n('f', 1)), ASK);
  assert.equal(c.sub({ position: 'f-1', recovered: false }), GAP);
  assert.equal(c.note(n('f', 1)), DROP);
  assert.equal(c.note(n('f', 2)), DELIVER);
});

test('SSE cursor: c1. + base64url without padding of {channel: id}', () => {
  const ids = { 'user:42': 'k3-17', 'tëam/7?': 'k3-2' };
  const cursor = sseCursor(ids);
  assert.match(cursor, /^c1\.[A-Za-z0-9_-]+$/);
  assert.deepEqual(JSON.parse(Buffer.from(cursor.slice(3), 'base64url').toString('utf8')), ids);
  assert.equal(sseCursor({ a: 'e-1' }), 'c1.' + Buffer.from('{"a":"e-1"}').toString('base64url'));
});

test('SSE parser: events across chunk boundaries, comments, CRLF, event types', () => {
  const got = [];
  const feed = sseParser((type, data) => got.push([type, data]));
  feed('retry: 1000\n: ping\n\nid: e-1\nda');
  feed('ta: {"a":1}\r\n\r');
  feed('\nevent: close\ndata:{"type":"close","code":4010}\n\n');
  feed('data: one\ndata: two\n');
  assert.deepEqual(got.slice(0, 2), [
    ['message', '{"a":1}'],
    ['close', '{"type":"close","code":4010}'],
  ]);
  feed('\n');
  assert.deepEqual(got[2], ['message', 'one\ntwo']);
  assert.equal(got.length, 3, 'a comment or a retry alone dispatches nothing');
});

test('SSE refusals map to close codes', () => {
  assert.deepEqual([400, 401, 403, 503, 500, 426, 404].map(statusCode), [4000, 4001, 4003, 1013, 1011, 1011, 1011]);
});
