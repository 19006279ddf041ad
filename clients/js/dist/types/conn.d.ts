import type { ClientError, Options, State, StateDetail } from './index.js';
/** A tab's request for a channel: `l` resume from this id, else `r` rewind. */
export interface Want {
    w: string;
    i: string;
    l?: string | undefined;
    r?: number | undefined;
}
/** Where the connection's frames and states go. */
export interface Out {
    frame(f: any): void;
    state(s: State, d?: StateDetail): void;
    error(e: ClientError): void;
}
/** WebSocket attempts that never open before `auto` tries SSE. */
export declare const WS_FAILURES_BEFORE_SSE = 3;
export declare class Conn {
    private url;
    private o;
    private out;
    state: State;
    private ch;
    private link;
    private up;
    /** Failed attempts since the last frame: drives the back-off. */
    private n;
    /** WebSocket attempts in a row that never opened. */
    private fails;
    private sse;
    private token;
    /** A token sent in `refresh`, not yet confirmed. */
    private pending;
    private noRefresh;
    private timers;
    private retry;
    private last;
    private restart;
    /** A channel was wanted while the stream was opening without it. */
    private stale;
    private onOnline;
    private onOffline;
    constructor(url: string, o: Options, out: Out);
    /**
     * A tab wants a channel. Each want is sent to the server, also for a
     * channel already subscribed: its `subscribed` answer gives a tab that
     * joins a flowing channel its position, and a `last_id` older than the
     * connection's replays what that tab has not seen (the others drop it).
     */
    want(m: Want): void;
    unwant(m: {
        u: string;
        i: string;
    }): void;
    close(): void;
    private sub;
    /** Reopen the SSE stream soon, once for a burst of changes. */
    private reopen;
    private set;
    private stop;
    private connect;
    private opened;
    /** Before the token expires: refresh it over the socket, or reconnect with a new one. */
    private scheduleRefresh;
    private frame;
    /** End the current link ourselves and handle it like a close with `code`. */
    private drop;
    private closed;
    private fail;
    private online;
}
