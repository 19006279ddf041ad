/** Shortest ceiling of the reconnect delay (the first retry), ms. */
export const BACKOFF_MIN = 500;
/** Longest reconnect delay, ms. */
export const BACKOFF_MAX = 20_000;

/**
 * Full-jitter back-off: a delay drawn uniformly from
 * [0, min(20 s, 0.5 s × 2^attempt)). Spreading reconnects over the whole
 * window keeps a restarted server from being hit by every client at once.
 */
export const backoff = (attempt: number, random: () => number = Math.random): number =>
  random() * Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** attempt);
