import { Metrics } from '@aws-lambda-powertools/metrics';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { z } from 'zod';
import { errorClasses } from '../contracts/errors.ts';
import type { Backup, Catalog } from '../functions/catalog/catalog.ts';
import { lambdaHandler, powertools } from '../functions/commons/lambda.ts';
import { vmJob } from '../contracts/jobs.ts';
import { commitInput, recordFailureInput, verifyOutput } from '../contracts/backup-steps.ts';
import { lambdaFunctions } from '../contracts/functions.ts';
import { publishRunMetrics, recoveryPointAgeHours, summarizeRun, summaryMetrics } from '../functions/backup/summarize.ts';

const context = {
  functionName: 'Test',
  awsRequestId: 'req-1',
  invokedFunctionArn: 'arn:aws:lambda:us-east-1:000000000000:function:Test',
  getRemainingTimeInMillis: () => 60_000,
};
const job = {
  runId: 'run-1',
  policyId: 'p',
  backupId: 'b',
  vmId: 'vm-1',
  host: 'esx-01',
  moverGroup: 'site-a',
  source: '/vms/vm-1',
  repository: { bucket: 'repo', chunkSize: 1 << 20 },
  parentBackupId: null,
  parentManifests: {},
  slotScopes: [{ scope: 'host:esx-01', limit: 2 }],
  slot: null,
  snapshot: null,
  segmentBytes: 64 << 20,
};

afterEach(() => {
  vi.restoreAllMocks();
});

describe('lambdaHandler', () => {
  it('passes the parsed input to the body, unknown fields included', async () => {
    const seen: unknown[] = [];
    const h = lambdaHandler('Probe', vmJob, async (input) => {
      seen.push(input);
      return input.vmId;
    });
    const input = { ...job, carried: { along: 1 } };
    await expect(h(input, context as never)).resolves.toBe('vm-1');
    expect(seen[0]).toMatchObject({ carried: { along: 1 } });
  });

  it('rejects an input that misses a field with Function.BadInput naming the function and the field', async () => {
    const body = vi.fn(async () => 'never');
    const h = lambdaHandler('AcquireSlot', vmJob, body);
    const { host: _host, ...noHost } = job;
    const err = await h({ ...noHost, slotScopes: [{ scope: 'host:x', limit: 0 }] } as never, context as never).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).name).toBe('Function.BadInput');
    expect(Object.hasOwn(errorClasses, (err as Error).name)).toBe(true);
    expect((err as Error).message).toContain('AcquireSlot');
    expect((err as Error).message).toContain('host');
    expect((err as Error).message).toContain('slotScopes[0].limit');
    expect(body).not.toHaveBeenCalled();
  });

  it('keeps the name of an error the body throws, so Retry/Catch still match it', async () => {
    const h = lambdaHandler('Probe', z.object({}), async () => {
      const e = new Error('full');
      e.name = 'Slot.Unavailable';
      throw e;
    });
    await expect(h({}, context as never)).rejects.toMatchObject({ name: 'Slot.Unavailable' });
  });

  it('logs no "no metrics" warning for a function that publishes none, and flushes EMF for one that does', async () => {
    const out: string[] = [];
    const write = process.stdout.write.bind(process.stdout);
    vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array, ...rest: unknown[]) => {
      out.push(String(chunk));
      return write(chunk, ...(rest as []));
    });
    const warn = vi.spyOn(powertools().logger, 'warn');
    await lambdaHandler('Quiet', z.object({}), async () => 'ok')({}, context as never);
    await lambdaHandler('Counting', z.object({}), async (_i, { metrics }) => {
      metrics.addMetric('Probe', 'Count', 1);
      return 'ok';
    })({}, context as never);
    expect(warn.mock.calls.flat().join(' ')).not.toContain('No application metrics');
    expect(out.join('')).toContain('"Probe":1');
  });

  it('builds every registered handler with lambdaHandler (Powertools logger, metrics and parser)', async () => {
    for (const [id, def] of Object.entries(lambdaFunctions)) {
      const mod = (await import(`../${def.entry}`)) as Record<string, { lifeboatFunction?: string }>;
      const h = mod[def.handler];
      expect(h?.lifeboatFunction, `${id}: ${def.entry} ${def.handler} must be built with lambdaHandler`).toBe(id);
      const err = await (h as unknown as (e: unknown, c: unknown) => Promise<unknown>)('not an object', context).catch((e: Error) => e);
      expect((err as Error).name, `${id} must validate its input with lambdaHandler`).toBe('Function.BadInput');
    }
  });
});

describe('Summarize metrics', () => {
  const backups: Record<string, Partial<Backup>[]> = {
    'vm-fresh': [{ status: 'committed', committedAt: '2026-11-23T09:00:00Z', startedAt: '2026-11-23T08:50:00Z' }],
    'vm-stale': [
      { status: 'failed', startedAt: '2026-11-23T08:00:00Z' },
      { status: 'committed', committedAt: '2026-11-20T10:00:00Z', startedAt: '2026-11-20T09:00:00Z' },
    ],
    'vm-never': [
      { status: 'failed', startedAt: '2026-11-23T08:00:00Z' },
      { status: 'failed', startedAt: '2026-11-22T10:00:00Z' },
    ],
  };
  const catalog = { listBackups: async (vmId: string) => backups[vmId] ?? [] } as unknown as Catalog;
  const now = () => new Date('2026-11-23T10:00:00Z');

  it('ages each VM from its newest committed backup, or from its first attempt when none committed', async () => {
    const ages = await recoveryPointAgeHours(['vm-fresh', 'vm-stale', 'vm-never', 'vm-unknown'], { catalog, now });
    expect(ages).toEqual({ 'vm-fresh': 1, 'vm-stale': 72, 'vm-never': 24 });
  });

  it('totals the disks of a run, also the stats of a mover that did not report the holes it skipped', () => {
    const stats = (bytesUnallocated?: number) => ({
      bytesScanned: 100,
      bytesNew: 10,
      bytesZero: 50,
      ...(bytesUnallocated === undefined ? {} : { bytesUnallocated }),
      bytesUploaded: 10,
      bytesStored: 5,
      chunks: 10,
      zeroChunks: 5,
      parentChunks: 4,
      dedupedChunks: 0,
      uploadedChunks: 1,
      seconds: 1,
    });
    const disks = [
      { diskId: 'a', sizeBytes: 100, manifestKey: 'm/a', stats: stats(40) },
      { diskId: 'b', sizeBytes: 100, manifestKey: 'm/b', stats: stats() },
    ];
    const summary = summarizeRun({
      runId: 'r',
      policyId: 'p',
      backups: [
        { vmId: 'vm', backupId: 'b', status: 'committed' as const, runId: 'r', policyId: 'p', parentBackupId: null, startedAt: '2026-11-23T00:00:00Z', disks },
      ],
    });
    expect(summary.totals).toMatchObject({ bytesScanned: 200, bytesZero: 100, bytesUnallocated: 40, uploadedChunks: 2 });
  });

  it('emits OldestRecoveryPointAgeHours per policy as EMF, the metric the RPO alarm watches', async () => {
    const metrics = new Metrics({ namespace: 'LifeboatTest', serviceName: 'lifeboat' });
    const summary = summarizeRun({
      runId: 'r',
      policyId: 'nightly',
      backups: [
        {
          vmId: 'vm-fresh',
          backupId: 'b1',
          status: 'committed' as const,
          runId: 'r',
          policyId: 'p',
          parentBackupId: null,
          startedAt: '2026-11-23T00:00:00Z',
          disks: [],
        },
        {
          vmId: 'vm-stale',
          backupId: 'b2',
          status: 'failed' as const,
          runId: 'r',
          policyId: 'p',
          parentBackupId: null,
          startedAt: '2026-11-23T00:00:00Z',
          error: { Error: 'Mover.SourceUnavailable', Cause: '' },
        },
      ],
    });
    publishRunMetrics(metrics, summary, await recoveryPointAgeHours(['vm-fresh', 'vm-stale'], { catalog, now }));
    const emf = metrics.serializeMetrics() as unknown as Record<string, unknown> & {
      _aws: { CloudWatchMetrics: { Namespace: string; Dimensions: string[][]; Metrics: { Name: string }[] }[] };
    };
    const directive = emf._aws.CloudWatchMetrics[0]!;
    expect(directive.Namespace).toBe('LifeboatTest');
    expect(directive.Dimensions[0]).toContain('policyId');
    expect(directive.Metrics.map((m) => m.Name)).toEqual(expect.arrayContaining(Object.values(summaryMetrics)));
    expect(emf).toMatchObject({
      policyId: 'nightly',
      [summaryMetrics.oldestRecoveryPointAgeHours]: 72,
      [summaryMetrics.vmsFailed]: 1,
      [summaryMetrics.vmsCommitted]: 1,
    });
  });
});

describe('the Backup steps after the transfer (contracts/backup-steps.ts)', () => {
  const stats = {
    bytesScanned: 1 << 20,
    bytesNew: 1 << 20,
    bytesZero: 0,
    bytesUploaded: 1 << 20,
    bytesStored: 900_000,
    chunks: 1,
    zeroChunks: 0,
    parentChunks: 0,
    dedupedChunks: 0,
    uploadedChunks: 1,
    seconds: 0.5,
  };
  const disks = [{ diskId: 'vda', sizeBytes: 1 << 20, manifestKey: 'manifests/b/vda', stats }];

  it("Commit's input takes what Verify answers, beside the job and its disks (a Verify without packs counts 0)", async () => {
    const answer = verifyOutput.parse({ chunksChecked: 1, bytesChecked: 900_000, checksumsCompared: 1 });
    expect(answer.packsChecked).toBe(0);
    const seen: unknown[] = [];
    const h = lambdaHandler('Commit', commitInput, async (input) => {
      seen.push(input);
      return input.verify.chunksChecked;
    });
    await expect(h({ ...job, disks, verify: answer, carried: 1 }, context as never)).resolves.toBe(1);
    expect(seen[0]).toMatchObject({ vmId: 'vm-1', disks: [{ diskId: 'vda' }], verify: answer, carried: 1 });
  });

  it('refuses a Commit input whose Verify answer lacks a count, naming the field', async () => {
    const body = vi.fn(async () => 'never');
    const h = lambdaHandler('Commit', commitInput, body);
    const err = await h({ ...job, disks, verify: { chunksChecked: 1, checksumsCompared: 0 } }, context as never).catch((e: Error) => e);
    expect((err as Error).name).toBe('Function.BadInput');
    expect((err as Error).message).toContain('verify.bytesChecked');
    expect(body).not.toHaveBeenCalled();
  });

  it("refuses Verify's answer with a negative count on the sending side", () => {
    const r = verifyOutput.safeParse({ chunksChecked: -1, bytesChecked: 0, checksumsCompared: 0, packsChecked: 0 });
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.path).toEqual(['chunksChecked']);
  });

  it("RecordFailure takes the job and the Catch's { Error, Cause }, a missing Cause read as ''", () => {
    const input = recordFailureInput.parse({ ...job, error: { Error: 'Mover.SourceUnavailable' } });
    expect(input.error).toEqual({ Error: 'Mover.SourceUnavailable', Cause: '' });
    expect(recordFailureInput.safeParse({ ...job, error: { Cause: 'x' } }).error?.issues[0]?.path).toEqual(['error', 'Error']);
  });
});
