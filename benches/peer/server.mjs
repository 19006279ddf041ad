// The comparison peer for herald-bench: the usual alternative to herald, a
// small Node.js broadcast server on the `ws` package, speaking enough of
// herald's protocol for the same load generator to drive both.
//
//   node server.mjs --port 9090 [--host 127.0.0.1]
//                   [--kafka-brokers H:P --kafka-topic T --kafka-group G]
//
// - `GET /notifications?channel=a&channel=b` upgrades to WebSocket; the
//   client gets one `subscribed` frame per channel, then live notifications
//   (no replay: the peer keeps no history, `last_id` is ignored);
// - `POST /events/{topic}` takes one JSON object or an array of objects and
//   answers 202 once every notification has been handed to `ws`; the
//   channel follows herald's built-in rule (`channel`, else
//   `user:{user_id}`, else `broadcast`);
// - each notification is one JSON text frame shaped like herald's, with a
//   per-channel `offset`, serialized once and encoded to bytes once, then
//   sent to every subscriber (the fast way to broadcast with `ws`);
// - with `--kafka-*`, a kafkajs consumer (a new group reads the topic from
//   the beginning) publishes each message's JSON event the same way, batch
//   by batch: the peer of herald's Kafka source in the e2e scenario. It
//   starts on `POST /consume`, once the generator's clients are connected
//   (the peer keeps no history for a late client to resume from);
// - `GET /stats` answers `{"events": N}`, the events published so far (the
//   generator times a backlog's consumption with it).
//
// It prints `listening <port>` on stdout when ready.

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { WebSocketServer } from 'ws';
import kafkajs from 'kafkajs';

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && i + 1 < args.length ? args[i + 1] : fallback;
};
const port = Number(arg('port', '9090'));
const host = arg('host', '127.0.0.1');
const maxBody = 1024 * 1024;
const kafkaBrokers = arg('kafka-brokers', '');
const kafkaTopic = arg('kafka-topic', '');
const kafkaGroup = arg('kafka-group', '');

const epoch = randomBytes(8).toString('hex');
/** channel -> { offset, clients: Set<WebSocket> } */
const channels = new Map();
/** Events published (HTTP and Kafka), and Kafka messages that were not JSON objects. */
let published = 0;
let rejected = 0;

function channelOf(name) {
  let c = channels.get(name);
  if (!c) {
    c = { offset: 0, clients: new Set() };
    channels.set(name, c);
  }
  return c;
}

function route(event) {
  if (typeof event.channel === 'string' && event.channel) return event.channel;
  if (event.user_id !== undefined && event.user_id !== null) return `user:${event.user_id}`;
  return 'broadcast';
}

function publish(event) {
  published += 1;
  const name = route(event);
  const c = channelOf(name);
  c.offset += 1;
  const frame = Buffer.from(JSON.stringify({
    type: 'notification',
    id: `${epoch}-${c.offset}`,
    channel: name,
    offset: c.offset,
    epoch,
    time: new Date().toISOString(),
    event: typeof event.type === 'string' ? event.type : '',
    title: event.title ?? event.type ?? '',
    body: event.body ?? event.type ?? '',
    data: event.data && typeof event.data === 'object' && !Array.isArray(event.data) ? event.data : {},
    priority: 'normal',
  }));
  for (const ws of c.clients) {
    if (ws.readyState === 1) ws.send(frame, { binary: false });
  }
  return 1;
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://peer');
  const m = /^\/events\/([^/]+)$/.exec(url.pathname);
  if (req.method !== 'POST' || !m) {
    if (url.pathname === '/healthz') return reply(res, 200, { ok: true });
    if (url.pathname === '/stats') return reply(res, 200, { events: published, rejected });
    if (url.pathname === '/consume' && req.method === 'POST' && startConsumer) {
      startConsumer();
      return reply(res, 202, { consuming: true });
    }
    return reply(res, 404, { error: 'not found' });
  }
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > maxBody) {
      reply(res, 413, { error: 'body too large' });
      req.destroy();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (size > maxBody) return;
    let parsed;
    try {
      parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (e) {
      return reply(res, 400, { error: `invalid JSON: ${e.message}` });
    }
    const events = Array.isArray(parsed) ? parsed : [parsed];
    if (events.some((e) => e === null || typeof e !== 'object' || Array.isArray(e))) {
      return reply(res, 400, { error: 'expected a JSON object or an array of objects' });
    }
    let notifications = 0;
    for (const e of events) notifications += publish(e);
    reply(res, 202, { events: events.length, notifications, duplicates: 0, failed_rules: 0 });
  });
});

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 64 * 1024 });

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://peer');
  if (url.pathname !== '/notifications') {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    let names = url.searchParams.getAll('channel');
    if (names.length === 0) names = ['broadcast'];
    const joined = names.map(channelOf);
    for (const c of joined) c.clients.add(ws);
    ws.on('close', () => {
      for (const c of joined) c.clients.delete(ws);
    });
    ws.on('error', () => ws.terminate());
    ws.on('message', (data) => {
      // Answer application pings like herald; ignore everything else.
      if (data.length < 64 && data.toString().includes('"ping"')) ws.send('{"type":"pong"}');
    });
    for (let i = 0; i < names.length; i++) {
      ws.send(JSON.stringify({
        type: 'subscribed',
        channel: names[i],
        replayed: 0,
        recovered: true,
        position: `${epoch}-${joined[i].offset}`,
      }));
    }
  });
});

// Keep producer connections open while a throughput run waits for its
// clients (Node's default closes idle ones after 5 s).
server.keepAliveTimeout = 60_000;

server.listen(port, host, () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});

// The Kafka consumer: timeouts as herald's bench configuration sets them
// (a quick group join on Tansu), the topic from its first offset.
let consumer = null;
let startConsumer = null;
if (kafkaBrokers && kafkaTopic && kafkaGroup) {
  const kafka = new kafkajs.Kafka({
    clientId: 'herald-bench-peer',
    brokers: kafkaBrokers.split(','),
    logLevel: kafkajs.logLevel.WARN,
  });
  consumer = kafka.consumer({
    groupId: kafkaGroup,
    sessionTimeout: 6000,
    rebalanceTimeout: 10000,
    heartbeatInterval: 1000,
  });
  const start = async () => {
    await consumer.connect();
    await consumer.subscribe({ topics: [kafkaTopic], fromBeginning: true });
    await consumer.run({
      eachBatch: async ({ batch }) => {
        for (const m of batch.messages) {
          let event;
          try {
            event = JSON.parse(m.value.toString('utf8'));
          } catch {
            rejected += 1;
            continue;
          }
          if (event === null || typeof event !== 'object' || Array.isArray(event)) {
            rejected += 1;
            continue;
          }
          publish(event);
        }
      },
    });
  };
  let started = false;
  startConsumer = () => {
    if (started) return;
    started = true;
    start().catch((e) => {
      process.stderr.write(`kafka consumer: ${e.stack ?? e}\n`);
      process.exit(1);
    });
  };
}

const stop = () => {
  for (const ws of wss.clients) ws.terminate();
  // Leave the group before exiting, so the topic can be deleted after.
  const left = consumer ? consumer.disconnect().catch(() => {}) : Promise.resolve();
  left.then(() => server.close(() => process.exit(0)));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
