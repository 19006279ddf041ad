/**
 * The two transports, behind one small interface. Both deliver the same
 * JSON frames; the connection (`conn.ts`) decides what to do with them.
 *
 * - WebSocket: `GET /notifications?defaults=false[&token=…]`; the client
 *   sends one `subscribe` frame per channel.
 * - Server-Sent Events over `fetch` streaming, not `EventSource`: fetch can
 *   send `Authorization: Bearer` (a token stays out of URLs and logs) and can
 *   read the status of a refused stream (401/403/400/503 and the close code
 *   in its JSON body), which EventSource hides. The client builds the
 *   resume cursor itself from its per-channel positions (`sseCursor`) and
 *   sends it as `last_id`, so it does not depend on `Last-Event-ID`.
 */

/** What a transport reports. `close` is called once, and not after `Link.close()`. */
export interface Handlers {
  open(): void;
  frame(f: any): void;
  /** Any bytes from the server (an SSE comment heartbeat too). */
  alive(): void;
  close(code: number, reason: string): void;
}

export interface Link {
  /** Send a frame (WebSocket only; false when it cannot). */
  send(f: object): boolean;
  /** Close without reporting it. */
  close(): void;
}

/** What an SSE stream asks for: channels, their positions, a rewind for channels without one. */
export interface SseQuery {
  channels: string[];
  ids: Record<string, string>;
  rewind?: number | undefined;
}

const url = (base: string, scheme: 'ws' | 'http', params: [string, string][]): URL => {
  const u = new URL(base, globalThis.location?.href);
  u.protocol = u.protocol.replace(/^(ws|http)/, scheme);
  for (const [k, v] of params) u.searchParams.append(k, v);
  return u;
};

/** A frame is a JSON object; anything else is not herald's and is ignored. */
function parse(text: unknown): any {
  try {
    const f = JSON.parse(text as string);
    return f && typeof f == 'object' ? f : undefined;
  } catch {
    return undefined;
  }
}

export function openWs(base: string, token: string | undefined, h: Handlers): Link {
  const s = new WebSocket(url(base, 'ws', token ? [['defaults', 'false'], ['token', token]] : [['defaults', 'false']]));
  s.onopen = h.open;
  s.onmessage = (e) => {
    h.alive();
    const f = parse(e.data);
    if (f) h.frame(f);
  };
  s.onclose = (e) => h.close(e.code, e.reason);
  return {
    send: (f) => s.readyState == 1 && (s.send(JSON.stringify(f)), true),
    close() {
      s.onclose = s.onmessage = s.onopen = null;
      s.close();
    },
  };
}

/** The `c1.` cursor of an SSE stream: base64url (no padding) of `{channel: id}`. */
export function sseCursor(ids: Record<string, string>): string {
  let bin = '';
  for (const b of new TextEncoder().encode(JSON.stringify(ids))) bin += String.fromCharCode(b);
  return 'c1.' + btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** Close code for a refused stream without a `code` in its body. */
export const statusCode = (status: number): number =>
  ({ 400: 4000, 401: 4001, 403: 4003, 503: 1013 } as Record<number, number>)[status] || 1011;

/**
 * An SSE line parser: feed it text as it arrives; it calls `event(type, data)`
 * at each blank line that ends an event with data. Comment lines and fields
 * other than `event` and `data` are ignored (ids and retries are the
 * client's business here).
 */
export function sseParser(event: (type: string, data: string) => void): (chunk: string) => void {
  let buf = '';
  let type = '';
  let data: string[] = [];
  return (chunk) => {
    const lines = (buf + chunk).split(/\r\n|\r|\n/);
    buf = lines.pop()!;
    for (const line of lines) {
      if (!line) {
        if (data.length) event(type || 'message', data.join('\n'));
        type = '';
        data = [];
        continue;
      }
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(line[i + 1] == ' ' ? i + 2 : i + 1);
      if (field == 'event') type = value;
      else if (field == 'data') data.push(value);
    }
  };
}

export function openSse(base: string, token: string | undefined, q: SseQuery, h: Handlers): Link {
  const params: [string, string][] = [['defaults', 'false'], ...q.channels.map((c): [string, string] => ['channel', c])];
  if (Object.keys(q.ids).length) params.push(['last_id', sseCursor(q.ids)]);
  if (q.rewind) params.push(['rewind', String(q.rewind)]);
  const abort = new AbortController();
  let done = false;
  const end = (code: number, reason: string) => {
    if (!done) {
      done = true;
      abort.abort();
      h.close(code, reason);
    }
  };
  const feed = sseParser((type, data) => {
    const f = parse(data);
    if (f) type == 'close' ? end(f.code, f.reason) : type == 'message' && h.frame(f);
  });
  (async () => {
    const res = await fetch(url(base, 'http', params), {
      headers: token ? { accept: 'text/event-stream', authorization: 'Bearer ' + token } : { accept: 'text/event-stream' },
      cache: 'no-store',
      signal: abort.signal,
    });
    if (!res.ok || !res.body) {
      const body = await res.json().catch(() => ({}));
      return end(body.code || statusCode(res.status), body.error || `HTTP ${res.status}`);
    }
    h.open();
    const reader = res.body.getReader();
    const text = new TextDecoder();
    for (let r; !(r = await reader.read()).done && !done; ) {
      h.alive();
      feed(text.decode(r.value, { stream: true }));
    }
    end(1006, 'stream ended');
  })().catch((e) => end(1006, String(e)));
  return {
    send: () => false,
    close() {
      done = true;
      abort.abort();
    },
  };
}
