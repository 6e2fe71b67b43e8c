/**
 * The mover's side of systemd's notify protocol (deploy/lifeboat-mover.service:
 * Type=notify, WatchdogSec, NotifyAccess=all): READY=1 once it polls for work, WATCHDOG=1
 * from its event loop every half of WATCHDOG_USEC (a blocked or hung loop stops the pings
 * and systemd restarts the mover), STATUS= with the slots in use, STOPPING=1 when it drains.
 *
 * NOTIFY_SOCKET is a unix datagram socket, which Node cannot send to without a native
 * addon; so each message is one run of systemd's own `systemd-notify` (in the systemd
 * package, on every machine systemd runs). It waits (its default barrier) until the
 * service manager has read the message, so systemd can still attribute the short-lived
 * sender to the service's cgroup: hence NotifyAccess=all in the unit. One run per ping
 * (every 30 s with WatchdogSec=60) costs a few milliseconds of CPU.
 */
import { execFile } from 'node:child_process';
import type { Logger } from './worker.ts';

export interface NotifierOptions {
  /** The process environment: NOTIFY_SOCKET, WATCHDOG_USEC, WATCHDOG_PID as systemd sets them. */
  env: NodeJS.ProcessEnv;
  logger: Logger;
  /** The program that sends one message (default `systemd-notify` on PATH). */
  program?: string;
  pid?: number;
}

export class SystemdNotifier {
  private readonly o: NotifierOptions;
  private timer: NodeJS.Timeout | undefined;
  private sending = false;
  private failing = false;

  private constructor(o: NotifierOptions) {
    this.o = o;
  }

  /** A notifier when systemd started the process with NOTIFY_SOCKET set, else undefined (not under systemd, or Type≠notify). */
  static fromEnv(o: NotifierOptions): SystemdNotifier | undefined {
    return o.env.NOTIFY_SOCKET ? new SystemdNotifier(o) : undefined;
  }

  /** The watchdog period systemd asked for, halved as sd_watchdog_enabled(3) advises; undefined when no watchdog applies to this process. */
  watchdogIntervalMs(): number | undefined {
    const usec = Number(this.o.env.WATCHDOG_USEC);
    if (!Number.isFinite(usec) || usec <= 0) return undefined;
    const pid = this.o.env.WATCHDOG_PID;
    if (pid && Number(pid) !== (this.o.pid ?? process.pid)) return undefined;
    return Math.max(1, Math.floor(usec / 2000));
  }

  /** Sends `fields` (READY=1, STATUS=..., ...) as one message; never throws: a failure is logged once until a send works again. */
  send(fields: Record<string, string>): Promise<void> {
    const args = Object.entries(fields).map(([k, v]) => `${k}=${v.replace(/\n/g, ' ')}`);
    return new Promise((ok) => {
      execFile(this.o.program ?? 'systemd-notify', args, { env: this.o.env, timeout: 10_000 }, (err, _stdout, stderr) => {
        if (err && !this.failing) {
          this.failing = true;
          this.o.logger.error('systemd.notify_failed', {
            message: args.join(' '),
            error: `${err.message.split('\n')[0]}${stderr ? `: ${stderr.trim()}` : ''}`,
            next: "install systemd-notify (package systemd) or unset NOTIFY_SOCKET; without pings the unit's watchdog restarts the mover",
          });
        } else if (!err && this.failing) {
          this.failing = false;
          this.o.logger.info('systemd.notify_recovered', {});
        }
        ok();
      });
    });
  }

  /** READY=1, then WATCHDOG=1 (with the status) every half watchdog period from this event loop, until `stop`. */
  async ready(status: () => string): Promise<void> {
    await this.send({ READY: '1', STATUS: status() });
    const every = this.watchdogIntervalMs();
    if (every === undefined) return;
    this.o.logger.info('systemd.watchdog', { everyMs: every });
    this.timer = setInterval(() => {
      // A ping still on its way (the manager is slow to read): the next tick tries again.
      if (this.sending) return;
      this.sending = true;
      void this.send({ WATCHDOG: '1', STATUS: status() }).finally(() => {
        this.sending = false;
      });
    }, every);
    this.timer.unref();
  }

  /** STOPPING=1: the mover drains; watchdog pings go on until the process exits (a drain may take the whole grace time). */
  stopping(status: string): Promise<void> {
    return this.send({ STOPPING: '1', STATUS: status });
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
