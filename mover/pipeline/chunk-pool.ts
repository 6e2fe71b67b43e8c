/**
 * A small pool of worker threads for the CPU-heavy steps of the pipelines: the keyed id
 * (HMAC-SHA256), sealing (zstd, AES-256-GCM) and opening (decrypt, decompress, id check,
 * placed into a shared buffer). The main thread keeps reading, the HTTP requests and the bookkeeping.
 * The pipelines' buffers are shared with the workers once (`share`, `sharePack`) and
 * named by requests: plaintext slots are read into and hashed or sealed in place, and a
 * chunk is sealed straight into the pack buffer it is uploaded from (pack-buffer.ts), so
 * nothing chunk-sized is copied or allocated per chunk.
 */
import { availableParallelism } from 'node:os';
import type { HeapInfo } from 'node:v8';
import { Worker } from 'node:worker_threads';
import { Corrupt } from '../../contracts/errors.ts';
import type { RepositoryKeys, SealOptions } from '../../repository/format.ts';
import { collectGarbage, pacedCollector } from './gc-pacing.ts';
import { openChunk } from './open-chunk.ts';
import { newPackBuffer, type PackBuffer, type Placement } from '../../repository/pack-buffer.ts';

/** Messages to a worker (chunk-worker.ts). */
export type WorkerRequest =
  | { op: 'hash'; seq: number; keyId: number; slot: number; length: number }
  | { op: 'seal'; seq: number; keyId: number; slot: number; length: number; purpose: string; level?: number; nonce?: Uint8Array; packSlot: number }
  | {
      op: 'open';
      seq: number;
      keyId: number;
      bodySlot: number;
      bodyOffset: number;
      bodyLength: number;
      id: string;
      length: number;
      /** Where the checked plaintext goes: `length` bytes at `intoOffset` of shared slot `intoSlot`. */
      intoSlot?: number;
      intoOffset?: number;
    };

/** Replies from a worker: exactly one per request, with the request's `seq`. */
export interface WorkerReply {
  seq: number;
  id?: string;
  /** Where the chunk was sealed into the request's `packSlot`, or that it did not fit. */
  placed?: Placement;
  plain?: ArrayBuffer;
  /** The opened chunk has another length or another keyed id than expected (swapped or forged). */
  mismatch?: boolean;
  error?: { name: string; message: string; code?: string };
}

/** A plaintext buffer shared with the pool's workers (see `ChunkPool.share`). */
export interface SharedSlot {
  readonly slot: number;
  /** The slot's memory, for reading into. */
  readonly bytes: Buffer;
  /** Its memory starts on a page boundary (`shareAligned`). */
  readonly aligned?: boolean;
}

/** A pack buffer shared with the pool's workers (see `ChunkPool.sharePack`). */
export interface SharedPack extends PackBuffer {
  readonly slot: number;
}

/** Where an opened chunk's plaintext is placed: at `offset` of a shared slot. */
export interface PlaceIn {
  slot: SharedSlot;
  offset: number;
}

/** What opening a chunk found: the plaintext, or that it does not match its id. */
export type Opened = { ok: true; plain?: Buffer } | { ok: false; reason: 'mismatch' };

interface Pending {
  resolve: (r: WorkerReply) => void;
  reject: (err: unknown) => void;
}

interface Slot {
  worker: Worker;
  pending: Map<number, Pending>;
  keyIds: Set<number>;
}

const WORKER_URL = new URL('./chunk-worker.ts', import.meta.url);

/** A WebAssembly memory page: 64 KiB. */
const WASM_PAGE = 64 * 1024;

/** The part of the WebAssembly global used here (TypeScript's lib for Node has no types for it). */
type WasmApi = { Memory: new (d: { initial: number; maximum: number; shared: true }) => { buffer: SharedArrayBuffer } };

/** How long the pool has no shared buffer before its threads collect their garbage (collectWhenIdle). */
const IDLE_COLLECT_MS = 500;

/**
 * Runs chunk work on `size` worker threads, each request on the least busy one. Workers
 * are unref'd: an idle pool never keeps the process alive. A worker that dies fails its
 * pending requests and is replaced on the next request.
 */
export class ChunkPool {
  readonly size: number;
  private readonly slots: (Slot | undefined)[];
  private readonly keyIds = new WeakMap<RepositoryKeys, number>();
  private nextKeyId = 1;
  private readonly shared = new Map<number, SharedArrayBuffer>();
  /** Young-generation collections after every 4 MiB of chunks opened on this thread (gc-pacing.ts). */
  private readonly collectHere = pacedCollector(4 * 1024 * 1024);
  private nextSlot = 1;
  private seq = 0;
  private closed = false;
  private idleCollect: NodeJS.Timeout | undefined;

  constructor(size = defaultPoolSize()) {
    if (!Number.isInteger(size) || size < 1 || size > 64) throw new RangeError(`chunk pool size must be a whole number from 1 to 64, got ${size}`);
    this.size = size;
    this.slots = new Array(size).fill(undefined);
  }

  /** Each running worker's V8 heap (its isolate is not in `process.memoryUsage()`): for benches and diagnostics. */
  async heapStatistics(): Promise<HeapInfo[]> {
    const running = this.slots.filter((s): s is Slot => s !== undefined);
    return Promise.all(running.map((s) => s.worker.getHeapStatistics()));
  }

  /** Requests sent to the workers and not yet answered. */
  get backlog(): number {
    let n = 0;
    for (const s of this.slots) n += s?.pending.size ?? 0;
    return n;
  }

  /**
   * A plaintext slot of `size` bytes shared with every worker (sent once, not per
   * request): read into `bytes`, then `hashSlot`/`sealSlot` copy and move nothing, so the
   * isolates see no per-chunk buffer churn (which costs garbage collections). Give it back
   * with `unshare` once no request on it is pending.
   */
  share(size: number): SharedSlot {
    const sab = new SharedArrayBuffer(size);
    return { slot: this.shareBuffer(sab), bytes: Buffer.from(sab) };
  }

  /**
   * As `share`, but its bytes start on a page boundary (a shared WebAssembly memory, which
   * V8 maps by pages; a SharedArrayBuffer's memory comes from malloc): runs of it at page
   * offsets may be written with O_DIRECT (restore-target.ts). `size` is rounded up to 64 KiB.
   */
  shareAligned(size: number): SharedSlot {
    const pages = Math.max(1, Math.ceil(size / WASM_PAGE));
    const sab = new (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly.Memory({ initial: pages, maximum: pages, shared: true }).buffer;
    return { slot: this.shareBuffer(sab), bytes: Buffer.from(sab), aligned: true };
  }

  /**
   * A pack buffer of `capacity` bytes (and its cursor: pack-buffer.ts) shared with every
   * worker like `share`'s slots, for `sealSlot` to seal chunks straight into.
   */
  sharePack(capacity: number): SharedPack {
    const p = newPackBuffer(capacity);
    return { ...p, slot: this.shareBuffer(p.sab) };
  }

  private shareBuffer(sab: SharedArrayBuffer): number {
    const slot = this.nextSlot++;
    this.shared.set(slot, sab);
    for (const s of this.slots) s?.worker.postMessage({ op: 'share', slot, sab });
    return slot;
  }

  unshare(s: { readonly slot: number }): void {
    this.shared.delete(s.slot);
    for (const w of this.slots) w?.worker.postMessage({ op: 'share', slot: s.slot });
    if (this.shared.size === 0) this.collectWhenIdle();
  }

  /**
   * Once no buffer has been shared for IDLE_COLLECT_MS (the job that used them has ended),
   * every thread collects its garbage: a shared buffer's memory is freed only when every
   * isolate that saw it has collected its handle, and a mover is a long-running process.
   * Measured on the 2 GiB bench, full backup, incremental and restore as jobs of one
   * process: without it the restore's peak RSS was 202-279 MiB over 7 runs, twice over the
   * mover's 256 MiB budget (the restore began with up to 211 MiB left by the backups);
   * with it, 213-238 MiB over 7 runs.
   */
  private collectWhenIdle(): void {
    if (this.idleCollect) return;
    this.idleCollect = setTimeout(() => {
      this.idleCollect = undefined;
      if (this.shared.size > 0 || this.closed) return;
      for (const w of this.slots) w?.worker.postMessage({ op: 'collect' });
      collectGarbage();
    }, IDLE_COLLECT_MS);
    this.idleCollect.unref();
  }

  /** The keyed id (hex HMAC-SHA256) of the first `length` bytes of a shared slot. */
  async hashSlot(keys: RepositoryKeys, s: SharedSlot, length: number): Promise<string> {
    return (await this.request(keys, (seq, keyId) => ({ op: 'hash', seq, keyId, slot: s.slot, length }))).id!;
  }

  /**
   * Seals the first `length` bytes of a shared slot for `purpose` (see format.ts `seal`)
   * straight into the next free bytes of a shared pack buffer (pack-buffer.ts
   * `sealIntoPack`, on a worker): where it was placed, or that it did not fit (nothing
   * written). Any number of chunks may be sealed into one pack at once, on any workers.
   */
  async sealSlot(keys: RepositoryKeys, s: SharedSlot, length: number, purpose: string, opts: SealOptions, pack: SharedPack): Promise<Placement> {
    return (await this.request(keys, (seq, keyId) => ({ op: 'seal', seq, keyId, slot: s.slot, length, purpose, ...opts, packSlot: pack.slot }))).placed!;
  }

  /**
   * Opens the sealed chunk in the `bodyLength` bytes at `bodyOffset` of a shared slot (a
   * downloaded chunk, or one chunk of a downloaded run of a pack) and checks that it is
   * `length` bytes with keyed id `id`. With `into`, the checked plaintext is placed at
   * `into.offset` of the shared slot `into.slot` by the worker and not returned (nothing
   * is placed when it does not check out). Throws Corrupt when the object fails
   * authentication or does not decompress.
   */
  async openSlot(keys: RepositoryKeys, body: SharedSlot, bodyLength: number, id: string, length: number, into?: PlaceIn, bodyOffset = 0): Promise<Opened> {
    const place = into ? { intoSlot: into.slot.slot, intoOffset: into.offset } : {};
    const r = await this.request(keys, (seq, keyId) => ({ op: 'open', seq, keyId, bodySlot: body.slot, bodyOffset, bodyLength, id, length, ...place }));
    if (r.mismatch) return { ok: false, reason: 'mismatch' };
    return r.plain ? { ok: true, plain: Buffer.from(r.plain) } : { ok: true };
  }

  /**
   * `openSlot` on the calling thread, for when every worker has work queued: a restore's
   * main thread otherwise waits on the workers (profiled: idle half the time on 2 cores).
   */
  openHere(keys: RepositoryKeys, body: SharedSlot, bodyLength: number, id: string, length: number, into?: PlaceIn, bodyOffset = 0): Opened {
    const target = into ? into.slot.bytes.subarray(into.offset, into.offset + length) : undefined;
    const opened = openChunk(keys, body.bytes.subarray(bodyOffset, bodyOffset + bodyLength), id, length, target);
    this.collectHere(length);
    if (opened.mismatch) return { ok: false, reason: 'mismatch' };
    return into ? { ok: true } : { ok: true, plain: opened.plain };
  }

  /** Stops the workers; pending requests fail. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.idleCollect);
    await Promise.all(
      this.slots.map((s, i) => {
        this.slots[i] = undefined;
        return s?.worker.terminate();
      }),
    );
  }

  private request(keys: RepositoryKeys, make: (seq: number, keyId: number) => WorkerRequest): Promise<WorkerReply> {
    if (this.closed) return Promise.reject(new Error('chunk pool is closed'));
    const slot = this.leastBusy();
    const keyId = this.keyIdOf(keys);
    if (!slot.keyIds.has(keyId)) {
      slot.worker.postMessage({ op: 'keys', keyId, encryption: keys.encryption, id: keys.id });
      slot.keyIds.add(keyId);
    }
    const seq = ++this.seq;
    return new Promise<WorkerReply>((resolve, reject) => {
      slot.pending.set(seq, { resolve, reject });
      if (slot.pending.size === 1) slot.worker.ref();
      slot.worker.postMessage(make(seq, keyId));
    });
  }

  private keyIdOf(keys: RepositoryKeys): number {
    let id = this.keyIds.get(keys);
    if (id === undefined) {
      id = this.nextKeyId++;
      this.keyIds.set(keys, id);
    }
    return id;
  }

  private leastBusy(): Slot {
    let best: Slot | undefined;
    for (let i = 0; i < this.size; i++) {
      const s = this.slots[i] ?? (this.slots[i] = this.spawn(i));
      if (!best || s.pending.size < best.pending.size) best = s;
    }
    return best!;
  }

  private spawn(index: number): Slot {
    const worker = new Worker(WORKER_URL, { name: `lifeboat-chunk-${index}` });
    worker.unref();
    const slot: Slot = { worker, pending: new Map(), keyIds: new Set() };
    for (const [id, sab] of this.shared) worker.postMessage({ op: 'share', slot: id, sab });
    worker.on('message', (r: WorkerReply) => {
      const p = slot.pending.get(r.seq);
      if (!p) return;
      slot.pending.delete(r.seq);
      if (slot.pending.size === 0) worker.unref();
      if (r.error) p.reject(reviveError(r.error));
      else p.resolve(r);
    });
    const fail = (err: unknown) => {
      if (this.slots[index] === slot) this.slots[index] = undefined;
      for (const p of slot.pending.values()) p.reject(err);
      slot.pending.clear();
    };
    worker.on('error', (err: Error) => fail(new Error(`chunk worker ${index} failed: ${err.message}`, { cause: err })));
    worker.on('exit', (code) => fail(new Error(`chunk worker ${index} exited with code ${code}`)));
    return slot;
  }
}

/** Errors cross the thread boundary as data: Corrupt stays Corrupt, others keep name, message and code. */
function reviveError(e: { name: string; message: string; code?: string }): Error {
  if (e.name === new Corrupt('').name) return new Corrupt(e.message);
  const err = new Error(e.message) as Error & { code?: string };
  err.name = e.name;
  if (e.code) err.code = e.code;
  return err;
}

/**
 * One worker per core but one, at least 1 and at most 4: the main thread is busy too
 * (reading, zero checks, HTTP and request signing), so on 2 cores one worker keeps both
 * busy. Measured on the 2 GiB bench (2 cores, s3rver on the same machine): a second worker
 * made the full backup no faster, cost ~15% more CPU (contention) and ~85 MiB more RSS
 * (each worker is a V8 isolate with its own allocator arena). LIFEBOAT_CHUNK_WORKERS overrides.
 */
export function defaultPoolSize(): number {
  const configured = process.env.LIFEBOAT_CHUNK_WORKERS;
  if (configured !== undefined && configured !== '') {
    const n = Number(configured);
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new RangeError(`LIFEBOAT_CHUNK_WORKERS must be a whole number from 1 to 64, got '${configured}'`);
    return n;
  }
  return Math.max(1, Math.min(4, availableParallelism() - 1));
}

let shared: ChunkPool | undefined;

/** The process-wide pool the pipelines use unless given one (created on first use). */
export function sharedChunkPool(): ChunkPool {
  return (shared ??= new ChunkPool());
}
