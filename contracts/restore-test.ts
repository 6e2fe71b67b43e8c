/**
 * Restore tests as part of deep verification: a libvirt backup restored into a throwaway
 * folder on a mover at the VM's host, defined as a domain named `lifeboat-restoretest-…`
 * with no network, booted, watched for a sign of life (a serial console line, the guest
 * agent answering `guest-ping`), and removed with its files. The settings (a policy's
 * `restoreTest`, a workflow input), the job the control plane plans and the result the
 * mover answers are stated here once: the configuration, the functions and the mover
 * validate with these schemas.
 */
import { z } from 'zod';
import { count, text } from './zod.ts';
import { repositoryLocation } from './endpoints.ts';

/**
 * Every domain a restore test defines starts with this, and its folder is named as the
 * domain: a mover sweeping leftovers touches nothing else.
 */
export const RESTORE_TEST_PREFIX = 'lifeboat-restoretest-';

/** Seconds a restore test waits for the sign of life when the settings say nothing. */
export const DEFAULT_RESTORE_TEST_TIMEOUT_SECONDS = 300;

const isRegex = (s: string) => {
  try {
    new RegExp(s);
    return true;
  } catch {
    return false;
  }
};

/**
 * The sign of life a booted restore waits for: a serial console line matching `serial`,
 * the guest agent answering `guest-ping` (`agent: true`), or both (each must come).
 */
export const bootCheckSettings = z
  .object({
    serial: z
      .string()
      .min(1, 'must not be empty')
      .refine(isRegex, 'must be a regular expression (JavaScript syntax) matched against each serial console line')
      .optional(),
    agent: z.boolean({ error: 'must be true or false' }).optional(),
  })
  .strict()
  .refine((b) => b.serial !== undefined || b.agent === true, 'must name a sign of life: "serial" (a console line regex) and/or "agent": true');
export type BootCheckSettings = z.infer<typeof bootCheckSettings>;

/**
 * A policy's `restoreTest` (configuration, catalog) and the object form of the DeepVerify
 * workflows' `restoreTest` input. `everyDays`: a scheduled deep verification tests a VM
 * only when its last restore test is at least this old (less 1 hour, so a weekly schedule
 * with `everyDays: 7` tests every week although runs start seconds apart); absent: every run.
 */
export const restoreTestSettings = z
  .object({
    enabled: z.boolean({ error: 'must be true or false' }).optional(),
    bootCheck: bootCheckSettings.optional(),
    timeoutSeconds: z.number().int('must be a whole number').min(5, 'must be at least 5').max(3600, 'must be at most 3600').optional(),
    everyDays: z.number().positive('must be above 0').max(366, 'must be at most 366').optional(),
  })
  .strict();
export type RestoreTestSettings = z.infer<typeof restoreTestSettings>;

/** The boot check used when neither the request nor the policy names one: the guest agent answers. */
export const DEFAULT_BOOT_CHECK: BootCheckSettings = { agent: true };

/** One restore test, as PlanDeepVerify planned it; the activity task's input is `{ task: 'restoreTest', test }`. */
export const restoreTestJob = z.looseObject({
  /** The deep verification's id: the test is recorded under it. */
  testId: text,
  vmId: text,
  backupId: text,
  /** The group serving the VM's host: its movers reach the host's libvirt and its storage. */
  moverGroup: text,
  repository: repositoryLocation,
  /** The host's libvirt URI. */
  uri: text,
  /** The VM's name, shown in the test domain's name. */
  vmName: text,
  disks: z.array(z.looseObject({ diskId: text, sizeBytes: count })),
  bootCheck: bootCheckSettings,
  timeoutSeconds: z.number().int().min(5).max(3600),
});
export type RestoreTestJob = z.output<typeof restoreTestJob>;

/** What a mover answers for a restore test (a test that did not pass is an answer, not a failure). */
export const restoreTestResult = z.looseObject({
  testId: text,
  vmId: text,
  backupId: text,
  /** The domain the test defined and removed. */
  domain: text,
  passed: z.boolean(),
  /** Seconds from the start of the domain to the sign of life (or to giving up). */
  seconds: z.number().nonnegative(),
  /** Seconds the disks took to restore (written, re-hashed, converted). */
  restoreSeconds: z.number().nonnegative(),
  /** The console line that matched. */
  line: z.string().optional(),
  /** The guest agent answered `guest-ping`. */
  agent: z.boolean().optional(),
  /** Why it did not pass. */
  reason: z.string().optional(),
  /** Leftover test domains and folders of dead movers removed before this test. */
  swept: z.array(z.string()),
});
export type RestoreTestResult = z.output<typeof restoreTestResult>;

/** The sign-of-life settings in the form define-domain takes (`consoleLine`, `agent`). */
export function defineBootCheck(b: BootCheckSettings, timeoutSeconds: number): { consoleLine?: string; agent?: boolean; timeoutSeconds: number } {
  return { ...(b.serial !== undefined ? { consoleLine: b.serial } : {}), ...(b.agent ? { agent: true } : {}), timeoutSeconds };
}
