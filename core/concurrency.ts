/** Runs `fn` over `items` with at most `limit` in flight; rejects on the first failure. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        results[i] = await fn(items[i]!, i);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/**
 * A count of units (chunks, requests) shared by tasks that each take some for a while:
 * `take(n)` resolves once `n` are free, first come first served (a large taker is not
 * overtaken by small ones), `give(n)` returns them. A taker asking for more than the
 * whole budget is given all of it once everything is free.
 */
export class Budget {
  readonly capacity: number;
  private free: number;
  private readonly waiting: { n: number; ok: () => void }[] = [];

  constructor(capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity <= 0) throw new RangeError(`a budget needs a positive whole number of units, got ${capacity}`);
    this.capacity = capacity;
    this.free = capacity;
  }

  /** Units not taken. */
  get available(): number {
    return this.free;
  }

  /** Takes `n` units (at most the capacity) once they are free; resolves to the number taken, to be given back. */
  take(n: number): Promise<number> {
    if (!Number.isSafeInteger(n) || n < 0) return Promise.reject(new RangeError(`cannot take ${n} units of a budget`));
    const units = Math.min(n, this.capacity);
    if (this.waiting.length === 0 && units <= this.free) {
      this.free -= units;
      return Promise.resolve(units);
    }
    return new Promise((ok) => this.waiting.push({ n: units, ok: () => ok(units) }));
  }

  /** Gives back `n` units (as `take` resolved to). */
  give(n: number): void {
    if (this.free + n > this.capacity) throw new Error(`a budget of ${this.capacity} was given back ${n} units with ${this.free} free (given back twice?)`);
    this.free += n;
    while (this.waiting.length > 0 && this.waiting[0]!.n <= this.free) {
      const w = this.waiting.shift()!;
      this.free -= w.n;
      w.ok();
    }
  }
}
