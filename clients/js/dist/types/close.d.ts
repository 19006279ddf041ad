/**
 * What a close code asks of the client:
 * - `retry`: reconnect with back-off, resuming every channel from its last id
 *   (1001 going away, 1006 no close frame, 1011, 1013 overloaded, 4009, and
 *   any code not listed here);
 * - `now`: reconnect at once (4008: the client was too slow; nothing is lost);
 * - `token`: get a new token with `getToken`, then reconnect (4010);
 * - `stop`: retrying cannot help; report an error and stay closed
 *   (4000 bad request, 4001 authentication failed, 4003 forbidden,
 *   1008 policy, 1009 too big).
 */
export type CloseAction = 'retry' | 'now' | 'token' | 'stop';
export declare const closeAction: (code: number) => CloseAction;
