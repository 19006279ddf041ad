type Listener = (...args: any[]) => void;
/** The smallest event emitter: `on` returns a function that removes the listener. */
export declare class Emitter<E extends {
    [K in keyof E]: Listener;
}> {
    private l;
    on<K extends keyof E>(type: K, fn: E[K]): () => void;
    off<K extends keyof E>(type: K, fn: E[K]): void;
}
export {};
