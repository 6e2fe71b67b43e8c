/**
 * SyncConfig: writes the configuration's hosts, policies and host configuration backup settings into the catalog, so Plan
 * and the other workflows read one source of truth at run time. In AWS a CloudFormation
 * custom resource runs it on every deploy; the embedded stack runs it at start.
 * Policies that an earlier configuration wrote and this one drops are removed; policies
 * written by hand (tests, scripts) are left alone.
 */
import { z } from 'zod';
import { drRpoHoursOf, hostConfigBackupSettings, parseConfig, type LifeboatConfig } from '../../core/config.ts';
import type { Catalog, Policy } from '../catalog/catalog.ts';
import { DEFAULT_REPLICA_POINTS, type ReplicaJob, type ReplicaVmSettings } from '../../contracts/dr.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';

const MiB = 1024 * 1024;

export interface SyncConfigInput {
  config: LifeboatConfig;
  /** The bucket behind each configured repository id (the deployment decides the names). */
  buckets: Record<string, string>;
}

export interface SyncConfigOutput {
  hosts: string[];
  policies: string[];
  removedPolicies: string[];
}

/** The hosts whose VMs a policy selects from: its own, or every host when it filters by name or tag without naming hosts. */
function policyHosts(p: LifeboatConfig['policies'][number], config: LifeboatConfig): string[] {
  if (p.vms.hosts) return p.vms.hosts;
  return p.vms.names?.length || p.vms.tags?.length ? config.hosts.map((h) => h.id) : [];
}

/** A DR repository's replica VMs as the workflows need them: the site's libvirt host, network map and restore points kept. */
function replicaTarget(config: LifeboatConfig, site: string, r: ReplicaVmSettings): ReplicaJob {
  return { site, uri: r.uri, keepPoints: r.keepPoints ?? DEFAULT_REPLICA_POINTS, networkMap: config.sites.find((s) => s.id === site)?.networkMap ?? {} };
}

export async function syncConfig(input: SyncConfigInput, deps: { catalog: Catalog }): Promise<SyncConfigOutput> {
  const config = parseConfig(input.config, 'the SyncConfig input');
  const bucketOf = (repositoryId: string) => {
    const bucket = input.buckets[repositoryId];
    if (!bucket) throw new Error(`repository '${repositoryId}' has no bucket in the deployment (buckets: ${Object.keys(input.buckets).join(', ') || 'none'})`);
    return bucket;
  };
  for (const group of config.moverGroups) {
    for (const hostId of group.hosts) {
      const host = config.hosts.find((h) => h.id === hostId)!;
      await deps.catalog.putHost({
        hostId,
        moverGroup: group.id,
        site: group.site,
        maxConcurrentBackups: host.maxConcurrentBackups,
        datastores: Object.fromEntries((host.datastores ?? []).map((d) => [d.id, d.maxConcurrentBackups])),
        ...(host.driver === 'libvirt' ? { hypervisor: { driver: 'libvirt' as const, uri: host.uri!, ...(host.exports && { exports: host.exports }) } } : {}),
      });
    }
  }
  // Where the HostConfigBackup workflow stores each libvirt host's definitions, and how many it keeps.
  const hc = hostConfigBackupSettings(config);
  const hcRepo = config.repositories.find((r) => r.id === hc.repositoryId)!;
  await deps.catalog.putHostConfigSettings({
    repositoryId: hcRepo.id,
    bucket: bucketOf(hcRepo.id),
    ...(hcRepo.endpoint ? { endpoint: hcRepo.endpoint } : {}),
    keep: hc.keep,
  });
  for (const p of config.policies) {
    const repo = config.repositories.find((r) => r.id === p.repository)!;
    const target = p.replicateTo ? config.repositories.find((r) => r.id === p.replicateTo)! : undefined;
    const policy: Policy = {
      policyId: p.id,
      vmIds: p.vms.ids ?? [],
      hosts: policyHosts(p, config),
      ...(p.vms.names?.length ? { names: p.vms.names } : {}),
      ...(p.vms.tags?.length ? { tags: p.vms.tags } : {}),
      bucket: bucketOf(repo.id),
      chunkSize: repo.chunkSizeMiB * MiB,
      repositoryId: repo.id,
      ...(repo.endpoint ? { endpoint: repo.endpoint } : {}),
      slotLimit: p.perHostConcurrency ?? 64,
      retention: p.retention,
      rpoHours: p.rpoHours,
      managedBy: 'config',
      ...(p.segmentSizeGiB ? { segmentBytes: p.segmentSizeGiB * 1024 * MiB } : {}),
      ...(p.quiesce ? { quiesce: p.quiesce } : {}),
      ...(p.restoreTest ? { restoreTest: p.restoreTest } : {}),
      ...(target
        ? {
            replicateTo: {
              repositoryId: target.id,
              bucket: bucketOf(target.id),
              ...(target.endpoint ? { endpoint: target.endpoint } : {}),
              drRpoHours: drRpoHoursOf(p),
              ...(target.replication
                ? { moverGroup: target.replication.moverGroup, ...(target.replication.standbyPath ? { standbyPath: target.replication.standbyPath } : {}) }
                : {}),
              ...(target.replication?.replicaVms && target.site ? { replicaVms: replicaTarget(config, target.site, target.replication.replicaVms) } : {}),
            },
          }
        : {}),
    };
    await deps.catalog.putPolicy(policy);
  }
  const wanted = new Set(config.policies.map((p) => p.id));
  const removed: string[] = [];
  for (const p of await deps.catalog.listPolicies()) {
    if (p.managedBy === 'config' && !wanted.has(p.policyId)) {
      await deps.catalog.deletePolicy(p.policyId);
      removed.push(p.policyId);
    }
  }
  return { hosts: config.hosts.map((h) => h.id), policies: [...wanted], removedPolicies: removed };
}

/** The configuration itself is validated by parseConfig inside syncConfig, naming every bad key. */
export const syncConfigInput = z.looseObject({
  config: z.custom<LifeboatConfig>((v) => typeof v === 'object' && v !== null, 'must be the configuration object'),
  buckets: z.record(z.string(), z.string().min(1)),
});

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('SyncConfig', syncConfigInput, (input) => syncConfig(input, { catalog: c.catalog })),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
