/** Longest time before expiry at which a token is refreshed, ms. */
export declare const REFRESH_LEAD_MAX = 60000;
/** The `exp` claim (unix seconds) of a JWT, or undefined when it has none or is not a JWT. */
export declare function tokenExpiry(token: string | undefined): number | undefined;
/**
 * How long to wait before refreshing a token that expires at `exp` (unix
 * seconds): a quarter of the time left before expiry, at most one minute,
 * is kept as a margin for the round trip; 0 when that margin is already used up.
 */
export declare function refreshDelay(exp: number, now?: number): number;
