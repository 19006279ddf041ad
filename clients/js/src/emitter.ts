type Listener = (...args: any[]) => void;

/** The smallest event emitter: `on` returns a function that removes the listener. */
export class Emitter<E extends { [K in keyof E]: Listener }> {
  private l: { [K in keyof E]?: Set<E[K]> } = {};

  on<K extends keyof E>(type: K, fn: E[K]): () => void {
    (this.l[type] ||= new Set()).add(fn);
    return () => this.off(type, fn);
  }

  off<K extends keyof E>(type: K, fn: E[K]): void {
    this.l[type]?.delete(fn);
  }

  /**
   * Call the listeners. One that throws does not stop the others or the
   * client: its error is rethrown on its own, so the console still shows it.
   * @internal
   */
  emit<K extends keyof E>(type: K, ...args: Parameters<E[K]>): void {
    this.l[type]?.forEach((fn) => {
      try {
        fn(...args);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    });
  }
}
