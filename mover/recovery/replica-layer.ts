/**
 * One disk's new restore point in a replica VM (replica-vm.ts): a qcow2 layer over the
 * previous point holding only the chunks whose ids changed between the two backups'
 * manifests, written through `qemu-nbd`, and the disk's next active overlay over it.
 *
 * An update's fixed costs are process starts (`qemu-img create`, `qemu-nbd`) and the
 * manifests' first reads: they run side by side, and the changed chunks are fetched from
 * the DR repository while `qemu-nbd` starts, so what is left in series is what changed.
 */
import { execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, watch } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Corrupt } from '../../contracts/errors.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import type { JobDisk } from '../../contracts/recovery-jobs.ts';
import type { ManifestCursor, ManifestReader } from '../../repository/types.ts';
import type { Repository } from '../../repository/open.ts';
import { NbdClient } from '../nbd/client.ts';
import { checkedChunk, diffable, sameAs } from './manifest-diff.ts';

const run = promisify(execFile);

export async function qemuImg(args: string[]): Promise<string> {
  try {
    return (await run('qemu-img', args, { maxBuffer: 16 * 1024 * 1024 })).stdout;
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT')
      throw new RecoveryRequestInvalid('qemu-img is not installed on this DR mover (Debian: apt-get install qemu-utils); replica VMs need it');
    throw new Corrupt(`qemu-img ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`, err);
  }
}

/**
 * A qcow2 overlay at `path` over `backing` (which stays read-only). Given its size, the
 * backing chain is not opened (`-u`): the caller knows it, and the overlay can be made while
 * the layer below is still being written.
 */
export async function createOverlay(path: string, backing: string, sizeBytes?: number): Promise<void> {
  await rm(path, { force: true });
  const size = sizeBytes !== undefined ? ['-u', path, String(sizeBytes)] : [path];
  await qemuImg(['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', ...size]);
}

/** Resolves once `path` exists (inotify on its folder, not a polling loop), or rejects after `ms`. */
async function appears(path: string, dir: string, ms: number, gone: () => string | undefined): Promise<void> {
  const ac = new AbortController();
  const w = watch(dir, { signal: ac.signal });
  try {
    const deadline = setTimeout(() => ac.abort(), ms);
    try {
      for (;;) {
        if (existsSync(path)) return;
        const why = gone();
        if (why !== undefined) throw new Corrupt(why);
        await Promise.race([once(w, 'change', { signal: ac.signal }), new Promise((r) => setTimeout(r, 100))]);
      }
    } finally {
      clearTimeout(deadline);
    }
  } catch (err) {
    if (ac.signal.aborted) throw new Corrupt(gone() ?? `no socket after ${ms / 1000} s`, err);
    throw err;
  } finally {
    ac.abort();
  }
}

/** Connects to the socket qemu-nbd just made: it binds before it listens, so a refusal is tried again for a while. */
async function connectSoon(socket: string, failed: () => string | undefined, signal?: AbortSignal): Promise<NbdClient> {
  for (let i = 0; ; i++) {
    try {
      return await NbdClient.connect({ socket, exportName: '' }, signal ? { signal } : {});
    } catch (err) {
      const why = failed();
      if (why !== undefined) throw new Corrupt(why, err);
      if (i >= 200 || !/ECONNREFUSED/.test(String((err as Error).message))) throw err;
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/**
 * `qemu-nbd` serving a qcow2 image for writing on a unix socket in a folder of its own; it
 * exits after its one client. `close()` flushes, disconnects and waits for its exit (the
 * image's locks are then free); a failure kills it.
 */
class ImageWriter {
  readonly nbd: NbdClient;
  private readonly child: ReturnType<typeof spawn>;
  private readonly exited: Promise<unknown>;
  private readonly sockDir: string;

  private constructor(nbd: NbdClient, child: ReturnType<typeof spawn>, exited: Promise<unknown>, sockDir: string) {
    this.nbd = nbd;
    this.child = child;
    this.exited = exited;
    this.sockDir = sockDir;
  }

  static async open(image: string, signal?: AbortSignal): Promise<ImageWriter> {
    // Its own short folder: a unix socket path has at most 107 bytes, a replica's folder may be deep.
    const sockDir = await mkdtemp(join(tmpdir(), 'lifeboat-replica-'));
    const socket = join(sockDir, 'nbd.sock');
    const child = spawn('qemu-nbd', ['--format=qcow2', '--cache=writeback', '--discard=unmap', `--socket=${socket}`, '--', image], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const exited = once(child, 'exit').catch(() => [null]);
    const failed = () => (child.exitCode !== null ? `qemu-nbd could not open ${image} for writing: ${stderr.trim() || `exit ${child.exitCode}`}` : undefined);
    try {
      await appears(socket, sockDir, 10_000, failed);
      const nbd = await connectSoon(socket, failed, signal);
      return new ImageWriter(nbd, child, exited, sockDir);
    } catch (err) {
      await ImageWriter.stop(child, exited, sockDir);
      throw err;
    }
  }

  private static async stop(child: ReturnType<typeof spawn>, exited: Promise<unknown>, sockDir: string): Promise<void> {
    if (child.exitCode === null) setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
    await exited;
    await rm(sockDir, { recursive: true, force: true });
  }

  /** Flushed and closed when `ok`; otherwise only closed. */
  async close(ok: boolean): Promise<void> {
    try {
      if (ok) await this.nbd.flush();
    } finally {
      await this.nbd.close();
      await ImageWriter.stop(this.child, this.exited, this.sockDir);
    }
  }
}

export interface DiskWrite {
  diskId: string;
  layer: string;
  /** The disk's next active overlay, over `layer`, made while the layer was written: renamed into place once every disk is written. */
  nextActive: string;
  chunksWritten: number;
  bytesWritten: number;
  chunksUnchanged: number;
}

export interface LayerDeps {
  /** The DR repository. */
  repository: Repository;
  parallelism: number;
  signal?: AbortSignal | undefined;
  onProgress?: (() => void) | undefined;
}

/** Seconds per named step of a disk's write, added up over the disks (steps of one disk overlap: see the file's comment). */
export type PhaseClock = (name: string, seconds: number) => void;

const timed = async <T>(name: string, clock: PhaseClock, p: Promise<T>): Promise<T> => {
  const t = performance.now();
  try {
    return await p;
  } finally {
    clock(name, (performance.now() - t) / 1000);
  }
};

/** The layer's target: a new image, or an overlay over the previous point's layer. */
async function createLayer(layer: string, sizeBytes: number, fromLayer: string | undefined): Promise<void> {
  if (fromLayer) return createOverlay(layer, fromLayer, sizeBytes);
  await rm(layer, { force: true });
  await qemuImg(['create', '-q', '-f', 'qcow2', layer, String(sizeBytes)]);
}

interface Manifests {
  target: ManifestReader;
  /** The previous point's manifest, when the two can be diffed chunk by chunk. */
  base: ManifestCursor | undefined;
}

/** The target backup's manifest of the disk, and the previous point's beside it. */
async function openManifests(job: LayerJob, disk: JobDisk, from: LayerFrom | undefined, d: LayerDeps): Promise<Manifests> {
  const [target, prev] = await Promise.all([
    d.repository.openManifest(job.backupId, disk.diskId),
    from ? d.repository.openManifest(from.backupId, disk.diskId) : undefined,
  ]);
  if (!target)
    throw new Corrupt(
      `manifest of disk '${disk.diskId}' (backup ${job.backupId}) is missing from the DR repository ${job.target.bucket}; replicate the backup first`,
    );
  if (target.info.sizeBytes !== disk.sizeBytes)
    throw new Corrupt(`manifest of disk '${disk.diskId}' (backup ${job.backupId}) says ${target.info.sizeBytes} bytes, its job ${disk.sizeBytes}`);
  // With a layer below whose backup cannot be diffed (resized, other chunk size), every chunk is written.
  return { target, base: prev && diffable(prev.info, target.info) ? prev.cursor() : undefined };
}

/** The chunks that differ from the layer below (every non-zero chunk over nothing), fetched and checked, written as the writer is ready. */
async function writeChanged(m: Manifests, disk: JobDisk, overLayer: boolean, writer: Promise<ImageWriter>, d: LayerDeps, out: DiskWrite): Promise<void> {
  const { chunkSize, sizeBytes } = m.target.info;
  const inFlight = new Set<Promise<void>>();
  for await (const batch of m.target.batches())
    for (let k = 0; k < batch.count; k++) {
      d.signal?.throwIfAborted();
      const i = batch.firstChunk + k;
      const want = batch.id(k);
      // A fresh image reads as zeros: its holes need no write.
      if (m.base ? await sameAs(m.base, i, want) : !overLayer && want === null) {
        out.chunksUnchanged++;
        continue;
      }
      const offset = i * chunkSize;
      const length = Math.min(chunkSize, sizeBytes - offset);
      const at = want === null ? undefined : batch.location(k)!;
      const p = (async () => {
        const data = want === null ? Buffer.alloc(length) : await checkedChunk(d.repository, at!, want, disk.diskId, offset, length);
        await (await writer).nbd.write(data, offset);
      })();
      inFlight.add(p);
      void p.finally(() => inFlight.delete(p)).catch(() => {});
      out.chunksWritten++;
      out.bytesWritten += length;
      if (inFlight.size >= d.parallelism) await Promise.race(inFlight);
      if (out.chunksWritten % 64 === 0) d.onProgress?.();
    }
  await Promise.all(inFlight);
}

interface LayerJob {
  backupId: string;
  target: { bucket: string };
}
/** The previous restore point's layer of the disk, and its backup. */
interface LayerFrom {
  layer: string;
  backupId: string;
}

/**
 * Writes into a new layer over `from.layer` (or a fresh image) the chunks of the target backup
 * that differ from `from.backupId`'s; meanwhile makes `nextActive`, the active overlay over it.
 */
export async function writeLayer(
  job: LayerJob,
  disk: JobDisk,
  paths: { layer: string; nextActive: string },
  from: LayerFrom | undefined,
  d: LayerDeps,
  clock: PhaseClock,
): Promise<DiskWrite> {
  // The processes start while the manifests are read: neither needs the other.
  const writer = timed('layerCreate', clock, createLayer(paths.layer, disk.sizeBytes, from?.layer)).then(() =>
    timed('nbdStart', clock, ImageWriter.open(paths.layer, d.signal)),
  );
  writer.catch(() => {});
  const active = timed('activeCreate', clock, createOverlay(paths.nextActive, paths.layer, disk.sizeBytes));
  active.catch(() => {});
  const out: DiskWrite = { diskId: disk.diskId, ...paths, chunksWritten: 0, bytesWritten: 0, chunksUnchanged: 0 };
  let ok = false;
  let m: Manifests | undefined;
  try {
    m = await timed('manifests', clock, openManifests(job, disk, from, d));
    await timed('chunks', clock, writeChanged(m, disk, !!from, writer, d, out));
    ok = true;
  } finally {
    await m?.base?.close();
    // After a failure the writer is closed unflushed (its own failure is the one reported when nothing else failed).
    const w = await writer.catch((err: unknown) => {
      if (ok) throw err;
    });
    if (w) await timed('nbdStop', clock, w.close(ok));
    await active.catch((err: unknown) => {
      if (ok) throw err;
    });
  }
  return out;
}
