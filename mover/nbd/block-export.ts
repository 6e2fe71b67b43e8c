/**
 * What the NBD server (server.ts) serves: a read-only {@link BlockExport}, and the error
 * with which its reads fail; what a connection's session needs from its server and its transport.
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

/** What a session needs from its server. */
export interface SessionHost {
  readonly exports: ReadonlyMap<string, BlockExport>;
  readonly maxBlockBytes: number;
  readonly logger?: ServerLogger;
  served(bytes: number): void;
}

/** The transport under a session (a socket, or a test's recorder). */
export interface SessionIo {
  /** Writes the buffers in order (as one batch where the transport can), then calls `done`. */
  write(b: Buffer | readonly Buffer[], done?: () => void): void;
  /** Ends the connection after what was written (soft) or at once (hard). */
  end(hard: boolean): void;
  /** Stop/start delivering bytes (backpressure). */
  pause(): void;
  resume(): void;
}
