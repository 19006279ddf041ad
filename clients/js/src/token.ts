/** Longest time before expiry at which a token is refreshed, ms. */
export const REFRESH_LEAD_MAX = 60_000;

/** The `exp` claim (unix seconds) of a JWT, or undefined when it has none or is not a JWT. */
export function tokenExpiry(token: string | undefined): number | undefined {
  try {
    const part = token!.split('.')[1]!.replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(part)).exp;
    return typeof exp == 'number' ? exp : undefined;
  } catch {
    return undefined;
  }
}

/**
 * How long to wait before refreshing a token that expires at `exp` (unix
 * seconds): a quarter of the time left before expiry, at most one minute,
 * is kept as a margin for the round trip; 0 when that margin is already used up.
 */
export function refreshDelay(exp: number, now: number = Date.now()): number {
  const left = exp * 1000 - now;
  return Math.max(0, left - Math.min(REFRESH_LEAD_MAX, left / 4));
}
