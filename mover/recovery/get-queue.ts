/**
 * The export's GETs in flight (export.ts): at most `parallelism` at once; a GET a read waits
 * for (urgent) goes before read-ahead's, each kind first come, first served. A read-ahead GET
 * still waiting becomes urgent when a read comes to need it.
 */

/** A GET's place in the queue: `urgent` when a read waits for one of its chunks. */
export interface Turn {
  urgent: boolean;
  go?: () => void;
}

export class GetQueue {
  private readonly parallelism: number;
  private inFlight = 0;
  private readonly waiting: Turn[] = [];

  constructor(parallelism: number) {
    this.parallelism = parallelism;
  }

  /** Runs `fn` when its turn comes. */
  async run(turn: Turn, fn: () => Promise<void>): Promise<void> {
    if (this.inFlight >= this.parallelism) {
      await new Promise<void>((ok) => {
        turn.go = ok;
        this.waiting.push(turn);
      });
    }
    this.inFlight++;
    try {
      await fn();
    } finally {
      this.inFlight--;
      const i = this.waiting.findIndex((t) => t.urgent);
      this.waiting.splice(i < 0 ? 0 : i, 1)[0]?.go!();
    }
  }
}
