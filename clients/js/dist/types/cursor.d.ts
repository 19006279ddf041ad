/**
 * One channel's position, and what each frame does to it.
 *
 * Within an epoch a channel's offsets are consecutive (the server fills a
 * hole from its log or says `recovered: false`), so a notification is
 * delivered only when it is the next one: an offset already passed is a
 * duplicate (a replay overlapping what was seen), a later one is a hole that
 * a resync fills. A hole happens when this cursor is behind the stream it
 * reads: a tab that joined a shared connection, a server that joined a
 * default channel before the client's own `subscribe` with `last_id` was
 * answered. The resync is a `subscribe` with this cursor's id, whose replay
 * starts at the next offset.
 */
/** A position: epoch and offset. */
export interface Pos {
    e: string;
    o: number;
}
/** `<epoch>-<offset>` (an alphanumeric epoch, as the server checks) → position; undefined when malformed. */
export declare function parseId(id: string | null | undefined): Pos | undefined;
export declare const idOf: (p: Pos) => string;
/** What a frame asks of the subscription, beyond delivering it. */
export declare const enum Act {
    Drop = 0,
    Deliver = 1,
    /** Resync: subscribe again from this cursor. */
    Ask = 2,
    /** The server reports notifications this cursor will never see. */
    Gap = 3
}
export declare class Cursor {
    /** The last position seen; undefined before the first. */
    p: Pos | undefined;
    /** A resync is under way: later holes need no second one. */
    a: boolean;
    constructor(id?: string | null);
    get id(): string | undefined;
    /** A notification. */
    note(n: {
        epoch: string;
        offset: number;
    }): Act;
    /**
     * A `subscribed` frame, answering this cursor's subscription or another
     * one on the same connection. `recovered: false` is a gap only for a
     * cursor that has not seen everything up to `position`; a position ahead
     * of this cursor with `recovered: true` answers someone else, and this
     * cursor resyncs.
     */
    sub(f: {
        position: string;
        recovered: boolean;
    }): Act;
    private ask;
}
