/**
 * What the file-system readers read from: a disk (or a partition of it) by random access.
 * The source is swappable: a backup's disk served from the repository
 * (`mover/recovery/export.ts`), a local image in tests, or — inside the sandbox — reads
 * forwarded over the pipe to the parent process.
 *
 * This file, like every reader in this folder, imports nothing but Node built-ins: it runs
 * in the sandboxed child (see README.md).
 */

/** Random access to `size` bytes: `read` returns exactly `length` bytes, or throws. */
export interface BlockReader {
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
}

/**
 * The guest's data does not make sense: a damaged or hostile file system, partition table
 * or path. The message names what was read, where, and why it was refused.
 */
export class FsCorrupt extends Error {
  override readonly name = 'FsCorrupt';
}

/** A request that cannot be met on a sound file system: a path that is not there, a file that is not a directory, ... */
export class FsNotFound extends Error {
  override readonly name = 'FsNotFound';
}

/** `length` bytes at `offset` of `base`, checked against the slice's bounds. */
export function slice(base: BlockReader, offset: number, size: number, what: string): BlockReader {
  if (offset < 0 || size < 0 || offset + size > base.size) throw new FsCorrupt(`${what} (bytes ${offset}+${size}) lies outside the ${base.size}-byte disk`);
  return {
    size,
    read(at, length) {
      if (at < 0 || length < 0 || at + length > size)
        return Promise.reject(
          new FsCorrupt(`${what}: a read of bytes ${at}+${length} lies past its end (${size} bytes): the file system points outside its partition`),
        );
      return base.read(offset + at, length);
    },
  };
}

/** Little-endian field access over bytes read from the guest (bounds are the Buffer's own). */
export function view(b: Uint8Array): Buffer {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}
