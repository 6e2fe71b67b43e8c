/**
 * The embedded stack's alert delivery: every `checkSeconds` it asks the operator API for the
 * current alerts (functions/operator/alerts.ts derives them) and POSTs each one not sent before, as JSON, to the
 * configured webhook (`notifications.webhook.url`). Sent alert ids are kept in
 * `<dataDir>/alerts-sent.json`, so a restart does not repeat them; a delivery that fails
 * (refused, timed out, not 2xx) is logged and tried again at the next check, nothing is lost.
 * In AWS the same conditions are alarms and an EventBridge rule to the SNS topic.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Alert } from '../contracts/operator.ts';

export interface AlertNotifierOptions {
  dataDir: string;
  url: string;
  checkSeconds: number;
  /** The current alerts (the operator API's `/api/alerts`). */
  alerts(): Promise<Alert[]>;
  /** Told of each delivery and each failure (the stack logs them). */
  onEvent?: (event: 'alert.sent' | 'alert.failed', fields: Record<string, unknown>) => void;
}

export class AlertNotifier {
  private readonly o: AlertNotifierOptions;
  private readonly file: string;
  private timer: NodeJS.Timeout | undefined;
  private checking: Promise<void> = Promise.resolve();

  constructor(o: AlertNotifierOptions) {
    this.o = o;
    this.file = join(o.dataDir, 'alerts-sent.json');
  }

  start(): void {
    this.timer = setInterval(() => void this.check(), this.o.checkSeconds * 1000);
    this.timer.unref();
  }

  /** One check now (after any running one); resolves when its deliveries are done. */
  check(): Promise<void> {
    this.checking = this.checking.then(() => this.deliverNew()).catch((err: Error) => this.o.onEvent?.('alert.failed', { error: err.message }));
    return this.checking;
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.checking;
  }

  private async deliverNew(): Promise<void> {
    const sent = new Set<string>(JSON.parse(await readFile(this.file, 'utf8').catch(() => '[]')) as string[]);
    const fresh = (await this.o.alerts()).filter((a) => !sent.has(a.id));
    for (const alert of fresh) {
      if (await this.post(alert)) sent.add(alert.id);
    }
    if (fresh.length) await writeFile(this.file, JSON.stringify([...sent]));
  }

  private async post(alert: Alert): Promise<boolean> {
    try {
      const res = await fetch(this.o.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ source: 'lifeboat', stack: 'embedded', alert }),
        signal: AbortSignal.timeout(10_000),
      });
      await res.body?.cancel();
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      this.o.onEvent?.('alert.sent', { id: alert.id, kind: alert.kind });
      return true;
    } catch (err) {
      this.o.onEvent?.('alert.failed', { id: alert.id, url: this.o.url, error: (err as Error).message, next: `tried again in ${this.o.checkSeconds} s` });
      return false;
    }
  }
}
