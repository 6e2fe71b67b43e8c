/**
 * Several connections to one export, requests spread over them: a reader that keeps
 * several reads in flight is no longer bound by one connection's socket and one server
 * thread (QEMU serves each connection from one coroutine context).
 */
import { NbdClient, type BlockStatusExtent, type NbdConnectOptions, type NbdReader } from './client.ts';
import type { NbdTarget } from './uri.ts';

/** Options of {@link NbdPool.connect}. */
export interface NbdPoolOptions extends NbdConnectOptions {
  /** Connections wanted (default 4); fewer are opened when the export does not allow it. */
  connections?: number;
}

/** N connections to one export behind the {@link NbdReader} interface. */
export class NbdPool implements NbdReader {
  readonly clients: readonly NbdClient[];

  private constructor(clients: NbdClient[]) {
    this.clients = clients;
  }

  /**
   * Opens the first connection, then the others if the export allows several: when the
   * server sets NBD_FLAG_CAN_MULTI_CONN, or when the export is read-only. The flag is
   * about caches: without it, a write or flush on one connection need not be visible on
   * another. A read-only export has no writes through any connection, so every
   * connection reads the same bytes; the spec's SHOULD NOT is about writers. An export
   * that is neither gets one connection.
   */
  static async connect(target: string | NbdTarget, opts: NbdPoolOptions = {}): Promise<NbdPool> {
    const first = await NbdClient.connect(target, opts);
    const wanted = first.canMultiConn || first.readOnly ? Math.max(1, opts.connections ?? 4) : 1;
    const rest = await Promise.allSettled(Array.from({ length: wanted - 1 }, () => NbdClient.connect(target, opts)));
    const clients = [first, ...rest.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []))];
    const failed = rest.find((r) => r.status === 'rejected');
    if (failed) {
      await Promise.all(clients.map((c) => c.close()));
      throw failed.reason;
    }
    return new NbdPool(clients);
  }

  get size(): number {
    return this.clients[0]!.size;
  }

  get exportName(): string {
    return this.clients[0]!.exportName;
  }

  /** Reads like {@link NbdClient.read}, each request on the least busy connection. */
  async read(buf: Buffer, offset: number, length: number): Promise<number> {
    if (length > buf.length) throw new RangeError(`read of ${length} bytes does not fit a ${buf.length}-byte buffer`);
    const step = Math.min(...this.clients.map((c) => c.maxRead));
    const n = Math.min(length, Math.max(0, this.size - offset));
    const pieces: Promise<number>[] = [];
    // Each client checks its piece against the export's size and block constraints (the
    // first piece also when there is nothing to read, so a bad offset is refused).
    for (let done = 0; done < Math.max(n, 1); done += step) {
      pieces.push(this.idlest().read(buf.subarray(done), offset + done, Math.min(step, n - done)));
    }
    return (await Promise.all(pieces)).reduce((a, b) => a + b, 0);
  }

  blockStatus(context: string, offset: number, length: number): Promise<BlockStatusExtent[]> {
    return this.idlest().blockStatus(context, offset, length);
  }

  async close(): Promise<void> {
    await Promise.all(this.clients.map((c) => c.close()));
  }

  private idlest(): NbdClient {
    let best = this.clients[0]!;
    for (const c of this.clients) if (c.inFlight < best.inFlight) best = c;
    return best;
  }
}
