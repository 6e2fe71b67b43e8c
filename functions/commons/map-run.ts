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

/** Where a list of items is: what the workflow's payload carries instead of the items. */
export const itemList = z.object({ bucket: z.string().min(1), key: z.string().min(1), count: z.number().int().min(0) });
export type ItemList = z.infer<typeof itemList>;

export async function writeItemList(store: ObjectStore, bucket: string, key: string, items: unknown[]): Promise<ItemList> {
  await store.put(key, Buffer.from(JSON.stringify(items)));
  return { bucket, key, count: items.length };
}

/** A Distributed Map's result with a ResultWriter: where its manifest is. */
export const mapRunResult = z.looseObject({ MapRunArn: z.string(), ResultWriterDetails: z.object({ Bucket: z.string(), Key: z.string() }) });

const manifest = z.looseObject({ ResultFiles: z.record(z.string(), z.array(z.object({ Key: z.string() }).loose())) });
const entry = z.looseObject({
  Name: z.string().optional(),
  Status: z.string(),
  Output: z.string().optional(),
  Error: z.string().optional(),
  Cause: z.string().optional(),
});

/** One child execution's end, as its Map Run's result files record it. */
export interface ChildResult {
  name?: string;
  status: string;
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
          ...(e.Output !== undefined ? { output: JSON.parse(e.Output) as unknown } : {}),
          ...(e.Error ? { error: e.Error, cause: e.Cause ?? '' } : {}),
        });
      }
    }
  }
  return out;
}
