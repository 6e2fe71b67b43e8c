import { LifeboatError } from '../../contracts/errors.ts';

/**
 * The VM lab cannot run on this machine: a tool or package is missing (qemu, libvirt,
 * the Debian kernel, busybox, qemu-ga) or a daemon did not come up. Not retryable: the
 * machine needs the packages `.ci/run` installs.
 */
export class VmLabUnavailable extends LifeboatError {
  static readonly code = 'VmLab.Unavailable';
  constructor(message: string, cause?: unknown) {
    super(VmLabUnavailable.code, message, { retryable: false, cause });
  }
}

/** A guest did not print what was awaited on its console in time, or stopped first. */
export class GuestTimeout extends LifeboatError {
  static readonly code = 'VmLab.GuestTimeout';
  constructor(message: string, cause?: unknown) {
    super(GuestTimeout.code, message, { retryable: false, cause });
  }
}
