/**
 * Replication lag on the embedded stack: a VM's newest restore point at the DR site (a real
 * replication through a DR mover into the DR repository on its own s3rver) is shown with
 * its age against the policy's DR RPO by the operator API (`lifeboat vms`, `--json`, the
 * console's VM page), and once it is older than the DR RPO, the `dr-rpo` alert reaches the
 * configured webhook (a real local HTTP server), once.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { ListExecutionsCommand } from '@aws-sdk/client-sfn';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { vmsTable } from '../cli/listings.ts';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import type { Alert, VmRow } from '../contracts/operator.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';
import { runExecution, waitForExecution } from '../local/client.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import { startWebhook } from './helpers/webhook.ts';

const MiB = 1024 * 1024;
let t: TestStack;
const received: Alert[] = [];
let closeHook: () => Promise<void>;

/** An RPO of 1.8 s, so a DR RPO (twice it) of 3.6 s: the restore point just replicated is past it moments later. */
const RPO_HOURS = 0.0005;

beforeAll(async () => {
  const hook = await startWebhook(received, { keep: (body) => (body as { alert: Alert }).alert });
  closeHook = hook.close;
  const example = loadConfig();
  const config: LifeboatConfig = {
    ...example,
    policies: [
      ...example.policies,
      {
        id: 'p-lag',
        vms: { ids: ['vm-lag'] },
        schedule: { expression: 'cron(0 3 * * ? *)', timeZone: 'UTC' },
        retention: { keepLast: 3 },
        repository: 'primary',
        replicateTo: 'dr',
        rpoHours: RPO_HOURS,
      },
    ],
    notifications: { webhook: { url: hook.url, checkSeconds: 1 } },
  };
  t = await startTestStack({ groups: { 'site-a': 1, dr: 1 }, config });
  const vmDir = join(t.dir, 'vms', 'vm-lag');
  await createVmFolder(vmDir, { name: 'vm-lag', disks: [{ id: 'disk0', sizeBytes: 4 * MiB }] }, seededRng(5));
  await t.stack.catalog.putVm({ vmId: 'vm-lag', host: 'esx-02', source: vmDir });
}, 600_000);
afterAll(async () => {
  await t?.close();
  await closeHook?.();
});

const vms = async () => (await (await fetch(`${t.stack.endpoints.console}/api/vms`)).json()) as VmRow[];

it("shows each VM's replication lag against its DR RPO, and alerts at the webhook once the newest DR restore point is older than the DR RPO", async () => {
  const before = (await vms()).find((v) => v.vmId === 'vm-lag')!;
  expect(before).toMatchObject({ drRpoHours: 2 * RPO_HOURS, drLagHours: null, drRestorePoint: null, drRpo: 'never' });

  const d = await runExecution(t.sfn, t.stack.endpoints.backupStateMachineArn, { policyId: 'p-lag' }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  const run = JSON.parse(d.output!) as RunSummary;
  // The run starts its replication to the DR repository by itself: named after the run.
  const name = `replicate-${createHash('sha1').update(run.runId).digest('hex')}`;
  let arn: string | undefined;
  for (let i = 0; i < 100 && !arn; i++) {
    const { executions } = await t.sfn.send(new ListExecutionsCommand({ stateMachineArn: t.stack.endpoints.stateMachines.ReplicatePolicy! }));
    arn = executions?.find((x) => x.name === name)?.executionArn;
    if (!arn) await new Promise((r) => setTimeout(r, 100));
  }
  const r = await waitForExecution(t.sfn, arn!, { pollMs: 200 });
  expect(r.status, r.cause).toBe('SUCCEEDED');

  const row = (await vms()).find((v) => v.vmId === 'vm-lag')!;
  expect(row.drRestorePoint).toBe(run.vms[0]!.backupId);
  expect(row.drLagHours).toBeGreaterThanOrEqual(0);
  expect(row.drLagHours).toBeLessThan(0.1);

  // Past the DR RPO a few seconds later: the alert arrives once, naming the VM, the lag and what to look at.
  // (While the replication ran, the backup may already have been older than the DR RPO with no restore point there: that is alerted too, as its own alert.)
  const id = `dr-rpo:vm-lag:${row.drRestorePoint}`;
  const until = Date.now() + 60_000;
  while (!received.some((a) => a.id === id)) {
    if (Date.now() > until) throw new Error(`no ${id} alert at the webhook; got ${JSON.stringify(received.map((a) => a.id))}`);
    await new Promise((ok) => setTimeout(ok, 250));
  }
  const alert = received.find((a) => a.id === id)!;
  expect(alert).toMatchObject({ kind: 'dr-rpo', subject: 'vm-lag' });
  expect(alert.message).toMatch(
    /^VM vm-lag's replication lags: its newest restore point at the DR site is [\d.]+ h old \(DR RPO 0\.001 h\)\. Next: `lifeboat restore-points --vm vm-lag`/,
  );
  const early = received.find((a) => a.id === 'dr-rpo:vm-lag:none');
  if (early) expect(early.message).toMatch(/^VM vm-lag has no restore point at the DR site although it has backups older than its DR RPO \(0\.001 h\)/);
  await new Promise((ok) => setTimeout(ok, 2500)); // two more checks: not sent again
  expect(received.filter((a) => a.id === id)).toHaveLength(1);

  // The same rows in the CLI's table and the console's VM page.
  const late = (await vms()).find((v) => v.vmId === 'vm-lag')!;
  expect(late.drRpo).toBe('late');
  const lines = vmsTable([late]);
  expect(lines[0]).toMatch(/DR RPO\s+DR LAG\s+DR STATUS\s+FAILED OVER$/);
  expect(lines[1]).toMatch(/0\.001 h\s+\d[\d.]* h\s+LATE\s+-$/);
  const page = await (await fetch(`${t.stack.endpoints.console}/vms`)).text();
  expect(page).toMatch(/<span class="bad" data-dr="late">[^<]+\(DR RPO 0\.001 h\)<\/span>/);
}, 400_000);
