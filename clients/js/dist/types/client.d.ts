import { Emitter } from './emitter.js';
import type { ClientEvents, State, SubscribeOptions, SubscriptionEvents } from './index.js';
export declare class Subscription extends Emitter<SubscriptionEvents> {
    private client;
    readonly channel: string;
    /** The id of the last notification delivered (or the position confirmed), to resume from. */
    get lastId(): string | null;
    unsubscribe(): void;
}
export declare class Client extends Emitter<ClientEvents> {
    private url;
    private o;
    state: State;
    private subs;
    private conn;
    private bc;
    private tab;
    private lock;
    private release;
    /** Subscribe to `channel`; subscribing again to the same channel returns the same subscription. */
    subscribe(channel: string, options?: SubscribeOptions): Subscription;
    /** Close for good (the next tab takes over a shared connection). */
    close(): void;
    private key;
    /** This tab holds the lock (or shares nothing): open the connection. */
    private lead;
    private want;
    /** To the connection: this tab's own, or the leader's. */
    private post;
    private message;
    private set;
    private frame;
}
