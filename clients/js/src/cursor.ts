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
export function parseId(id: string | null | undefined): Pos | undefined {
  const m = /^([A-Za-z0-9]+)-(\d{1,15})$/.exec(id || '');
  return m ? { e: m[1]!, o: +m[2]! } : undefined;
}

export const idOf = (p: Pos): string => `${p.e}-${p.o}`;

/** What a frame asks of the subscription, beyond delivering it. */
export const enum Act {
  Drop,
  Deliver,
  /** Resync: subscribe again from this cursor. */
  Ask,
  /** The server reports notifications this cursor will never see. */
  Gap,
}

export class Cursor {
  /** The last position seen; undefined before the first. */
  p: Pos | undefined;
  /** A resync is under way: later holes need no second one. */
  a = false;

  constructor(id?: string | null) {
    this.p = parseId(id);
  }

  get id(): string | undefined {
    return this.p && idOf(this.p);
  }

  /** A notification. */
  note(n: { epoch: string; offset: number }): Act {
    const p = this.p;
    if (!p || (p.e == n.epoch && n.offset == p.o + 1)) {
      this.p = { e: n.epoch, o: n.offset };
      return Act.Deliver;
    }
    return p.e == n.epoch && n.offset <= p.o ? Act.Drop : this.ask();
  }

  /**
   * A `subscribed` frame, answering this cursor's subscription or another
   * one on the same connection. `recovered: false` is a gap only for a
   * cursor that has not seen everything up to `position`; a position ahead
   * of this cursor with `recovered: true` answers someone else, and this
   * cursor resyncs.
   */
  sub(f: { position: string; recovered: boolean }): Act {
    const q = parseId(f.position);
    const p = this.p;
    if (!q) return Act.Drop;
    if (p && p.e == q.e && q.o <= p.o) {
      this.a = false;
      return Act.Drop;
    }
    if (p && f.recovered !== false) return this.ask();
    this.p = q;
    this.a = false;
    return f.recovered === false ? Act.Gap : Act.Drop;
  }

  private ask(): Act {
    if (this.a) return Act.Drop;
    this.a = true;
    return Act.Ask;
  }
}
