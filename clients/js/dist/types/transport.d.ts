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
export declare function openWs(base: string, token: string | undefined, h: Handlers): Link;
/** The `c1.` cursor of an SSE stream: base64url (no padding) of `{channel: id}`. */
export declare function sseCursor(ids: Record<string, string>): string;
/** Close code for a refused stream without a `code` in its body. */
export declare const statusCode: (status: number) => number;
/**
 * An SSE line parser: feed it text as it arrives; it calls `event(type, data)`
 * at each blank line that ends an event with data. Comment lines and fields
 * other than `event` and `data` are ignored (ids and retries are the
 * client's business here).
 */
export declare function sseParser(event: (type: string, data: string) => void): (chunk: string) => void;
export declare function openSse(base: string, token: string | undefined, q: SseQuery, h: Handlers): Link;
