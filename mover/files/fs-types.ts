/**
 * The one interface every file-system reader of this folder offers, and the limits that
 * keep a hostile image from making a reader hang or grow without bound. Runs in the
 * sandboxed child.
 */

export type EntryType = 'file' | 'dir' | 'symlink' | 'other';

/** One directory entry with its metadata, as `files ls` prints it and `files get` keeps it. */
export interface Entry {
  name: string;
  type: EntryType;
  size: number;
  /** Permission bits (07777); synthesised for FAT (0755 directories, 0644 files, 0444 read-only). */
  mode: number;
  uid: number;
  gid: number;
  /** Milliseconds since the epoch (ext: nanoseconds rounded down to ms; FAT: 2-second steps, local time read as UTC). */
  mtimeMs: number;
  atimeMs: number;
  /** Symbolic links: the target, as stored. */
  target?: string;
}

/** A file system opened on a partition: nodes are the reader's own handles (an inode number, a cluster chain). */
export interface FileSystem<N = unknown> {
  /** e.g. 'ext4', 'vfat (FAT32)'. */
  readonly kind: string;
  root(): Promise<{ node: N; entry: Entry }>;
  /** A key naming the node (an inode number, a first cluster): a directory met twice is a loop. */
  nodeId(node: N): string;
  /** The entries of a directory, without '.' and '..', in the order stored. */
  list(dir: N, path: string): Promise<{ node: N; entry: Entry }[]>;
  /**
   * The file's bytes from `offset` (at most `length`); `null` for a hole (no data stored:
   * zeros), so extraction can leave holes in the copy.
   */
  read(file: N, offset: number, length: number, path: string): Promise<Uint8Array | null>;
  /**
   * Where the file's data is stored (byte ranges, in order), when the reader knows it
   * cheaply: extraction then reads only those and never walks a huge sparse file's holes
   * one piece at a time. Undefined: read every piece.
   */
  dataRanges?(file: N, path: string): Promise<{ offset: number; length: number }[] | undefined>;
}

/** Bounds against hostile images; a reader that reaches one says which and where. */
export const LIMITS = Object.freeze({
  /** Entries of one directory. */
  dirEntries: 1_000_000,
  /** Bytes of one directory. */
  dirBytes: 256 * 1024 * 1024,
  /** Nesting of directories walked by `get`. */
  depth: 256,
  /** Levels of an ext4 extent tree (the kernel allows 5). */
  extentDepth: 5,
  /** Extents of one file. */
  extents: 4_000_000,
  /** A symbolic link's target. */
  symlinkBytes: 4096,
  /** Path components of a request. */
  pathComponents: 4096,
});
