/**
 * The `discover` task: one page of a host's VMs for the Discover workflow. Domains are
 * taken in name order after the previous page's last name, and described one by one
 * until the page would outgrow what a Step Functions task result may carry; the page's
 * `next` tells the workflow where to go on. A page always holds at least one VM, so the
 * workflow always advances.
 */
import { BadTaskInput, parseTaskInput, SourceUnavailable } from '../contracts/errors.ts';
import { DISCOVER_PAGE_BYTES, discoverTask, type DiscoverPage } from '../contracts/discovery.ts';
import type { DriverFor } from './sources/drivers.ts';
import { inventoryOf, type VmInventory } from './sources/source.ts';

export interface PageLimits {
  /** Largest JSON size of the page (default DISCOVER_PAGE_BYTES). */
  maxBytes?: number;
}

/** Describes the host's VMs named after `after`, in name order, until the page is full. */
export async function discoverPage(
  inventory: VmInventory,
  hostId: string,
  after: string | null,
  limits: PageLimits = {},
  signal?: AbortSignal,
): Promise<DiscoverPage> {
  const maxBytes = limits.maxBytes ?? DISCOVER_PAGE_BYTES;
  const names = [...new Set(await inventory.vmNames({ ...(signal ? { signal } : {}) }))].sort().filter((n) => after === null || n > after);
  const page: DiscoverPage = { hostId, vms: [], next: null };
  // The page's JSON without VMs, plus each VM and its comma; `next` may be as long as a name.
  let bytes = JSON.stringify(page).length + 2 * Math.max(0, ...names.map((n) => Buffer.byteLength(JSON.stringify(n))));
  for (const [i, name] of names.entries()) {
    const vm = await inventory.describeVm(name, { ...(signal ? { signal } : {}) });
    if (!vm) continue; // undefined since it was listed
    const size = Buffer.byteLength(JSON.stringify(vm)) + 1;
    if (page.vms.length > 0 && bytes + size > maxBytes) {
      page.next = names[i - 1]!;
      return page;
    }
    if (size > maxBytes)
      throw new SourceUnavailable(
        `VM '${name}' on host ${hostId} is described by ${size} bytes, more than a discover page holds (${maxBytes}): it has too many disks to report`,
      );
    bytes += size;
    page.vms.push(vm);
  }
  return page;
}

/** Runs a `discover` task input: validates it and describes one page of the host's VMs. */
export async function runDiscoverTask(raw: unknown, drivers: DriverFor, signal?: AbortSignal): Promise<DiscoverPage> {
  const t = parseTaskInput('discover task', discoverTask, raw);
  const inventory = inventoryOf(drivers(t.hypervisor));
  if (!inventory) throw new BadTaskInput(`host ${t.hostId}: the ${t.hypervisor.driver} driver cannot list VMs`);
  return discoverPage(inventory, t.hostId, t.after || null, {}, signal);
}
