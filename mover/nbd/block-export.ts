/**
 * What the NBD server (server.ts) serves: a read-only {@link BlockExport}, and the error
 * with which its reads fail.
 */
import type { BlockDescriptor } from './transmission-wire.ts';

/** A read-only block device a server exports. */
export interface BlockExport {
  readonly size: number;
  /** Shown by NBD_INFO_DESCRIPTION. */
  readonly description?: string;
  /** Exactly `length` bytes at `offset` (inside the export); rejects with {@link ExportIoError} when they cannot be read correctly. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * `base:allocation` of [offset, offset + length): descriptors covering exactly that range,
   * in order (a promise where the export looks them up, e.g. in a manifest read piece by
   * piece); rejects with {@link ExportIoError} when they cannot be told.
   */
  allocation(offset: number, length: number): BlockDescriptor[] | Promise<BlockDescriptor[]>;
}

/** A read the export could not serve: the client gets `errno` (EIO by default) and the message, the server lives on. */
export class ExportIoError extends Error {
  readonly errno: number;
  constructor(message: string, errno = Errno.EIO, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ExportIoError';
    this.errno = errno;
  }
}

/** The error values this server sends (the spec's, Linux numbering). */
export const Errno = { EPERM: 1, EIO: 5, ENOMEM: 12, EINVAL: 22, ENOSPC: 28, EOVERFLOW: 75, ENOTSUP: 95, ESHUTDOWN: 108 } as const;

export interface ServerLogger {
  info(event: string, fields?: Record<string, unknown>): void;
  error(event: string, fields?: Record<string, unknown>): void;
}
