/**
 * An index object's checked plaintext kept in a file of a local folder instead of in
 * memory (kopia keeps its index blobs on local disk too): a mover's resident index is then
 * its hash table only (repository-index.ts), ~7 bytes per chunk, where the plaintexts
 * held in memory cost 40 more. Lookups read the few bytes they compare with `pread`
 * (no mmap: mapped pages would count in the process's RSS again), from the page cache
 * while the machine has memory to spare.
 *
 * The file is unlinked as soon as it is made: only its descriptor reaches it, so nothing
 * is left behind when the process dies, however it dies, and index objects that garbage
 * collection replaced stay readable for a backup still using an older index. The
 * descriptor is closed (and the space freed) once no index refers to the listing.
 */
import { closeSync, open, readSync, unlink, write } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { IndexListing } from './packs.ts';

const openFile = promisify(open);
const unlinkFile = promisify(unlink);
const writeFile = promisify(write);

const folderUnusable = (dir: string, what: string, err: unknown) =>
  new Error(
    `cannot keep ${what} in the local folder ${dir} (a mover's repository index lives there, not in memory): ${(err as Error).message}. Free space there, or point LIFEBOAT_WORK_DIR at a writable folder with room`,
  );

/** Closes the descriptor of a listing no longer referred to. */
const closer = new FinalizationRegistry<number>((fd) => {
  try {
    closeSync(fd);
  } catch {
    // already closed: nothing to free
  }
});

/** What a lookup reads (one entry, or a pack's head): reads are synchronous, so one buffer serves them all. */
const scratch = Buffer.alloc(64);

/** The chunk entries of an index object whose plaintext (`encodeIndex` format) is in a local file. */
export class SpilledListing {
  readonly entryStart: Uint32Array;
  readonly firstEntryByte: Uint32Array;
  /** Bytes of the plaintext. */
  readonly byteLength: number;
  private readonly fd: number;
  private readonly what: string;

  private constructor(fd: number, listing: IndexListing, what: string) {
    this.fd = fd;
    this.what = what;
    this.entryStart = listing.entryStart;
    this.firstEntryByte = listing.firstEntryByte;
    this.byteLength = listing.bytes.length;
    closer.register(this, fd);
  }

  /**
   * Writes `listing`'s plaintext to a new file in `dir` (which must exist), unlinked at
   * once. A folder that cannot take it (full, read-only, gone) fails naming the folder.
   */
  static async write(dir: string, listing: IndexListing, what: string): Promise<SpilledListing> {
    const path = join(dir, `${process.pid}-${randomBytes(8).toString('hex')}.lbix`);
    let fd: number | undefined;
    try {
      fd = await openFile(path, 'wx+', 0o600);
      await unlinkFile(path);
      const b = listing.bytes;
      for (let done = 0; done < b.length; ) done += (await writeFile(fd, b, done, b.length - done, done)).bytesWritten;
    } catch (err) {
      if (fd !== undefined) closeSync(fd);
      throw folderUnusable(dir, what, err);
    }
    return new SpilledListing(fd, listing, what);
  }

  /** Makes `dir` when missing; a path that cannot be a folder fails naming it. */
  static async prepare(dir: string): Promise<void> {
    await mkdir(dir, { recursive: true }).catch((err: unknown) => {
      throw folderUnusable(dir, 'the repository index', err);
    });
  }

  get entries(): number {
    return this.entryStart[this.entryStart.length - 1]!;
  }

  get packs(): number {
    return this.firstEntryByte.length;
  }

  /** Bytes `at`…`at + length` of the plaintext (at most 64): a view valid until the next read of any spilled listing. */
  read(at: number, length: number): Buffer {
    return this.readInto(scratch.subarray(0, length), at);
  }

  /**
   * The whole plaintext, read from the file into a buffer of its own, or into `reuse` when
   * it is large enough (a view of it: an index build reads every listing in turn into one
   * buffer, where a buffer each left the listings already read as garbage outside V8's
   * heap until a collection came round).
   */
  plaintext(reuse?: Buffer): Buffer {
    const into = reuse && reuse.length >= this.byteLength ? reuse.subarray(0, this.byteLength) : Buffer.allocUnsafe(this.byteLength);
    return this.readInto(into, 0);
  }

  private readInto(into: Buffer, at: number): Buffer {
    for (let done = 0; done < into.length; ) {
      const n = readSync(this.fd, into, done, into.length - done, at + done);
      if (n === 0)
        throw new Error(
          `the local copy of ${this.what} ends at byte ${at + done}, it was written with ${this.byteLength}: was the mover's index folder changed under it?`,
        );
      done += n;
    }
    return into;
  }
}
