/**
 * The control plane's side of host configuration backups: which hosts a HostConfigBackup
 * execution backs up (with the key each archive goes to), recording each host's archive
 * with retention (the newest `keep` per host stay; older archives are deleted, then their
 * records), and the execution's summary. Pure: the catalog and the repository admin are passed in.
 */
import type { RepositoryLocation } from '../../contracts/endpoints.ts';
import { HostConfigRequestInvalid } from '../../contracts/errors.ts';
import { hostConfigBackupId, hostConfigKey } from '../../repository/host-config.ts';
import { type HostConfigResult } from '../../contracts/host-config.ts';
import type { Hypervisor } from '../../contracts/jobs.ts';
import type { RepositoryAdmin } from '../../repository/admin.ts';
import type { Catalog } from '../catalog/catalog.ts';
import type { HostConfigCatalog } from '../catalog/host-config-catalog.ts';
import type { HostConfigFailure, HostConfigOutcome, HostConfigSummary } from '../../contracts/workflow-outputs.ts';

/** An archive no record names (its mover's result never got recorded) is deleted once this old; a younger one may be a run's in flight. */
export const ORPHAN_GRACE_MS = 24 * 60 * 60 * 1000;

/** One host of a HostConfigBackup execution: its mover group dumps it into `objectKey` of `repository`. */
export interface HostConfigJob {
  hostId: string;
  moverGroup: string;
  hypervisor: Extract<Hypervisor, { driver: 'libvirt' }>;
  repository: RepositoryLocation;
  backupId: string;
  objectKey: string;
  /** Archives of the host kept after this one is recorded. */
  keep: number;
}

/** The hosts to back up (the one the input names, or every libvirt host), each with the key its archive goes to. */
export async function planHostConfigBackup(
  input: { hostId?: string | undefined },
  deps: { catalog: Pick<Catalog, 'getHost' | 'listHosts' | 'getHostConfigSettings'>; now: () => Date; random: () => string },
): Promise<{ hosts: HostConfigJob[] }> {
  const settings = await deps.catalog.getHostConfigSettings();
  if (!settings)
    throw new HostConfigRequestInvalid(
      'the catalog holds no host configuration backup settings: the configuration was synced by an older version; deploy again (embedded stack: start it again) so SyncConfig writes them',
    );
  const repository: RepositoryLocation = settings.endpoint ? { bucket: settings.bucket, endpoint: settings.endpoint } : { bucket: settings.bucket };
  const at = deps.now();
  const job = (h: { hostId: string; moverGroup: string; hypervisor?: Hypervisor }): HostConfigJob | undefined => {
    if (h.hypervisor?.driver !== 'libvirt') return undefined;
    const backupId = hostConfigBackupId(at, deps.random());
    return {
      hostId: h.hostId,
      moverGroup: h.moverGroup,
      hypervisor: h.hypervisor,
      repository,
      backupId,
      objectKey: hostConfigKey(h.hostId, backupId),
      keep: settings.keep,
    };
  };
  if (input.hostId) {
    const host = await deps.catalog.getHost(input.hostId);
    if (!host)
      throw new HostConfigRequestInvalid(`host '${input.hostId}' is not in the catalog: configure it under "hosts" (and a mover group's "hosts") and deploy`);
    const item = job(host);
    if (!item)
      throw new HostConfigRequestInvalid(
        `host '${input.hostId}' uses the ${host.hypervisor?.driver ?? 'folder'} driver, which has no host configuration to back up; host configuration backups read libvirt hosts ("driver": "libvirt")`,
      );
    return { hosts: [item] };
  }
  const hosts = (await deps.catalog.listHosts())
    .sort((a, b) => a.hostId.localeCompare(b.hostId))
    .map(job)
    .filter((h): h is HostConfigJob => !!h);
  return { hosts };
}

export interface RecordHostConfigInput {
  /** The HostConfigBackup execution's name. */
  runId: string;
  job: HostConfigJob;
  result: HostConfigResult;
}

/**
 * Records a host's new archive, then applies retention: every archive of the host beyond
 * the newest `keep` is deleted from its repository, then its record (a record never names
 * a deleted object). Idempotent: a retried invocation records the same item and finds
 * nothing more to delete.
 */
export async function recordHostConfig(
  input: RecordHostConfigInput,
  deps: { hostConfigs: Pick<HostConfigCatalog, 'put' | 'list' | 'delete'>; admin: (repository: RepositoryLocation) => RepositoryAdmin; now: () => Date },
): Promise<HostConfigOutcome> {
  const { job, result } = input;
  if (result.hostId !== job.hostId || result.objectKey !== job.objectKey) {
    throw new HostConfigRequestInvalid(
      `the mover's result names host '${result.hostId}' and object ${result.objectKey}, but the task was host '${job.hostId}' into ${job.objectKey}: a mover of another version? Check the mover group '${job.moverGroup}'`,
    );
  }
  const now = deps.now();
  await deps.hostConfigs.put({ ...result, repository: job.repository, recordedAt: now.toISOString(), runId: input.runId });
  const records = await deps.hostConfigs.list(job.hostId);
  const expired = records.slice(job.keep);
  const deleted: string[] = [];
  const notDeleted: { key: string; reason: string }[] = [];
  for (const r of expired) {
    const out = await deps.admin(r.repository).delete([r.objectKey]);
    if (out.failed.length) {
      notDeleted.push(...out.failed);
      continue;
    }
    await deps.hostConfigs.delete(r.hostId, r.backupId);
    deleted.push(r.backupId);
  }
  // Archives whose result never got recorded (the run failed after the mover stored it).
  const named = new Set(records.map((r) => r.objectKey));
  const admin = deps.admin(job.repository);
  const orphans: string[] = [];
  for await (const o of admin.list(`${hostConfigKey(job.hostId, '')}`)) {
    if (!named.has(o.key) && now.getTime() - o.lastModified.getTime() > ORPHAN_GRACE_MS) orphans.push(o.key);
  }
  const swept = orphans.length ? await admin.delete(orphans) : { deleted: [], failed: [] };
  notDeleted.push(...swept.failed);
  return {
    ...result,
    kept: records.length - deleted.length,
    deleted,
    orphansDeleted: swept.deleted.length,
    ...(notDeleted.length ? { notDeleted } : {}),
  };
}

/** The execution's output: every host's outcome, and which failed. */
export function summarizeHostConfigBackup(input: { runId: string; hosts: (HostConfigOutcome | HostConfigFailure)[] }): HostConfigSummary {
  const failedHosts = input.hosts.filter((h): h is HostConfigFailure => 'error' in h).map((h) => h.hostId);
  return { runId: input.runId, hosts: input.hosts, succeeded: input.hosts.length - failedHosts.length, failedHosts };
}
