/**
 * The configuration's checks across its parts: unique ids, every id that names another
 * naming a configured one (sites, hosts, mover groups, repositories), each host served by
 * exactly one mover group, and the settings that only make sense together. Every problem
 * is an issue at its key path, so all of them are listed at once.
 */
import type { z } from 'zod';
import type { ConfigShape } from './config-schema.ts';

type Ctx = z.RefinementCtx;

const idsOf = (items: readonly { id: string }[]) => new Set(items.map((x) => x.id));

export function checkConfig(c: ConfigShape, ctx: Ctx): void {
  uniqueIds(c, ctx);
  const servedBy = checkMoverGroups(c, ctx);
  checkHosts(c, ctx, servedBy);
  checkRepositories(c, ctx);
  checkPolicies(c, ctx);
}

/** No id twice among the sites, mover groups, hosts, repositories, policies or failover plans. */
function uniqueIds(c: ConfigShape, ctx: Ctx): void {
  const dup = (items: { id: string }[], key: string) => {
    const seen = new Set<string>();
    items.forEach((it, i) => {
      if (seen.has(it.id)) ctx.addIssue({ code: 'custom', path: [key, i, 'id'], message: `duplicate ${key} id` });
      seen.add(it.id);
    });
  };
  dup(c.failoverPlans ?? [], 'failoverPlans');
  dup(c.sites, 'sites');
  dup(c.moverGroups, 'moverGroups');
  dup(c.hosts, 'hosts');
  dup(c.repositories, 'repositories');
  dup(c.policies, 'policies');
}

/** Each group's site and hosts are configured, and a host is in one group only; returns the group serving each host. */
function checkMoverGroups(c: ConfigShape, ctx: Ctx): Map<string, string> {
  const sites = idsOf(c.sites);
  const hosts = idsOf(c.hosts);
  const servedBy = new Map<string, string>();
  c.moverGroups.forEach((g, i) => {
    if (!sites.has(g.site))
      ctx.addIssue({ code: 'custom', path: ['moverGroups', i, 'site'], message: `names no configured site (sites: ${[...sites].join(', ')})` });
    g.hosts.forEach((h, j) => {
      if (!hosts.has(h)) ctx.addIssue({ code: 'custom', path: ['moverGroups', i, 'hosts', j], message: 'names no configured host: add it to "hosts"' });
      const other = servedBy.get(h);
      if (other)
        ctx.addIssue({
          code: 'custom',
          path: ['moverGroups', i, 'hosts', j],
          message: `is already served by mover group "${other}": a host belongs to exactly one group`,
        });
      servedBy.set(h, g.id);
    });
  });
  return servedBy;
}

/** A libvirt host has a URI (and only a libvirt host has one, or exports); every host is served by a group. */
function checkHosts(c: ConfigShape, ctx: Ctx, servedBy: ReadonlyMap<string, string>): void {
  c.hosts.forEach((h, i) => {
    if (h.driver === 'libvirt' && !h.uri)
      ctx.addIssue({ code: 'custom', path: ['hosts', i, 'uri'], message: 'is required for a libvirt host: give its libvirt URI, e.g. "qemu:///system"' });
    if (h.driver !== 'libvirt' && h.uri) ctx.addIssue({ code: 'custom', path: ['hosts', i, 'uri'], message: 'is only used with "driver": "libvirt"' });
    if (h.driver !== 'libvirt' && h.exports) ctx.addIssue({ code: 'custom', path: ['hosts', i, 'exports'], message: 'is only used with "driver": "libvirt"' });
    if (!servedBy.has(h.id)) ctx.addIssue({ code: 'custom', path: ['hosts', i, 'id'], message: 'is served by no mover group: add it to a group\'s "hosts"' });
  });
}

/** Endpoints, buckets, Object Lock, sites and replication of the repositories, and the host configuration backups' repository. */
function checkRepositories(c: ConfigShape, ctx: Ctx): void {
  const sites = idsOf(c.sites);
  const repos = idsOf(c.repositories);
  c.repositories.forEach((r, i) => {
    if (i === 0 && r.endpoint)
      ctx.addIssue({
        code: 'custom',
        path: ['repositories', 0, 'endpoint'],
        message: "the first repository is the stack's own bucket: list a repository on another endpoint after it",
      });
    if (r.bucket !== undefined && !r.endpoint)
      ctx.addIssue({
        code: 'custom',
        path: ['repositories', i, 'bucket'],
        message: 'only a repository with its own "endpoint" names its bucket; the stack names the buckets it creates',
      });
    if (r.objectLock && r.endpoint)
      ctx.addIssue({
        code: 'custom',
        path: ['repositories', i, 'objectLock'],
        message: 'the stack does not create a repository on another endpoint, so it cannot set its Object Lock: configure it on that bucket',
      });
    if (r.site !== undefined && !sites.has(r.site))
      ctx.addIssue({ code: 'custom', path: ['repositories', i, 'site'], message: `names no configured site (sites: ${[...sites].join(', ')})` });
    if (r.replication?.replicaVms && (!r.replication.standbyPath || !r.site)) {
      ctx.addIssue({
        code: 'custom',
        path: ['repositories', i, 'replication', 'replicaVms'],
        message: 'needs the repository\'s "site" (whose networkMap the replicas use) and "replication.standbyPath" (where their disks are kept)',
      });
    }
    if (r.replication) {
      const g = c.moverGroups.find((x) => x.id === r.replication!.moverGroup);
      const path = ['repositories', i, 'replication', 'moverGroup'];
      if (!g) ctx.addIssue({ code: 'custom', path, message: `names no configured mover group (groups: ${c.moverGroups.map((x) => x.id).join(', ')})` });
      else if (g.hosts.length > 0 && g.site !== r.site) {
        ctx.addIssue({
          code: 'custom',
          path,
          message: `is a group that backs up hosts at site "${g.site}"${r.site ? `, not at the repository's site "${r.site}"` : ''}: name a group at the repository's site or one without hosts`,
        });
      }
    }
  });
  const hcRepo = c.hostConfigBackup?.repository;
  if (hcRepo !== undefined && !repos.has(hcRepo))
    ctx.addIssue({
      code: 'custom',
      path: ['hostConfigBackup', 'repository'],
      message: `names no configured repository (repositories: ${[...repos].join(', ')})`,
    });
}

/** A policy's repositories, DR RPO and VM selection. */
function checkPolicies(c: ConfigShape, ctx: Ctx): void {
  const hosts = idsOf(c.hosts);
  const repos = idsOf(c.repositories);
  c.policies.forEach((p, i) => {
    if (!repos.has(p.repository))
      ctx.addIssue({
        code: 'custom',
        path: ['policies', i, 'repository'],
        message: `names no configured repository (repositories: ${[...repos].join(', ')})`,
      });
    if (p.drRpoHours !== undefined && p.replicateTo === undefined)
      ctx.addIssue({
        code: 'custom',
        path: ['policies', i, 'drRpoHours'],
        message: 'applies only to a policy that replicates: set "replicateTo" too, or remove it',
      });
    if (p.drRpoHours !== undefined && p.drRpoHours > 0 && p.drRpoHours < p.rpoHours)
      ctx.addIssue({
        code: 'custom',
        path: ['policies', i, 'drRpoHours'],
        message: `is ${p.drRpoHours}, below the policy's rpoHours (${p.rpoHours}): a DR copy is never newer than the backup it copies`,
      });
    if (p.replicateTo !== undefined) {
      if (!repos.has(p.replicateTo)) ctx.addIssue({ code: 'custom', path: ['policies', i, 'replicateTo'], message: 'names no configured repository' });
      else if (p.replicateTo === p.repository)
        ctx.addIssue({ code: 'custom', path: ['policies', i, 'replicateTo'], message: "must differ from the policy's own repository" });
      else if (!c.repositories.find((r) => r.id === p.replicateTo)!.replication) {
        const j = c.repositories.findIndex((r) => r.id === p.replicateTo);
        ctx.addIssue({
          code: 'custom',
          path: ['policies', i, 'replicateTo'],
          message: `names a repository no mover group replicates into: set repositories[${j}].replication.moverGroup`,
        });
      }
    }
    p.vms.hosts?.forEach((h, j) => {
      if (!hosts.has(h)) ctx.addIssue({ code: 'custom', path: ['policies', i, 'vms', 'hosts', j], message: 'names no configured host' });
    });
    const selectsByName = (p.vms.names?.length ?? 0) + (p.vms.tags?.length ?? 0) > 0;
    const discoverable = (p.vms.hosts ?? c.hosts.map((h) => h.id)).some((h) => c.hosts.find((x) => x.id === h)?.driver === 'libvirt');
    if (p.vms.tags?.length && !discoverable) {
      ctx.addIssue({
        code: 'custom',
        path: ['policies', i, 'vms', 'tags'],
        message: "selects by tag, but none of the policy's hosts is a libvirt host (only discovered VMs carry tags)",
      });
    }
    if (selectsByName && p.vms.hosts?.length === 0)
      ctx.addIssue({
        code: 'custom',
        path: ['policies', i, 'vms', 'hosts'],
        message: 'is empty: leave it out to filter the VMs of every host by "names" and "tags"',
      });
  });
}
