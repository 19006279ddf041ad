/** Shortest ceiling of the reconnect delay (the first retry), ms. */
export declare const BACKOFF_MIN = 500;
/** Longest reconnect delay, ms. */
export declare const BACKOFF_MAX = 20000;
/**
 * Full-jitter back-off: a delay drawn uniformly from
 * [0, min(20 s, 0.5 s × 2^attempt)). Spreading reconnects over the whole
 * window keeps a restarted server from being hit by every client at once.
 */
export declare const backoff: (attempt: number, random?: () => number) => number;
