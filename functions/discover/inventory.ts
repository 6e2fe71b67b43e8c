/**
 * The control plane's side of discovery: which hosts a Discover execution inventories,
 * recording each page of a host's VMs in the catalog, marking the VMs it no longer has
 * as gone (never deleting them), and the execution's summary. Pure: the catalog is passed in.
 */
import type { DiscoverPage } from '../../contracts/discovery.ts';
import { DiscoveryRequestInvalid } from '../../contracts/errors.ts';
import type { Hypervisor } from '../../contracts/jobs.ts';
import type { Catalog } from '../catalog/catalog.ts';
import type { DiscoverySummary, HostFailure, HostInventory } from '../../contracts/workflow-outputs.ts';

/** The catalog calls discovery makes. */
export type InventoryCatalog = Pick<Catalog, 'getHost' | 'listHosts' | 'getVm' | 'vmsOnHost' | 'recordDiscoveredVm' | 'markVmGone'>;

/** One host a Discover execution inventories: its mover group does the work. */
export interface DiscoveryHost {
  hostId: string;
  moverGroup: string;
  hypervisor: Extract<Hypervisor, { driver: 'libvirt' }>;
}

/** The hosts to inventory: the one the input names, or every libvirt host. */
export async function listDiscoveryHosts(input: { hostId?: string | undefined }, deps: { catalog: InventoryCatalog }): Promise<{ hosts: DiscoveryHost[] }> {
  const toItem = (h: { hostId: string; moverGroup: string; hypervisor?: Hypervisor }): DiscoveryHost | undefined =>
    h.hypervisor?.driver === 'libvirt' ? { hostId: h.hostId, moverGroup: h.moverGroup, hypervisor: h.hypervisor } : undefined;
  if (input.hostId) {
    const host = await deps.catalog.getHost(input.hostId);
    if (!host)
      throw new DiscoveryRequestInvalid(`host '${input.hostId}' is not in the catalog: configure it under "hosts" (and a mover group's "hosts") and deploy`);
    const item = toItem(host);
    if (!item)
      throw new DiscoveryRequestInvalid(
        `host '${input.hostId}' uses the ${host.hypervisor?.driver ?? 'folder'} driver, which has nothing to discover: its VMs are added by hand; discovery reads libvirt hosts ("driver": "libvirt")`,
      );
    return { hosts: [item] };
  }
  const hosts = (await deps.catalog.listHosts()).map(toItem).filter((h): h is DiscoveryHost => !!h);
  return { hosts: hosts.sort((a, b) => a.hostId.localeCompare(b.hostId)) };
}

export interface RecordInventoryInput {
  /** The Discover execution's name. */
  discoveryId: string;
  /** When the execution started: a VM not seen since then is gone. */
  startedAt: string;
  hostId: string;
  page: DiscoverPage;
  /** The counts of the host's earlier pages (absent on the first). */
  totals?: HostInventory | null | undefined;
}

/**
 * Records one page of a host's VMs; after the last page, marks the host's discovered VMs
 * that this discovery did not see as gone. Every write is conditional, so a retried
 * invocation changes nothing more.
 */
export async function recordInventory(input: RecordInventoryInput, deps: { catalog: InventoryCatalog; now: () => Date }): Promise<HostInventory> {
  if (input.page.hostId !== input.hostId) throw new DiscoveryRequestInvalid(`the discover page is of host '${input.page.hostId}', not of '${input.hostId}'`);
  const startedAt = new Date(input.startedAt).toISOString();
  const at = deps.now().toISOString();
  const t: HostInventory = {
    ...(input.totals ?? { hostId: input.hostId, found: 0, new: 0, returned: 0, manual: 0, gone: 0, stillGone: 0 }),
    hostId: input.hostId,
    next: input.page.next,
  };
  for (const vm of input.page.vms) {
    const write = await deps.catalog.recordDiscoveredVm(input.hostId, vm, { id: input.discoveryId, at });
    t.found++;
    if (write !== 'seen') t[write]++;
  }
  if (input.page.next === null) Object.assign(t, await markGone(input.hostId, at, startedAt, deps.catalog));
  return t;
}

/** Marks the host's discovered VMs not seen since `startedAt` as gone; counts them. */
async function markGone(hostId: string, at: string, startedAt: string, catalog: InventoryCatalog): Promise<Pick<HostInventory, 'gone' | 'stillGone'>> {
  let gone = 0;
  let stillGone = 0;
  for (const vmId of await catalog.vmsOnHost(hostId)) {
    const vm = await catalog.getVm(vmId);
    if (!vm?.discoveredAt || vm.host !== hostId) continue; // added by hand: never marked
    if (vm.gone) {
      if (vm.goneSince! >= startedAt)
        gone++; // marked by this discovery already (a retry) or one beside it
      else stillGone++;
    } else if (vm.discoveredAt < startedAt && (await catalog.markVmGone(vmId, at, startedAt))) gone++;
  }
  return { gone, stillGone };
}

/** The execution's output: per host its counts or its error, and totals. */
export function summarizeDiscovery(input: { discoveryId: string; hosts: (HostInventory | HostFailure)[] }): DiscoverySummary {
  const ok = input.hosts.filter((h): h is HostInventory => !('error' in h));
  const sum = (k: 'found' | 'new' | 'gone') => ok.reduce((n, h) => n + h[k], 0);
  return {
    discoveryId: input.discoveryId,
    hosts: input.hosts.map((h) => ('error' in h ? { hostId: h.hostId, error: h.error } : withoutNext(h))),
    found: sum('found'),
    new: sum('new'),
    gone: sum('gone'),
    failedHosts: input.hosts.filter((h) => 'error' in h).map((h) => h.hostId),
  };
}

function withoutNext(h: HostInventory): Omit<HostInventory, 'next'> {
  const { next: _next, ...rest } = h;
  return rest;
}
