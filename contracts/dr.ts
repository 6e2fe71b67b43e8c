/**
 * Disaster recovery with VMs at the DR site: the replica VMs a DR mover keeps (their
 * settings, restore points and state), failover plans (configuration), and what the
 * FailoverPlan and TestFailover workflows send to the DR movers and report. Stated once:
 * the configuration, the functions, the movers and the CLI validate with these schemas.
 */
import { z } from 'zod';
import { count, text, type Infer } from './zod.ts';

const isRegex = (s: string) => {
  try {
    new RegExp(s);
    return true;
  } catch {
    return false;
  }
};

/** A libvirt network name (as `virsh net-list` shows it). */
const networkName = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'must be a libvirt network name: letters, digits, ".", "_" or "-"');

/**
 * A site's network map: each production network a VM's interface names → the network at
 * this site its replica is connected to. A replica whose interface names a network not in
 * the map is refused, naming the network (contracts: `NetworkNotMapped`).
 */
export const networkMap = z.record(networkName, networkName);
export type NetworkMap = z.infer<typeof networkMap>;

/** Restore points a replica keeps when the configuration says nothing. */
export const DEFAULT_REPLICA_POINTS = 3;

/**
 * Replica VMs of a DR repository (configuration `repositories[].replication.replicaVms`):
 * the DR site's libvirt host where the replicas are defined (kept powered off), and how
 * many restore points each keeps.
 */
export const replicaVmSettings = z
  .object({
    uri: z.string().regex(/^([a-z0-9+]+:\/\/[^\s]*\/(system|session)(\?[^\s]*)?|test:\/\/\/[^\s]+)$/, 'must be a libvirt URI such as "qemu:///system"'),
    keepPoints: z.number().int('must be a whole number').min(1, 'must be at least 1').max(64, 'must be at most 64').optional(),
  })
  .strict();
export type ReplicaVmSettings = z.infer<typeof replicaVmSettings>;

/** What the Replicate workflow's job carries for a libvirt VM whose DR repository keeps replica VMs. */
export const replicaJob = z.looseObject({
  /** The DR site (named in errors about its network map). */
  site: text,
  uri: text,
  keepPoints: z.number().int().min(1).max(64),
  networkMap,
});
export type ReplicaJob = Infer<typeof replicaJob>;

/** A replica VM's domain name: the VM's name and `-replica` (the CLI finds the VM running at the DR site after a failover by it). */
export const replicaDomainName = (vmName: string) => `${vmName}-replica`;

/** One restore point of a replica: the state of its disks equal to one backup. */
export const replicaPoint = z.looseObject({
  backupId: text,
  /** When the backup's snapshot was taken (the recovery point it gives). */
  recoveryPoint: text,
  /** When the replica reached it. */
  createdAt: text,
  /** Disk id → the qcow2 layer (absolute path) holding this point; read-only once written. */
  layers: z.record(text, text),
});
export type ReplicaPoint = Infer<typeof replicaPoint>;

/** What a DR mover reports after bringing a replica VM to a backup. */
export const replicaUpdate = z.looseObject({
  vmId: text,
  domain: text,
  uuid: text,
  backupId: text,
  /** The backup the replica held before (null: none, it was made now). */
  fromBackupId: text.nullable(),
  chunksWritten: count,
  bytesWritten: count,
  chunksUnchanged: count,
  /** Points kept after the update, oldest first. */
  points: z.array(z.looseObject({ backupId: text, recoveryPoint: text })),
  seconds: z.number(),
  /** Where the seconds went: check, config, manifests, layerCreate, nbdStart, chunks, nbdStop, activeOverlays, define, merge. */
  phases: z.record(text, z.number()).optional(),
});
export type ReplicaUpdate = Infer<typeof replicaUpdate>;

/** A readiness check of a plan group: a serial console line (regex) and/or the guest agent, within `timeoutSeconds`. */
export const readinessCheck = z
  .object({
    serial: z.string().min(1, 'must not be empty').refine(isRegex, 'must be a regular expression (JavaScript syntax)').optional(),
    agent: z.boolean({ error: 'must be true or false' }).optional(),
    timeoutSeconds: z.number().int('must be a whole number').min(1, 'must be at least 1').max(3600, 'must be at most 3600'),
  })
  .strict()
  .refine((r) => r.serial !== undefined || r.agent === true, 'must name a sign of readiness: "serial" (a console line regex) and/or "agent": true');
export type ReadinessCheck = z.infer<typeof readinessCheck>;

const vmEntry = z.union([
  text,
  z
    .object({
      vm: text,
      /** Run on the DR mover's host after the VM is ready: an argv, with LIFEBOAT_VM_ID, LIFEBOAT_VM_NAME, LIFEBOAT_VM_DOMAIN, LIFEBOAT_VM_IP and LIFEBOAT_FAILOVER_TEST in its environment (re-IP, DNS). */
      script: z.array(z.string().min(1)).min(1, 'must name the program to run').optional(),
      scriptTimeoutSeconds: z.number().int().min(1).max(3600).optional(),
    })
    .strict(),
]);

/**
 * A failover plan (configuration `failoverPlans[]`, or a workflow input): groups booted in
 * order; each group's VMs start together, then the group waits `delaySeconds` or for its
 * `readiness` check before the next group starts.
 */
export const failoverPlan = z
  .object({
    id: z.string().regex(/^[a-z0-9][a-z0-9-]{0,38}$/, 'must be 1–39 lowercase letters, digits or dashes, starting with a letter or digit'),
    groups: z
      .array(
        z
          .object({
            vms: z.array(vmEntry).min(1, 'must name at least one VM'),
            delaySeconds: z.number().int('must be a whole number').min(0).max(3600, 'must be at most 3600').optional(),
            readiness: readinessCheck.optional(),
          })
          .strict()
          .refine((g) => !(g.delaySeconds !== undefined && g.readiness), 'give "delaySeconds" or "readiness", not both'),
      )
      .min(1, 'must have at least one group'),
  })
  .strict()
  .superRefine((p, ctx) => {
    const seen = new Set<string>();
    p.groups.forEach((g, i) =>
      g.vms.forEach((v, j) => {
        const vm = typeof v === 'string' ? v : v.vm;
        if (seen.has(vm)) ctx.addIssue({ code: 'custom', path: ['groups', i, 'vms', j], message: `names VM '${vm}' a second time: a VM boots once per plan` });
        seen.add(vm);
      }),
    );
  });
export type FailoverPlan = z.infer<typeof failoverPlan>;

/** Which restore point: the newest (default), a backup id, or the newest at or before a time (ISO 8601). */
export const pointSelector = z.union([z.literal('latest'), z.object({ backupId: text }).strict(), z.object({ at: z.iso.datetime({ offset: true }) }).strict()]);
export type PointSelector = z.infer<typeof pointSelector>;

/** The FailoverPlan and TestFailover workflows' input. */
export const failoverPlanRequest = z
  .object({
    plan: failoverPlan,
    /** Per VM id (or `*` for all): the restore point; default latest. */
    points: z.record(text, pointSelector).optional(),
  })
  .strict();
export type FailoverPlanRequest = z.infer<typeof failoverPlanRequest>;

/** One VM's part of a planned failover, as PlanFailoverPlan resolved it. */
export const failoverVmJob = z.looseObject({
  runId: text,
  test: z.boolean(),
  vmId: text,
  /** The VM's name (its replica's domain is `<name>-replica`). */
  name: text,
  moverGroup: text,
  uri: text,
  /** Folder of the replica on the DR movers (`<replicaDir>/<vmId>`). */
  replicaDir: text,
  /** The restore point asked for (checked for every VM of the plan before anything boots). */
  point: pointSelector,
  readiness: readinessCheck.optional(),
  script: z.array(text).optional(),
  scriptTimeoutSeconds: z.number().int().optional(),
  /** The plan's start (ms since the epoch): ready times are measured from it. */
  startedAtMs: z.number(),
});
export type FailoverVmJob = Infer<typeof failoverVmJob>;

/** What a DR mover answers for one VM of a plan. */
export const failoverVmResult = z.looseObject({
  vmId: text,
  domain: text,
  backupId: text,
  recoveryPoint: text,
  /** From the plan's start to the VM's start, and to its readiness (or to its start without a check). */
  startedSeconds: z.number(),
  readySeconds: z.number(),
  /** The guest's own part: from its start to its readiness. */
  bootSeconds: z.number(),
  readyAt: text,
  line: z.string().optional(),
  script: z.looseObject({ exitCode: z.number(), output: z.string() }).optional(),
});
export type FailoverVmResult = Infer<typeof failoverVmResult>;

/** The report of a plan run (the workflows' output). */
export const failoverReport = z.looseObject({
  runId: text,
  plan: text,
  test: z.boolean(),
  vms: z.array(failoverVmResult.extend({ group: count })),
  /** From the plan's start to the last VM ready. */
  rtoSeconds: z.number(),
  /** What a test failover removed afterwards. */
  cleanedUp: z.looseObject({ domains: z.array(text), networks: z.array(text), folders: z.array(text) }).optional(),
});
export type FailoverReport = Infer<typeof failoverReport>;

/**
 * A failover as the catalog records it (functions/catalog, one per VM and plan run): the
 * restore point the replica was powered on at, when, by which run, test or real. A real
 * one is the VM's active failover until a failback releases its replica (`releasedAt`);
 * PlanFailback takes its backup as the failback's base, `lifeboat vms` shows it.
 */
export const failoverRecord = z.looseObject({
  vmId: text,
  runId: text,
  plan: text,
  test: z.boolean(),
  /** The replica's domain (a test failover's throwaway copy for a test). */
  domain: text,
  /** The restore point: the production backup the replica was at when powered on, and that backup's recovery point. */
  backupId: text,
  recoveryPoint: text,
  /** When the replica was powered on. */
  failedOverAt: text,
  /** Set by the failback that released the replica (real failovers only). */
  releasedAt: text.optional(),
  releasedBy: text.optional(),
});
export type FailoverRecord = Infer<typeof failoverRecord>;

/** Every domain and network a test failover makes starts with this and its run's key: cleanup touches nothing else. */
export const TEST_FAILOVER_PREFIX = 'lbtf-';

/** The key of a test failover run in the names of what it makes (short: bridge names have 15 characters). */
export const testRunKey = (runId: string) => {
  let h = 0;
  for (const ch of runId) h = (Math.imul(h, 31) + ch.charCodeAt(0)) >>> 0;
  return h.toString(36).padStart(7, '0').slice(-7);
};

/** A plan run as the DR movers see it whole: to check every VM's point first, and to clean up after it. */
export const failoverRun = z.looseObject({
  runId: text,
  test: z.boolean(),
  uri: text,
  moverGroup: text,
  vms: z.array(z.looseObject({ vmId: text, replicaDir: text })),
  points: z.record(text, pointSelector).optional(),
  /** Replica folders of the DR site beside the VMs' (a scheduled sweep, which names no VM, looks through their test failover folders). */
  replicaDirs: z.array(text).optional(),
});
export type FailoverRun = Infer<typeof failoverRun>;

/** The DR movers' tasks of the FailoverPlan and TestFailover workflows (and the Replicate workflow's replica update). */
export const drTask = z.discriminatedUnion('task', [
  z.looseObject({ task: z.literal('resolveFailoverPoints'), run: failoverRun }),
  z.looseObject({ task: z.literal('failoverVm'), vm: failoverVmJob }),
  z.looseObject({ task: z.literal('cleanupFailover'), run: failoverRun }),
  /** The leftovers of other test failover runs, older than any TestFailover execution can be, removed (at a test failover's start, and hourly by the Discover workflow). */
  z.looseObject({
    task: z.literal('sweepTestFailovers'),
    run: failoverRun,
    /** Other libvirt URIs the DR group serves, swept too (the scheduled sweep of the Discover workflow names them all). */
    uris: z.array(text).optional(),
  }),
  z.looseObject({
    task: z.literal('updateReplicaVm'),
    replicate: z.looseObject({ replicationId: text, vmId: text, backupId: text, replicaDir: text, replica: replicaJob }),
  }),
]);
export const drTaskNames: readonly string[] = drTask.options.map((o) => o.shape.task.value);
