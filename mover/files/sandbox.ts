/**
 * The parent side of the sandbox (see sandbox-child.ts): starts the child with no
 * environment under Node's permission model, answers its block reads from the disk
 * (`BlockReader`: a backup's disk served from the repository, or a local image), checks
 * every message it sends against the schemas below (the child is as untrusted as the
 * image it reads), and ends it — killed — on a time limit, on silence, on abort, and
 * when the call returns, so no child outlives its request.
 */
import { spawn } from 'node:child_process';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import type { BlockReader } from './block-reader.ts';

const entry = z
  .object({
    name: z.string().min(1).max(4096),
    type: z.enum(['file', 'dir', 'symlink', 'other']),
    size: z.number().int().nonnegative(),
    mode: z.number().int().min(0).max(0o7777),
    uid: z.number().int().nonnegative(),
    gid: z.number().int().nonnegative(),
    mtimeMs: z.number(),
    atimeMs: z.number(),
    target: z.string().max(4096).optional(),
  })
  .strict();
export type FileEntry = z.output<typeof entry>;

const volumeInfo = z
  .object({
    partition: z.number().int().nonnegative(),
    offset: z.number().int().nonnegative(),
    size: z.number().int().nonnegative(),
    fs: z.string().nullable(),
    problem: z.string().optional(),
  })
  .strict();
export type VolumeInfo = z.output<typeof volumeInfo>;

/** What the child may send; anything else ends it. */
export const childMessage = z.discriminatedUnion('t', [
  z
    .object({
      t: z.literal('read'),
      id: z.number().int().nonnegative(),
      offset: z.number().int().nonnegative(),
      length: z
        .number()
        .int()
        .min(0)
        .max(64 * 1024 * 1024),
    })
    .strict(),
  z.object({ t: z.literal('volumes'), scheme: z.string(), warnings: z.array(z.string()), volumes: z.array(volumeInfo) }).strict(),
  z.object({ t: z.literal('opened'), fs: z.string(), partition: z.number().int().nonnegative(), warnings: z.array(z.string()) }).strict(),
  z.object({ t: z.literal('entry'), entry }).strict(),
  z.object({ t: z.literal('event'), kind: z.enum(['dir', 'dirEnd', 'file', 'fileEnd', 'symlink', 'other']), path: z.string().max(65536), entry }).strict(),
  z.object({ t: z.literal('data'), offset: z.number().int().nonnegative(), bytes: z.instanceof(Uint8Array) }).strict(),
  z.object({ t: z.literal('done') }).strict(),
  z.object({ t: z.literal('error'), kind: z.enum(['notFound', 'corrupt', 'other']), message: z.string() }).strict(),
]);
export type ChildMessage = z.output<typeof childMessage>;

export type SandboxJob =
  | { op: 'volumes'; diskSize: number }
  | { op: 'ls'; diskSize: number; path: string; partition?: number }
  | { op: 'get'; diskSize: number; paths: string[]; partition?: number };

export type ParentMessage = { t: 'job'; job: SandboxJob } | { t: 'read'; id: number; bytes?: Uint8Array; error?: string } | { t: 'ack' };

/** The child reported that the guest's data is damaged, hostile or unreadable (`corrupt`), or that the request names nothing there (`notFound`). */
export class SandboxFailure extends Error {
  override readonly name = 'SandboxFailure';
  readonly kind: 'notFound' | 'corrupt' | 'other' | 'timeout' | 'crashed';
  constructor(kind: SandboxFailure['kind'], message: string) {
    super(message);
    this.kind = kind;
  }
}

export interface SandboxOptions {
  /** The whole request (default 1 hour). */
  timeoutMs?: number;
  /** The longest the child may go without a message (default 60 s). */
  silenceMs?: number;
  signal?: AbortSignal;
  /** The child's V8 heap limit, MiB (default 512). */
  heapMiB?: number;
}

export interface SandboxStats {
  reads: number;
  bytesRead: number;
}

const MAX_READS_IN_FLIGHT = 16;
const CHILD = fileURLToPath(new URL('./sandbox-child.ts', import.meta.url));

/**
 * Runs `job` in a fresh child against `disk`; `onMessage` gets every checked message but
 * reads (answered here) and the closing one; `data` messages are acknowledged once it returns.
 */
export async function runSandbox(
  disk: BlockReader,
  job: SandboxJob,
  onMessage: (m: ChildMessage) => Promise<void> | void,
  o: SandboxOptions = {},
): Promise<SandboxStats> {
  o.signal?.throwIfAborted();
  const stats: SandboxStats = { reads: 0, bytesRead: 0 };
  const child = spawn(
    process.execPath,
    ['--permission', `--allow-fs-read=${dirname(CHILD)}`, `--max-old-space-size=${o.heapMiB ?? 512}`, '--disable-warning=ExperimentalWarning', CHILD],
    { env: {}, stdio: ['ignore', 'ignore', 'pipe', 'ipc'], serialization: 'advanced' },
  );
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => {
    if (stderr.length < 4096) stderr += b.toString();
  });
  let settled = false;
  return await new Promise<SandboxStats>((ok, fail) => {
    let chain = Promise.resolve();
    let inFlight = 0;
    const finish = (err?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(overall);
      clearTimeout(quiet);
      o.signal?.removeEventListener('abort', aborted);
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      if (err) fail(err);
      else ok(stats);
    };
    const overall = setTimeout(
      () => finish(new SandboxFailure('timeout', `reading the file system took longer than ${(o.timeoutMs ?? 3_600_000) / 1000} s; the reader was stopped`)),
      o.timeoutMs ?? 3_600_000,
    );
    let quiet = setTimeout(() => {}, 0);
    const silence = () => {
      clearTimeout(quiet);
      quiet = setTimeout(
        () =>
          finish(
            new SandboxFailure(
              'timeout',
              `the file-system reader sent nothing for ${(o.silenceMs ?? 60_000) / 1000} s (a hostile or damaged image making it spin?); it was stopped`,
            ),
          ),
        o.silenceMs ?? 60_000,
      );
    };
    silence();
    const aborted = () => finish(o.signal!.reason instanceof Error ? o.signal!.reason : new Error('aborted'));
    o.signal?.addEventListener('abort', aborted, { once: true });
    child.on('error', (err) => finish(new SandboxFailure('crashed', `the file-system reader could not be started: ${err.message}`)));
    // After the messages already received are handled (the last is 'done').
    child.on(
      'exit',
      (code, sig) =>
        void chain.then(() =>
          finish(
            new SandboxFailure(
              'crashed',
              `the file-system reader ended (${sig ?? `exit code ${code}`}) before it finished${stderr ? `: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`,
            ),
          ),
        ),
    );
    const send = (m: ParentMessage) => {
      if (!settled && child.connected) child.send(m);
    };
    child.on('message', (raw: unknown) => {
      silence();
      const parsed = childMessage.safeParse(raw);
      if (!parsed.success)
        return finish(new SandboxFailure('crashed', `the file-system reader sent a malformed message (${parsed.error.issues[0]?.message}); it was stopped`));
      const m = parsed.data;
      if (m.t === 'read') {
        // The readers read one range at a time; a child asking for many at once is not one of them.
        if (inFlight >= MAX_READS_IN_FLIGHT)
          return finish(new SandboxFailure('crashed', `the file-system reader asked for more than ${MAX_READS_IN_FLIGHT} reads at once; it was stopped`));
        if (m.offset + m.length > disk.size)
          return send({ t: 'read', id: m.id, error: `bytes ${m.offset}+${m.length} lie past the end of the ${disk.size}-byte disk` });
        stats.reads++;
        stats.bytesRead += m.length;
        inFlight++;
        disk
          .read(m.offset, m.length)
          .then(
            (bytes) => send({ t: 'read', id: m.id, bytes }),
            (err: Error) => send({ t: 'read', id: m.id, error: err.message }),
          )
          .finally(() => inFlight--);
        return;
      }
      // Everything else in order: a slow write holds the next message back.
      chain = chain
        .then(async () => {
          if (settled) return;
          if (m.t === 'done') return finish();
          if (m.t === 'error') return finish(new SandboxFailure(m.kind, m.message));
          await onMessage(m);
          if (m.t === 'data') send({ t: 'ack' });
        })
        .catch((err: Error) => finish(err));
    });
    send({ t: 'job', job });
  });
}
