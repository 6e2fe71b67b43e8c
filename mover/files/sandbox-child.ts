/**
 * The sandboxed side of file-level restore: a Node process started by `sandbox.ts` with no
 * environment (so no credentials), Node's permission model on (no file writes, no child
 * processes, no worker threads, no native addons; reads only of this folder's code), and a
 * heap limit. Its only way to the disk is the IPC channel: it asks the parent for byte
 * ranges and answers listings, tree events and file bytes. A crafted image that
 * subverted a reader here would hold no key, no credential and no writable path.
 *
 * Imports only this folder's readers and Node built-ins.
 */
import { FsCorrupt, FsNotFound, type BlockReader } from './block-reader.ts';
import { openVolume, resolve, volumes, walk } from './volume.ts';
import type { ChildMessage, SandboxJob, ParentMessage } from './sandbox.ts';

const send = (m: ChildMessage) => new Promise<void>((ok, fail) => process.send!(m, undefined, {}, (err: Error | null) => (err ? fail(err) : ok())));

let nextId = 0;
const pendingReads = new Map<number, { ok: (b: Uint8Array) => void; fail: (e: Error) => void }>();
const acks: (() => void)[] = [];
let started = false;

function disk(size: number): BlockReader {
  return {
    size,
    read(offset, length) {
      const id = nextId++;
      return new Promise<Uint8Array>((ok, fail) => {
        pendingReads.set(id, { ok, fail });
        void send({ t: 'read', id, offset, length }).catch(fail);
      });
    },
  };
}

/** File bytes go in pieces of at most 1 MiB, each acknowledged, so neither side buffers a whole file. */
const PIECE = 1024 * 1024;

async function run(job: SandboxJob): Promise<void> {
  const d = disk(job.diskSize);
  if (job.op === 'volumes') {
    await send({ t: 'volumes', ...(await volumes(d)) });
    return;
  }
  const { fs, volume, warnings } = await openVolume(d, job.partition);
  await send({ t: 'opened', fs: fs.kind, partition: volume.partition, warnings });
  if (job.op === 'ls') {
    const at = await resolve(fs, job.path);
    if (at.entry.type !== 'dir') await send({ t: 'entry', entry: at.entry });
    else for (const e of await fs.list(at.node, job.path)) await send({ t: 'entry', entry: e.entry });
    return;
  }
  for (const path of job.paths) {
    await walk(fs, path, async (e) => {
      if (e.kind !== 'file') return send({ t: 'event', kind: e.kind, path: e.path, entry: e.entry });
      await send({ t: 'event', kind: 'file', path: e.path, entry: e.entry });
      for (const r of await e.ranges()) {
        for (let offset = r.offset; offset < r.offset + r.length; offset += PIECE) {
          const bytes = await e.read(offset, Math.min(PIECE, r.offset + r.length - offset));
          if (bytes === null) continue; // a hole: the copy keeps it
          const acked = new Promise<void>((ok) => acks.push(ok));
          await send({ t: 'data', offset, bytes: bytes as Uint8Array<ArrayBuffer> });
          await acked;
        }
      }
      await send({ t: 'event', kind: 'fileEnd', path: e.path, entry: e.entry });
    });
  }
}

/**
 * A reader's error as the parent is told it: not found, or damaged — a bounds error of a
 * Buffer read (RangeError) is a structure that points past its own bytes, so damage too —
 * or anything else (a read the parent could not serve) as it is.
 */
function failure(err: Error): ChildMessage {
  if (err instanceof FsNotFound) return { t: 'error', kind: 'notFound', message: err.message };
  if (err instanceof FsCorrupt) return { t: 'error', kind: 'corrupt', message: err.message };
  if (err instanceof RangeError)
    return {
      t: 'error',
      kind: 'corrupt',
      message: `the file system's structures are inconsistent (a field points past the bytes it belongs to: ${err.message})`,
    };
  return { t: 'error', kind: 'other', message: err.message };
}

process.on('message', (m: ParentMessage) => {
  if (m.t === 'read') {
    const p = pendingReads.get(m.id);
    pendingReads.delete(m.id);
    if (m.bytes) p?.ok(m.bytes);
    else p?.fail(new Error(m.error ?? 'read failed'));
  } else if (m.t === 'ack') acks.shift()?.();
  else if (m.t === 'job' && !started) {
    started = true;
    run(m.job)
      .then(
        () => send({ t: 'done' }),
        (err: Error) => send(failure(err)),
      )
      .finally(() => process.disconnect?.());
  }
});
