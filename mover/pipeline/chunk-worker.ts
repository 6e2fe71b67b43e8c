/**
 * A worker thread of the chunk pool (chunk-pool.ts): keyed ids, sealing (zstd +
 * AES-256-GCM, straight into a shared pack buffer: pack-buffer.ts) and opening (decrypt,
 * decompress, id check, optionally into a shared buffer the restore writes from), all
 * synchronous here so the main thread keeps only I/O. Buffers are shared once and named
 * by requests.
 */
import { parentPort } from 'node:worker_threads';
import { chunkId, type RepositoryKeys, type SealOptions } from '../../repository/format.ts';
import { collectGarbage, pacedCollector } from './gc-pacing.ts';
import { openChunk } from './open-chunk.ts';
import { packBufferOf, sealIntoPack, type PackBuffer } from '../../repository/pack-buffer.ts';
import type { WorkerReply, WorkerRequest } from './chunk-pool.ts';

const port = parentPort;
if (!port) throw new Error('chunk-worker.ts runs only as a worker thread of the chunk pool');

const keyring = new Map<number, RepositoryKeys>();
const keysFor = (keyId: number): RepositoryKeys => {
  const k = keyring.get(keyId);
  if (!k) throw new Error(`chunk worker has no keys ${keyId}`);
  return k;
};

/** Shared slots and pack buffers, sent once (op 'share'): requests name a slot instead of moving a buffer. */
const shared = new Map<number, SharedArrayBuffer>();
/** The layout of the shared slots used as pack buffers, made once per slot. */
const packs = new Map<number, PackBuffer>();
const packOf = (slot: number): PackBuffer => {
  let p = packs.get(slot);
  if (!p) {
    const sab = shared.get(slot);
    if (!sab) throw new Error(`chunk worker has no shared pack ${slot}`);
    packs.set(slot, (p = packBufferOf(sab)));
  }
  return p;
};
const slotBytes = (slot: number, length?: number, offset = 0): Uint8Array => {
  const sab = shared.get(slot);
  if (!sab) throw new Error(`chunk worker has no shared slot ${slot}`);
  return new Uint8Array(sab, offset, length ?? sab.byteLength - offset);
};

/** A young-generation collection every 8 MiB of chunks, a full one every 32 MiB (gc-pacing.ts says why). */
const collectGarbageNow = pacedCollector(8 * 1024 * 1024, 4);

function handle(m: WorkerRequest): { reply: WorkerReply; transfer: ArrayBuffer[] } {
  switch (m.op) {
    case 'hash': {
      const id = chunkId(keysFor(m.keyId), slotBytes(m.slot, m.length));
      return { reply: { seq: m.seq, id }, transfer: [] };
    }
    case 'seal': {
      const opts: SealOptions = { ...(m.level === undefined ? {} : { level: m.level }), ...(m.nonce ? { nonce: m.nonce } : {}) };
      // Straight into the pack it is uploaded in (whose checksum the pack writer computes).
      const placed = sealIntoPack(keysFor(m.keyId), slotBytes(m.slot, m.length), m.purpose, opts, packOf(m.packSlot));
      return { reply: { seq: m.seq, placed }, transfer: [] };
    }
    case 'open': {
      const body = slotBytes(m.bodySlot, m.bodyLength, m.bodyOffset);
      const into = m.intoSlot === undefined ? undefined : slotBytes(m.intoSlot, m.length, m.intoOffset);
      const opened = openChunk(keysFor(m.keyId), body, m.id, m.length, into);
      if (opened.mismatch) return { reply: { seq: m.seq, mismatch: true }, transfer: [] };
      if (into) return { reply: { seq: m.seq }, transfer: [] };
      const out = new ArrayBuffer(opened.plain.length);
      new Uint8Array(out).set(opened.plain);
      return { reply: { seq: m.seq, plain: out }, transfer: [out] };
    }
  }
}

/** The pool's messages that set a worker up (keys, shared buffers) or tidy it (a collection when the pool is idle). */
type Control =
  | { op: 'keys'; keyId: number; encryption: Uint8Array; id: Uint8Array }
  | { op: 'share'; slot: number; sab?: SharedArrayBuffer }
  | { op: 'collect' };

port.on('message', (m: WorkerRequest | Control) => {
  if (m.op === 'collect') return collectGarbage();
  if (m.op === 'share') {
    if (m.sab) shared.set(m.slot, m.sab);
    else shared.delete(m.slot);
    packs.delete(m.slot);
    return;
  }
  if (m.op === 'keys') {
    keyring.set(m.keyId, Object.freeze({ encryption: Buffer.from(m.encryption), id: Buffer.from(m.id) }));
    return;
  }
  try {
    const { reply, transfer } = handle(m);
    port.postMessage(reply, transfer);
    if (m.op !== 'hash') collectGarbageNow(m.length);
  } catch (err) {
    const e = err as Error & { code?: string };
    port.postMessage({ seq: m.seq, error: { name: e.name, message: e.message, ...(e.code ? { code: e.code } : {}) } });
  }
});
