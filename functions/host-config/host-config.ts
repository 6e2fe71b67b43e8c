/**
 * The HostConfigBackup workflow's functions: PlanHostConfigBackup (the hosts and the key
 * each archive goes to), RecordHostConfig (a host's archive into the catalog, older ones
 * beyond `keep` deleted) and SummarizeHostConfigBackup (the execution's output and its
 * metric). Logic in host-config/backups.ts.
 */
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { hostConfigCounts, hostConfigResult } from '../../contracts/host-config.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { hostConfigMetrics } from '../../contracts/metric-names.ts';
import { repositoryLocation } from '../../contracts/endpoints.ts';
import { caughtError } from '../../contracts/errors.ts';
import { planHostConfigBackup, recordHostConfig, summarizeHostConfigBackup } from './backups.ts';

const text = z.string().min(1);
const count = z.number().int().nonnegative();

export const planHostConfigBackupInput = z.looseObject({ hostId: text.optional() });

const hostConfigJob = z.looseObject({
  hostId: text,
  moverGroup: text,
  hypervisor: z.looseObject({ driver: z.literal('libvirt'), uri: text }),
  repository: repositoryLocation,
  backupId: text,
  objectKey: text,
  keep: z.number().int().positive(),
});

export const recordHostConfigInput = z.looseObject({ runId: text, job: hostConfigJob, result: hostConfigResult });

const hostConfigOutcome = z.looseObject({
  hostId: text,
  backupId: text,
  objectKey: text,
  takenAt: z.string(),
  sha256: z.string(),
  bytes: count,
  counts: hostConfigCounts,
  kept: count,
  deleted: z.array(text),
  orphansDeleted: count,
});

export const summarizeHostConfigBackupInput = z.looseObject({
  runId: text,
  hosts: z.array(z.union([z.looseObject({ hostId: text, error: caughtError }), hostConfigOutcome])),
});

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    planHandler: lambdaHandler('PlanHostConfigBackup', planHostConfigBackupInput, (input) =>
      planHostConfigBackup(input, { catalog: c.catalog, now: () => new Date(), random: () => randomBytes(4).toString('hex') }),
    ),
    recordHandler: lambdaHandler('RecordHostConfig', recordHostConfigInput, (input) =>
      recordHostConfig(input, { hostConfigs: c.hostConfigs, admin: (r) => c.admin(r.bucket, r.endpoint), now: () => new Date() }),
    ),
    summarizeHandler: lambdaHandler('SummarizeHostConfigBackup', summarizeHostConfigBackupInput, async (input, { metrics }) => {
      const summary = summarizeHostConfigBackup(input);
      metrics.addMetric(hostConfigMetrics.hostsFailed, MetricUnit.Count, summary.failedHosts.length);
      return summary;
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { planHandler, recordHandler, summarizeHandler } = fromEnvironment(makeHandlers);
