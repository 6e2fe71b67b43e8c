/**
 * What flows through the Discover workflow: the mover's `discover` task (one page of a
 * host's domains), and the names and limits both sides agree on. The zod schemas are the
 * contract; the mover validates the task with them and RecordInventory the page.
 */
import { z } from 'zod';
import { text, type Infer } from './zod.ts';
import { libvirtExports } from './libvirt-exports.ts';

/**
 * The largest JSON a discover page may take. Step Functions caps a task result (and
 * a state's data) at 256 KiB; the page travels with the host's state, so it keeps a margin.
 */
export const DISCOVER_PAGE_BYTES = 192 * 1024;

/** The catalog id of a discovered VM: its domain name on its host (`web-1@kvm-01`). */
export const discoveredVmId = (name: string, hostId: string) => `${name}@${hostId}`;

/** A VM as a host's hypervisor describes it, as the task returns it (no domain XML: the backup stores that). */
export const discoveredVm = z.strictObject({
  name: text,
  uuid: text,
  /** The hypervisor's word for it: `running`, `shut off`, `paused`, ... */
  state: z.string(),
  /** Tags from the domain's metadata (`<lifeboat:tags>`), for policies that select by tag. */
  tags: z.array(text),
  /** Whether it has a guest agent channel (backups can be quiesced). */
  agent: z.boolean(),
  disks: z.array(
    z.strictObject({
      target: text,
      type: z.string(),
      format: z.string(),
      sizeBytes: z.number().int().nonnegative(),
      source: z.string().optional(),
    }),
  ),
});
export type DiscoveredVm = Infer<typeof discoveredVm>;

/** The `discover` activity task: one page of the host's domains, those named after `after` (sorted by name). */
export const discoverTask = z.strictObject({
  task: z.literal('discover'),
  hostId: text,
  /** The host's hypervisor as configured (discovery needs only `uri`; `exports` travels with it). */
  hypervisor: z.strictObject({ driver: z.literal('libvirt'), uri: text, exports: libvirtExports.optional() }),
  /** The last domain name of the previous page; null, absent or '' for the first page. */
  after: z.string().nullable().optional(),
});
export type DiscoverTask = z.infer<typeof discoverTask>;

/** One page of a host's inventory; `next` is the `after` of the following page, null on the last one. */
export const discoverPage = z.strictObject({
  hostId: text,
  vms: z.array(discoveredVm),
  next: z.string().nullable(),
});
export type DiscoverPage = z.infer<typeof discoverPage>;

/** Whether a task input is a discover task (the mover's dispatch looks at `task` only; the schema checks the rest). */
export const isDiscoverTask = (raw: unknown): boolean => !!raw && typeof raw === 'object' && (raw as { task?: unknown }).task === 'discover';

/** A VM a policy selects that discovery marked gone: Plan does not back it up, Summarize reports it failed (kept small). */
export interface GoneVm {
  vmId: string;
  /** The run's backup record of the VM, recorded failed. */
  backupId: string;
  host: string;
  goneSince: string;
}

/**
 * The error a backup run reports for a VM that the last discovery did not find on its
 * host: it is not backed up, but never silently dropped from protection.
 */
export function vmGoneMessage(vmId: string, host: string, goneSince: string): string {
  return (
    `VM ${vmId} was not found on its host ${host} at the last discovery (gone since ${goneSince}): was it deleted, renamed or moved to another host? ` +
    'Its backups are kept. If it comes back, the next discovery brings it back into protection; if it was renamed or moved, ' +
    'its new name or host is discovered as a new VM (check that the policy selects it).'
  );
}
