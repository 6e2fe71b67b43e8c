/**
 * The Deep verify workflow's functions: PlanDeepVerify resolves the backup and its
 * disks; RecordDeepVerify keeps the result, marks a damaged backup `damaged` in the
 * catalog (QuarantineDamage, `quarantine.ts`, then sets its damaged chunks aside) and
 * shapes the event the workflow emits; a full verification that finds a `damaged` backup
 * intact again (a later backup stored its quarantined chunks again: format 1 under the
 * same key, format 2 in a new pack that readers find through the repository's index)
 * marks it `committed` and clears those chunks' quarantine records (by each finding's
 * `chunkId`; a pack's key does not name the chunk).
 */
import { MetricUnit, type Metrics } from '@aws-lambda-powertools/metrics';
import { z } from 'zod';
import { text } from '../../contracts/zod.ts';
import { RecoveryRequestInvalid } from '../../contracts/recovery-errors.ts';
import { deepVerifiedDisk, deepVerifyJob, type DeepVerifyJob } from '../../contracts/recovery-jobs.ts';
import {
  DEFAULT_BOOT_CHECK,
  DEFAULT_RESTORE_TEST_TIMEOUT_SECONDS,
  restoreTestJob,
  restoreTestResult,
  restoreTestSettings,
  type RestoreTestJob,
  type RestoreTestSettings,
} from '../../contracts/restore-test.ts';
import { locationKey } from '../../contracts/endpoints.ts';
import { chunkIdOfKey } from '../../repository/format.ts';
import { isConditionFailed, type Backup, type Catalog, type Policy } from '../catalog/catalog.ts';
import type { RecoveryCatalog } from '../catalog/recovery-catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { restoreTestMetrics } from '../../contracts/metric-names.ts';
import { caughtError } from '../../contracts/errors.ts';
import { resolveBackup } from '../recovery/backups.ts';
import { healShared } from '../recovery/shared-damage.ts';
import type { DeepVerifySummary, RestoreTestOutcome } from '../../contracts/workflow-outputs.ts';

/** The execution input of the Deep verify workflow. */
export const deepVerifyRequest = z
  .object({
    vmId: text,
    /** Default: the VM's newest committed backup. */
    backupId: text.optional(),
    /** Fraction of each disk's chunks to read back, in (0, 1]; default 1 (all). */
    sample: z.number().gt(0, 'must be above 0').lte(1, 'must be at most 1 (all chunks)').optional(),
    moverGroup: text,
    /**
     * After a clean verification, restore the backup as a throwaway VM on a mover of the
     * VM's host and boot it (libvirt VMs): `true` with the policy's `restoreTest` settings
     * (or the defaults), an object to set them here, `false` for none even when the policy
     * enables it. Absent: as the policy's `restoreTest.enabled` and `everyDays` say.
     */
    restoreTest: z.union([z.boolean(), restoreTestSettings]).optional(),
  })
  .strict();
export const planDeepVerifyInput = z.object({ verifyId: text, request: deepVerifyRequest }).strict();

export async function planDeepVerify(
  { verifyId, request }: z.output<typeof planDeepVerifyInput>,
  deps: { catalog: Catalog; recovery: RecoveryCatalog; now: () => Date },
): Promise<DeepVerifyJob> {
  const { backup, repository, policy } = await resolveBackup(deps.catalog, request.vmId, request.backupId, { allowDamaged: true });
  const job: DeepVerifyJob = {
    verifyId,
    vmId: request.vmId,
    backupId: backup.backupId,
    moverGroup: request.moverGroup,
    repository,
    sample: request.sample ?? 1,
    disks: backup.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes })),
    ...(await planRestoreTest({ verifyId, backup, repository, policy, request: request.restoreTest }, deps)),
  };
  await deps.recovery.putRecord('DEEPVERIFY', verifyId, { status: 'running', startedAt: deps.now().toISOString(), job });
  return job;
}

/** A day less this slack counts as a day for `everyDays`: scheduled runs start seconds or minutes apart. */
const EVERY_DAYS_SLACK_MS = 3600_000;

/**
 * The restore test a verification of `backup` runs when it is clean, or why none runs
 * although one was asked for. Only a libvirt VM can be restore-tested (its backup keeps
 * the domain definition), by the group serving its host, which reaches its libvirt.
 */
async function planRestoreTest(
  p: {
    verifyId: string;
    backup: Backup & { disks: NonNullable<Backup['disks']> };
    repository: DeepVerifyJob['repository'];
    policy: Policy | undefined;
    request: boolean | RestoreTestSettings | undefined;
  },
  deps: { catalog: Catalog; now: () => Date },
): Promise<Pick<DeepVerifyJob, 'restoreTest' | 'restoreTestSkipped'>> {
  const fromPolicy = p.policy?.restoreTest;
  if (p.request === false || (p.request === undefined && !fromPolicy?.enabled)) return {};
  const settings: RestoreTestSettings = typeof p.request === 'object' ? { ...fromPolicy, ...p.request } : { ...fromPolicy };
  const { vmId } = p.backup;
  if (p.request === undefined && settings.everyDays !== undefined) {
    const last = (await deps.catalog.listBackups(vmId))
      .map((b) => b.restoreTest?.at)
      .filter((at): at is string => !!at)
      .sort()
      .at(-1);
    if (last && deps.now().getTime() - Date.parse(last) < settings.everyDays * 86_400_000 - EVERY_DAYS_SLACK_MS) {
      return {
        restoreTestSkipped: `not due: the last restore test of VM '${vmId}' was at ${last}, and policy '${p.policy!.policyId}' tests every ${settings.everyDays} day(s)`,
      };
    }
  }
  const vm = await deps.catalog.getVm(vmId);
  const host = vm ? await deps.catalog.getHost(vm.host) : undefined;
  if (!vm || !host || host.hypervisor?.driver !== 'libvirt') {
    return {
      restoreTestSkipped: `VM '${vmId}' is not on a libvirt host${vm ? ` (host '${vm.host}' ${host ? `uses the ${host.hypervisor?.driver ?? 'folder'} driver` : 'is not in the catalog'})` : ''}: only a libvirt backup holds a VM definition to boot`,
    };
  }
  const test: RestoreTestJob = {
    testId: p.verifyId,
    vmId,
    backupId: p.backup.backupId,
    moverGroup: host.moverGroup,
    repository: p.repository,
    uri: host.hypervisor.uri,
    vmName: vm.name ?? vm.source,
    disks: p.backup.disks.map((d) => ({ diskId: d.diskId, sizeBytes: d.sizeBytes })),
    bootCheck: settings.bootCheck ?? DEFAULT_BOOT_CHECK,
    timeoutSeconds: settings.timeoutSeconds ?? DEFAULT_RESTORE_TEST_TIMEOUT_SECONDS,
  };
  return { restoreTest: test };
}

export const recordDeepVerifyInput = z.intersection(deepVerifyJob, z.looseObject({ verified: z.array(deepVerifiedDisk) }));

export async function recordDeepVerify(
  input: z.output<typeof recordDeepVerifyInput>,
  deps: { recovery: RecoveryCatalog; catalog: Pick<Catalog, 'backupsWithStatus'>; now: () => Date },
): Promise<DeepVerifySummary> {
  const want = input.disks
    .map((d) => d.diskId)
    .sort()
    .join(',');
  const got = input.verified
    .map((d) => d.diskId)
    .sort()
    .join(',');
  if (want !== got) throw new RecoveryRequestInvalid(`deep verification ${input.verifyId} planned disks ${want} but movers reported ${got}`);
  const findings = input.verified.flatMap((d) => d.damaged);
  const at = deps.now().toISOString();
  const summary: DeepVerifySummary = {
    verifyId: input.verifyId,
    vmId: input.vmId,
    backupId: input.backupId,
    sample: input.sample,
    chunksTotal: input.verified.reduce((n, d) => n + d.chunksTotal, 0),
    chunksChecked: input.verified.reduce((n, d) => n + d.chunksChecked, 0),
    bytesRead: input.verified.reduce((n, d) => n + d.bytesRead, 0),
    damaged: findings.length > 0,
    findings,
    repository: input.repository,
    healed: null,
    event: null,
  };
  if (input.restoreTestSkipped) summary.restoreTest = { skipped: input.restoreTestSkipped };
  else if (input.restoreTest && findings.length > 0) summary.restoreTest = { skipped: 'the backup is damaged: it is not restore-tested' };
  else if (input.restoreTest) summary.restoreTestJob = input.restoreTest;
  if (findings.length > 0) {
    // Keep the event small (EventBridge takes 256 KB): the catalog keeps every finding.
    const first = findings[0]!;
    summary.event = {
      vmId: input.vmId,
      backupId: input.backupId,
      verifyId: input.verifyId,
      findings: findings.slice(0, 20),
      message: `backup ${input.backupId} of VM '${input.vmId}' is damaged: ${findings.length} object(s), first ${first.objectKey}${first.range ? ` bytes ${first.range.offset}+${first.range.length}` : ''}${first.chunkId ? ` (chunk ${first.chunkId}, disk '${first.diskId}'` : ` (disk '${first.diskId}'`}, offset ${first.offsets[0] ?? 'n/a'}): ${first.reason}`,
    };
    const marked = await deps.recovery.markDamaged(input.vmId, input.backupId, { verifyId: input.verifyId, foundAt: at, findings });
    if (!marked) summary.event.message += ' (the backup was no longer committed, so its catalog status is unchanged)';
  }
  if (findings.length === 0)
    await deps.recovery.markVerified(input.vmId, input.backupId, {
      verifyId: input.verifyId,
      at,
      chunksChecked: summary.chunksChecked,
      chunksTotal: summary.chunksTotal,
    });
  // Only a full verification proves every chunk intact; a sample may have missed the damaged ones.
  if (findings.length === 0 && summary.chunksChecked === summary.chunksTotal) {
    const was = await deps.recovery.markHealthy(input.vmId, input.backupId, { verifyId: input.verifyId, healedAt: at });
    if (was) {
      // Findings of movers from before format 2 carry no chunk id: their key (`chunks/…`) names it.
      const chunks = [...new Set(was.findings.map((f) => f.chunkId ?? chunkIdOfKey(f.objectKey)).filter((id): id is string => id !== undefined))];
      await deps.recovery.clearQuarantine(locationKey(input.repository), chunks);
      // Backups damaged only through these chunks (they share them) are whole again too.
      const others = await healShared(chunks, { verifyId: input.verifyId, healedAt: at }, deps);
      summary.healed = { previousVerifyId: was.verifyId, chunks, ...(others.length ? { otherBackups: others } : {}) };
    }
  }
  await deps.recovery.putRecord('DEEPVERIFY', input.verifyId, { status: verifyStatus(summary), finishedAt: at, summary });
  return summary;
}

const verifyStatus = (s: DeepVerifySummary) => (s.healed ? 'healed' : s.damaged ? 'damaged' : 'intact');

/** RecordRestoreTest's input: the verification's summary with the mover's answer, or the error the workflow caught. */
export const recordRestoreTestInput = z.looseObject({
  verifyId: text,
  vmId: text,
  backupId: text,
  restoreTestJob: restoreTestJob,
  restoreTestResult: restoreTestResult.optional(),
  restoreTestError: caughtError.optional(),
});

/**
 * Keeps a restore test's outcome: on the backup (`restoreTest`: passed, seconds, reason),
 * in the verification's record and in its summary. A test that could not run to its end
 * (the restore failed, libvirt refused the domain, the mover died on every attempt) is a
 * failed test, with the error as its reason. A failed test is also published
 * (`RestoreTestsFailed`, which an alarm watches) and shaped into the event the workflow
 * puts; a passed one counts in `RestoreTestsPassed`.
 */
export async function recordRestoreTest(
  input: z.output<typeof recordRestoreTestInput>,
  deps: { catalog: Pick<Catalog, 'recordRestoreTest'>; recovery: RecoveryCatalog; metrics: Pick<Metrics, 'addMetric'>; now: () => Date },
): Promise<DeepVerifySummary> {
  const { restoreTestJob: job, restoreTestResult: r, restoreTestError: err, ...rest } = input;
  const outcome: RestoreTestOutcome = r
    ? {
        passed: r.passed,
        seconds: r.seconds,
        restoreSeconds: r.restoreSeconds,
        domain: r.domain,
        ...(r.line ? { line: r.line } : {}),
        ...(r.agent !== undefined ? { agent: r.agent } : {}),
        ...(r.reason ? { reason: r.reason } : {}),
        swept: r.swept,
      }
    : { passed: false, seconds: 0, restoreSeconds: 0, domain: null, reason: err ? `${err.Error}: ${err.Cause}` : 'the mover gave no answer', swept: [] };
  if (!outcome.passed && !outcome.reason) outcome.reason = 'no sign of life within the timeout';
  const at = deps.now().toISOString();
  try {
    await deps.catalog.recordRestoreTest(job.vmId, job.backupId, {
      passed: outcome.passed,
      seconds: outcome.seconds,
      restoreId: job.testId,
      at,
      ...(outcome.reason ? { reason: outcome.reason } : {}),
    });
  } catch (e) {
    // The backup was pruned while it was tested: the outcome stays in the verification's record.
    if (!isConditionFailed(e)) throw e;
    outcome.reason = `${outcome.reason ? `${outcome.reason}; ` : ''}not recorded on backup ${job.backupId}: it is no longer in the catalog`;
  }
  const summary: DeepVerifySummary = { ...(rest as unknown as DeepVerifySummary), restoreTest: outcome };
  if (!outcome.passed)
    summary.restoreTestFailed = { vmId: job.vmId, backupId: job.backupId, verifyId: input.verifyId, reason: outcome.reason!, seconds: outcome.seconds };
  await deps.recovery.putRecord('DEEPVERIFY', input.verifyId, { status: verifyStatus(summary), finishedAt: at, summary });
  deps.metrics.addMetric(outcome.passed ? restoreTestMetrics.passed : restoreTestMetrics.failed, MetricUnit.Count, 1);
  return summary;
}

const now = () => new Date();

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planHandler: lambdaHandler('PlanDeepVerify', planDeepVerifyInput, (input) => planDeepVerify(input, { catalog: c.catalog, recovery: c.recovery, now })),
    recordHandler: lambdaHandler('RecordDeepVerify', recordDeepVerifyInput, (input) =>
      recordDeepVerify(input, { recovery: c.recovery, catalog: c.catalog, now }),
    ),
    recordRestoreTestHandler: lambdaHandler('RecordRestoreTest', recordRestoreTestInput, (input, { metrics }) =>
      recordRestoreTest(input, { catalog: c.catalog, recovery: c.recovery, metrics, now }),
    ),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler, recordHandler, recordRestoreTestHandler } = fromEnvironment(makeHandlers);
