/**
 * Alerts that reach someone, on the embedded stack: each kind (a mover group with no live
 * mover, a failed run, a VM past its RPO, damage found by DeepVerify) arrives once at the
 * configured webhook (`notifications.webhook`, a real local HTTP server here), is listed
 * by `GET /api/alerts`, and a webhook that refuses is tried again (nothing lost).
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../core/config.ts';
import { objectKeys } from '../repository/format.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { chunkLocation } from '../repository/packs.ts';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { runExecution } from '../local/client.ts';
import { stackRepositoryKeys } from './helpers/stack-keys.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';
import { startWebhook } from './helpers/webhook.ts';
import { join } from 'node:path';

const MiB = 1024 * 1024;
let t: TestStack;
const received: { alert: { id: string; kind: string; subject: string; message: string } }[] = [];
let refuse = true;
let closeHook: () => Promise<void>;

const arn = (name: string) => t.stack.endpoints.stateMachines[name]!;
const waitFor = async (what: string, ok: () => boolean, ms = 60_000) => {
  const until = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > until) throw new Error(`no webhook call for ${what} in ${ms} ms; got ${JSON.stringify(received.map((r) => r.alert.id))}`);
    await new Promise((r) => setTimeout(r, 250));
  }
};
const of = (kind: string) => received.filter((r) => r.alert.kind === kind).map((r) => r.alert);

beforeAll(async () => {
  // The first delivery is refused: the notifier must try it again at its next check.
  const hook = await startWebhook(received, {
    keep: (body) => body as (typeof received)[number],
    status: () => {
      if (!refuse) return 204;
      refuse = false;
      return 503;
    },
  });
  closeHook = hook.close;
  const config = loadConfig();
  config.notifications = { webhook: { url: hook.url, checkSeconds: 1 } };
  t = await startTestStack({ movers: 1, config });
  const vmDir = join(t.dir, 'vms', 'vm-al');
  await createVmFolder(vmDir, { name: 'vm-al', disks: [{ id: 'disk0', sizeBytes: 8 * MiB }] }, seededRng(31));
  await t.stack.catalog.putVm({ vmId: 'vm-al', host: 'esx-02', source: vmDir });
}, 300_000);
afterAll(async () => {
  await t?.close();
  await closeHook?.();
});

it('a mover group with hosts and no mover: once, after a refused first delivery', async () => {
  await waitFor('mover-group-silent', () => of('mover-group-silent').some((a) => a.subject === 'site-b'));
  expect(of('mover-group-silent').find((a) => a.subject === 'site-b')!.message).toContain('mover group site-b has no mover registered');
  await new Promise((r) => setTimeout(r, 2500)); // two more checks: nothing sent twice
  const ids = received.map((r) => r.alert.id);
  expect(new Set(ids).size).toBe(ids.length);
}, 90_000);

it('a failed run', async () => {
  const d = await runExecution(t.sfn, arn('Backup'), { policyId: 'no-such-policy' }, { pollMs: 200 });
  expect(d.status).toBe('FAILED');
  const run = d.executionArn!.split(':').pop()!;
  await waitFor('run-failed', () => of('run-failed').some((a) => a.subject === run));
  expect(of('run-failed').find((a) => a.subject === run)!.message).toMatch(/run .* of policy no-such-policy FAILED: Catalog\.PolicyNotFound/);
}, 90_000);

it('a VM past its RPO', async () => {
  // An RPO of a few milliseconds: the backup is past it as soon as it is committed.
  await t.stack.catalog.putPolicy({ policyId: 'p-al', vmIds: ['vm-al'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1, rpoHours: 0.000_001 });
  const d = await runExecution(t.sfn, arn('Backup'), { policyId: 'p-al' }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  await waitFor('rpo', () => of('rpo').some((a) => a.subject === 'vm-al'));
  expect(of('rpo').find((a) => a.subject === 'vm-al')!.message).toMatch(/VM vm-al is past its RPO: its newest backup is [\d.]+ h old \(RPO 0\.000001 h\)/);
}, 120_000);

it('damage found by a deep verification', async () => {
  const b = (await t.stack.catalog.latestCommitted('vm-al'))!;
  const { store, keys } = await stackRepositoryKeys(t.stack.endpoints);
  const manifest = await decodeManifest(keys, (await store.get(objectKeys.manifest(b.backupId, 'disk0')))!, b.backupId, 'disk0', store);
  const id = manifest.chunks.find((c) => c !== null)!;
  const at = chunkLocation(manifest, id);
  const pack = (await store.get(at.key))!;
  pack[at.offset + Math.floor(at.length / 2)]! ^= 0x10;
  await store.put(at.key, pack);
  const d = await runExecution(t.sfn, arn('DeepVerify'), { vmId: 'vm-al', backupId: b.backupId, moverGroup: 'site-a' }, { pollMs: 200 });
  expect(d.status, d.cause).toBe('SUCCEEDED');
  await waitFor('damage', () => of('damage').some((a) => a.subject === `vm-al ${b.backupId}`));
  expect(of('damage')[0]!.message).toContain(`backup ${b.backupId} of VM vm-al is damaged (1 object(s), first ${at.key}`);
  const listed = (await (await fetch(`${t.stack.endpoints.console}/api/alerts`)).json()) as { kind: string }[];
  expect(new Set(listed.map((a) => a.kind))).toEqual(new Set(['mover-group-silent', 'run-failed', 'rpo', 'damage']));
}, 120_000);
