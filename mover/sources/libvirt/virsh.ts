/**
 * libvirt through `virsh`: every call is a child process with the connection URI, a
 * deadline and the caller's abort signal. No Node binding to libvirt is maintained (the
 * npm ones are unmaintained native addons); virsh is libvirt's own client, speaks every
 * transport (local socket, ssh, tls) and takes XML documents, which is all this driver
 * needs. Its failures become `SourceUnavailable` carrying virsh's own message.
 */
import { execFile } from 'node:child_process';
import { SourceUnavailable } from '../../../contracts/errors.ts';

export interface VirshOptions {
  /** The virsh program (default: `virsh` on the PATH). */
  virsh?: string;
  /** Deadline per call (default 120 s: a backup-begin with quiesce may take a while). */
  timeoutMs?: number;
}

/** A failed virsh call: its message is virsh's, so callers can tell a missing domain from a lost connection. */
export class VirshError extends SourceUnavailable {
  readonly stderr: string;
  constructor(message: string, stderr: string, cause?: unknown) {
    super(message, cause);
    this.stderr = stderr;
  }
}

export class Virsh {
  readonly uri: string;
  private readonly options: VirshOptions;

  constructor(uri: string, options: VirshOptions = {}) {
    this.uri = uri;
    this.options = options;
  }

  /** Runs `virsh -c URI ARGS...` and returns its standard output. */
  run(args: string[], opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<string> {
    const program = this.options.virsh ?? 'virsh';
    return new Promise((resolve, reject) => {
      execFile(
        program,
        ['-q', '-c', this.uri, ...args],
        {
          timeout: opts.timeoutMs ?? this.options.timeoutMs ?? 120_000,
          killSignal: 'SIGKILL',
          maxBuffer: 64 * 1024 * 1024,
          ...(opts.signal ? { signal: opts.signal } : {}),
        },
        (err, stdout, stderr) => {
          if (!err) return resolve(stdout);
          const e = err as NodeJS.ErrnoException & { killed?: boolean };
          const text = String(stderr)
            .trim()
            .replace(/^error: /gm, '')
            .replace(/\n+/g, '; ');
          if (e.code === 'ENOENT')
            return reject(
              new VirshError(`virsh is not installed on this mover (Debian: apt-get install libvirt-clients); it is needed to reach ${this.uri}`, '', err),
            );
          if (e.name === 'AbortError') return reject(err);
          if (e.killed)
            return reject(
              new VirshError(
                `virsh ${args[0]} on ${this.uri} did not answer within ${Math.round((opts.timeoutMs ?? this.options.timeoutMs ?? 120_000) / 1000)} s; is libvirtd running and reachable?`,
                text,
                err,
              ),
            );
          if (/failed to connect to the hypervisor/i.test(text)) {
            return reject(
              new VirshError(
                `cannot reach libvirt at ${this.uri} (${text}): is libvirtd running there, and may this mover connect? Check the host's "uri" in the configuration`,
                text,
                err,
              ),
            );
          }
          reject(new VirshError(`virsh ${args[0]} on ${this.uri} failed: ${text || e.message}`, text, err));
        },
      );
    });
  }
}

/** Whether a virsh failure says the domain does not exist (as opposed to an unreachable host). */
export const isNoDomain = (err: unknown) => err instanceof VirshError && /failed to get domain|Domain not found|no domain with matching/i.test(err.stderr);
