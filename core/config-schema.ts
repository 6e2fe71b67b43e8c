/**
 * The configuration's shape: sites, mover groups, hosts, repositories, policies and the
 * workflow-wide settings, each object strict (an unknown key is refused). What ties the
 * parts together (an id that names another) is checked in config-checks.ts.
 */
import { z } from 'zod';
import { failoverPlan, networkMap, replicaVmSettings } from '../contracts/dr.ts';
import { libvirtExports } from '../contracts/libvirt-exports.ts';
import { restoreTestSettings } from '../contracts/restore-test.ts';
import { count, id, keep, namePattern, schedule, storageEndpoint, tag } from './config-fields.ts';

const retention = z
  .object({
    keepLast: keep,
    hourly: keep,
    daily: keep,
    weekly: keep,
    monthly: keep,
    yearly: keep,
  })
  .strict()
  .refine(
    (r) => Object.values(r).some((n) => (n ?? 0) > 0),
    'must keep something: set at least one of keepLast, hourly, daily, weekly, monthly, yearly above 0',
  );

const policy = z
  .object({
    id,
    vms: z
      .object({
        ids: z.array(z.string().min(1)).optional(),
        hosts: z.array(id).optional(),
        /** Name patterns (`*` any run of characters, `?` one): VMs of the policy's hosts (every host without `hosts`) whose name matches any. */
        names: z.array(namePattern).optional(),
        /** Tags (libvirt metadata `<lifeboat:tags>`): VMs carrying any of them (and matching `names`, if given). */
        tags: z.array(tag).optional(),
      })
      .strict()
      .refine((v) => [v.ids, v.hosts, v.names, v.tags].some((a) => (a?.length ?? 0) > 0), 'must select VMs: give "ids", "hosts", "names" or "tags"'),
    schedule,
    retention,
    repository: id,
    replicateTo: id.optional(),
    rpoHours: z
      .number()
      .positive('must be above 0')
      .max(24 * 366, 'must be at most a year'),
    /**
     * With `replicateTo`: the oldest the newest verified DR copy of any VM may be, in hours,
     * before the DR alarm fires (default: drRpoHoursOf, twice `rpoHours`: the copy follows each backup).
     */
    drRpoHours: z
      .number()
      .positive('must be above 0')
      .max(24 * 366, 'must be at most a year')
      .optional(),
    perHostConcurrency: count(64).optional(),
    /**
     * Commands run inside each guest through its agent around the freeze (libvirt VMs with
     * the QEMU guest agent): `pre` before the file systems are frozen, `post` after they
     * are thawed, each an argv.
     */
    quiesce: z
      .object({
        pre: z.array(z.string().min(1)).min(1, 'must name the program to run').optional(),
        post: z.array(z.string().min(1)).min(1, 'must name the program to run').optional(),
        hookTimeoutSeconds: z.number().int('must be a whole number').min(1, 'must be at least 1').max(3600, 'must be at most 3600').optional(),
        onHookFailure: z.enum(['fail', 'continue'], { error: 'must be "fail" (the VM\'s backup fails) or "continue" (taken crash-consistent)' }).optional(),
      })
      .strict()
      .optional(),
    /** Disks larger than this many GiB are transferred in segments by several movers of the group at once. */
    segmentSizeGiB: z.number().min(1, 'must be at least 1').max(16_384, 'must be at most 16384').optional(),
    /**
     * Restore tests at the scheduled deep verification (libvirt VMs): `{ enabled, bootCheck:
     * { serial?, agent? }, timeoutSeconds?, everyDays? }` (contracts/restore-test.ts).
     */
    restoreTest: restoreTestSettings.optional(),
  })
  .strict();

export const configShape = z
  .object({
    sites: z
      .array(
        z
          .object({
            id,
            description: z.string().optional(),
            /** Production network → this site's network, for the replica VMs defined here (contracts/dr.ts). */
            networkMap: networkMap.optional(),
          })
          .strict(),
      )
      .min(1, 'configure at least one site'),
    moverGroups: z
      .array(
        z
          .object({
            id,
            site: id,
            /** Hypervisor hosts this group backs up; empty for a group that only restores or replicates (a DR site). */
            hosts: z.array(id),
            principal: z
              .object({
                awsPrincipalArn: z
                  .string()
                  .regex(/^arn:aws[a-z-]*:iam::\d{12}:(root|role\/.+|user\/.+)$/, 'must be an IAM role, user or account root ARN')
                  .optional(),
                rolesAnywhereTrustAnchorArn: z
                  .string()
                  .regex(/^arn:aws[a-z-]*:rolesanywhere:[a-z0-9-]+:\d{12}:trust-anchor\/.+$/, 'must be an IAM Roles Anywhere trust anchor ARN')
                  .optional(),
              })
              .strict()
              .optional(),
          })
          .strict(),
      )
      .min(1, 'configure at least one mover group'),
    hosts: z
      .array(
        z
          .object({
            id,
            /**
             * How movers reach the host's VMs: `folder` (a VM is a folder of raw images: tests and
             * the demo without a hypervisor) or `libvirt` (QEMU/KVM through libvirt at `uri`).
             */
            driver: z.enum(['folder', 'libvirt'], { error: 'must be "folder" or "libvirt"' }).optional(),
            /** The libvirt connection URI: `qemu:///system` on the mover's own host, `qemu+ssh://host/system` or `qemu+tls://host/system` for another. */
            uri: z
              .string()
              .regex(
                /^([a-z0-9+]+:\/\/[^\s]*\/(system|session)(\?[^\s]*)?|test:\/\/\/[^\s]+)$/,
                'must be a libvirt URI such as "qemu:///system" or "qemu+ssh://host/system" (or libvirt\'s test driver, "test:///default")',
              )
              .optional(),
            /**
             * How the host's backup jobs export the disks to the movers (libvirt hosts): a unix
             * socket on the host (default; movers on the host) or a TCP port of the host, with TLS
             * (contracts/libvirt-exports.ts).
             */
            exports: libvirtExports.optional(),
            maxConcurrentBackups: count(64),
            datastores: z.array(z.object({ id, maxConcurrentBackups: count(64) }).strict()).optional(),
          })
          .strict(),
      )
      .min(1, 'configure at least one hypervisor host'),
    repositories: z
      .array(
        z
          .object({
            id,
            /** Fixed chunk size of the repository (0.5 recommended: measured in repository/REPOSITORY-FORMAT.md). */
            chunkSizeMiB: z.union([z.literal(0.25), z.literal(0.5), z.literal(1), z.literal(2), z.literal(4), z.literal(8)], {
              error: 'must be 0.25, 0.5, 1, 2, 4 or 8',
            }),
            /**
             * S3 Object Lock on the bucket the stack creates: every object is locked for `days` after
             * it is written, and the Garbage collection workflow's ExtendLocks step locks every object
             * a retained backup references until that backup's expiry (functions/gc/extend-locks.ts).
             */
            objectLock: z
              .object({
                mode: z.enum(['COMPLIANCE', 'GOVERNANCE'], {
                  error: 'must be "COMPLIANCE" (no one can shorten or remove a lock) or "GOVERNANCE" (a role with s3:BypassGovernanceRetention can)',
                }),
                days: count(36_500),
              })
              .strict()
              .optional(),
            /** The site the repository's storage is at (a DR repository: the DR site). */
            site: id.optional(),
            /**
             * A repository on storage this stack does not create: another S3-compatible endpoint,
             * or AWS S3 in another region. Unset: a bucket the stack creates on its own S3.
             */
            endpoint: storageEndpoint.optional(),
            /** The bucket of a repository with an `endpoint` (default: the repository id); the stack names the buckets it creates. */
            bucket: z
              .string()
              .regex(/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/, 'must be an S3 bucket name: 3–63 lowercase letters, digits, dots or dashes')
              .optional(),
            /** How backups reach this repository when policies replicate to it (a DR repository). */
            replication: z
              .object({
                /** The mover group that copies into this repository and keeps its warm standby replica. */
                moverGroup: id,
                /** Folder on that group's movers of the warm standby replica (`<standbyPath>/<vmId>/<diskId>.raw`); unset keeps none. */
                standbyPath: z
                  .string()
                  .refine((p) => p.startsWith('/') && !p.split('/').includes('..'), 'must be an absolute path without ".."')
                  .optional(),
                /**
                 * Keep each libvirt VM's replica as a VM on this libvirt host of the DR site (powered
                 * off, its disks qcow2 restore points under `standbyPath`, networks through the site's
                 * `networkMap`), instead of raw standby files (contracts/dr.ts).
                 */
                replicaVms: replicaVmSettings.optional(),
              })
              .strict()
              .optional(),
          })
          .strict(),
      )
      .min(1, "configure at least one repository (the first is the stack's own bucket)"),
    policies: z.array(policy),
    /**
     * Workflow-wide limits: VMs of one run backed up at once (hosts' slots still apply), disks or
     * segments transferred at once per VM, and manifest pieces one Verify invocation checks
     * (default 64; a backup with more is verified by range).
     */
    backup: z
      .object({ vmConcurrency: count(1000).optional(), dispatchConcurrency: count(256).optional(), verifyRangePieces: count(65_536).optional() })
      .strict()
      .optional(),
    /**
     * Who hears of alerts: `emails` subscribe to the alarm topic (AWS); `webhook.url` gets a
     * JSON POST per new alert from the embedded stack (damage, VM past its RPO, silent mover
     * group, failed run; local/alert-notifier.ts), checked every `webhook.checkSeconds` (default 60).
     */
    notifications: z
      .object({
        emails: z.array(z.email({ error: 'must be an email address' })).optional(),
        webhook: z
          .object({ url: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }), checkSeconds: count(86_400).optional() })
          .strict()
          .optional(),
      })
      .strict()
      .optional(),
    /** When the Discover workflow inventories the libvirt hosts (default: hourly, when there is a libvirt host). */
    discovery: z.object({ schedule }).strict().optional(),
    /**
     * When the HostConfigBackup workflow backs up each libvirt host's networks, pools and
     * domain definitions (default: daily at 02:00 UTC, when there is a libvirt host), how many
     * of each host's it keeps (default 14), and in which repository (default: the first).
     */
    hostConfigBackup: z
      .object({ schedule: schedule.optional(), keep: count(1000).optional(), repository: id.optional() })
      .strict()
      .optional(),
    /** Failover plans: VMs booted in groups at the DR site (contracts/dr.ts; `lifeboat failover --plan ID`). */
    failoverPlans: z.array(failoverPlan).optional(),
  })
  .strict();

/** The configuration as its shape parses it, before the checks across its parts. */
export type ConfigShape = z.infer<typeof configShape>;
