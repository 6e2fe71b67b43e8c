/**
 * The two ends of a Distributed Map over a list in the stack's run bucket
 * (cdk/lib/distributed-map.ts): the planning function writes the items as one JSON array
 * (`writeItemList`), and the function after the Map reads the children's results from the
 * files its ResultWriter wrote (`readMapRunResults`, AWS's layout: a manifest naming
 * `SUCCEEDED_n.json` / `FAILED_n.json` / `PENDING_n.json`, each an array of entries whose
 * `Output` is the child's output as JSON text). Neither list travels in a payload.
 */
import { z } from 'zod';
import type { ObjectStore } from '../../core/object-store.ts';
import type { PolicyVmFailure } from '../../contracts/workflow-outputs.ts';
import type { Clients } from './clients.ts';

/** Where a list of items is: what the workflow's payload carries instead of the items. */
export const itemList = z.object({ bucket: z.string().min(1), key: z.string().min(1), count: z.number().int().min(0) });
export type ItemList = z.infer<typeof itemList>;

export async function writeItemList(store: ObjectStore, bucket: string, key: string, items: unknown[]): Promise<ItemList> {
  await store.put(key, Buffer.from(JSON.stringify(items)));
  return { bucket, key, count: items.length };
}

/** The stack's own bucket (LIFEBOAT_RUN_BUCKET), where `workflow` keeps its lists and its Map Runs write their results. */
export function runStore(c: Pick<Clients, 'env' | 'store'>, workflow: string): { store: ObjectStore; bucket: string } {
  const bucket = c.env.runBucket;
  if (!bucket)
    throw new Error(
      `environment variable LIFEBOAT_RUN_BUCKET is not set: the ${workflow} workflow keeps its lists in the stack's bucket, which the deployment must name`,
    );
  return { store: c.store(bucket), bucket };
}

/** Where a per-policy workflow keeps its lists (`runs/`, beside the Backup runs' VM lists and the Map Runs' results). */
export const policyRunKey = (workflow: string, policyId: string, id: string, file: string) =>
  `runs/${workflow}/${encodeURIComponent(policyId)}/${encodeURIComponent(id)}/${file}`;

/** What a payload may spend on a listing of a fleet's entries (a payload is capped at 256 KiB; the whole list is in S3). */
export const LISTING_BYTES = 64 * 1024;

/**
 * The first entries of `items` whose JSON together stays within `maxBytes`: what an output
 * lists by name of a list that grows with the fleet (its length is given beside it).
 */
export function firstWithin<T>(items: readonly T[], maxBytes = LISTING_BYTES): T[] {
  const out: T[] = [];
  let bytes = 2;
  for (const item of items) {
    bytes += Buffer.byteLength(JSON.stringify(item)) + 1;
    if (bytes > maxBytes) break;
    out.push(item);
  }
  return out;
}

/** A Distributed Map's result with a ResultWriter: where its manifest is. */
export const mapRunResult = z.looseObject({ MapRunArn: z.string(), ResultWriterDetails: z.object({ Bucket: z.string(), Key: z.string() }) });

const manifest = z.looseObject({ ResultFiles: z.record(z.string(), z.array(z.object({ Key: z.string() }).loose())) });
const entry = z.looseObject({
  Name: z.string().optional(),
  Status: z.string(),
  Input: z.string().optional(),
  Output: z.string().optional(),
  Error: z.string().optional(),
  Cause: z.string().optional(),
});

/** One child execution's end, as its Map Run's result files record it. */
export interface ChildResult {
  name?: string;
  status: string;
  /** The child's input (its item), when the result file holds it. */
  input?: unknown;
  output?: unknown;
  error?: string;
  cause?: string;
}

/** The children's results of a Map Run, from the manifest at `manifestKey` (in `store`'s bucket). */
export async function readMapRunResults(store: ObjectStore, manifestKey: string): Promise<ChildResult[]> {
  const read = async (key: string) => {
    const body = await store.get(key);
    if (!body) throw new Error(`the Map Run's result file ${key} is missing from the run bucket; its results cannot be summarized`);
    return JSON.parse(body.toString('utf8')) as unknown;
  };
  const m = manifest.parse(await read(manifestKey));
  const out: ChildResult[] = [];
  for (const files of Object.values(m.ResultFiles)) {
    for (const f of files) {
      for (const e of z.array(entry).parse(await read(f.Key))) {
        out.push({
          ...(e.Name ? { name: e.Name } : {}),
          status: e.Status,
          ...(e.Input !== undefined ? { input: JSON.parse(e.Input) as unknown } : {}),
          ...(e.Output !== undefined ? { output: JSON.parse(e.Output) as unknown } : {}),
          ...(e.Error ? { error: e.Error, cause: e.Cause ?? '' } : {}),
        });
      }
    }
  }
  return out;
}

/** Most characters of a failed child's cause an output lists (the whole cause is in the result files). */
const CAUSE_CHARS = 1000;

/** A child that did not succeed, as a policy-wide output lists it: its item's VM (and backup), its error and cause. */
export function childFailure(r: ChildResult): PolicyVmFailure {
  const item = (r.input ?? {}) as { vmId?: unknown; backupId?: unknown };
  return {
    vmId: typeof item.vmId === 'string' ? item.vmId : (r.name ?? 'unknown'),
    ...(typeof item.backupId === 'string' ? { backupId: item.backupId } : {}),
    error: r.error ?? r.status,
    cause: (r.cause ?? '').slice(0, CAUSE_CHARS),
  };
}

/**
 * The error a policy-wide workflow fails with after its Map Run when VMs failed (each VM's
 * child execution failed on its own; the others went on): how many, the first, and where
 * every VM's result is.
 */
export function vmsFailedError(
  code: string,
  doing: string,
  p: { failed: PolicyVmFailure[]; failedCount: number; vms: number; results: { bucket: string; key: string } },
): { Error: string; Cause: string } {
  const first = p.failed[0];
  return {
    Error: code,
    Cause:
      `${p.failedCount} of ${p.vms} VM(s) could not be ${doing}` +
      (first ? `; the first, VM '${first.vmId}': ${first.error}: ${first.cause}` : '') +
      `. Every VM's result: s3://${p.results.bucket}/${p.results.key} (the Map Run's manifest)`,
  };
}
