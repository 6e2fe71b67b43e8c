/**
 * ListMovers: the control plane's view of the mover fleet, read from the registration
 * records movers put in the repository bucket (core/mover-registry.ts explains why there
 * and not the catalog). A record older than `staleAfterBeats` heartbeats is `stale` (the
 * mover died or lost its network); `stopped` is a mover that drained and exited.
 */
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import middy from '@middy/core';
import type { ObjectStore } from './object-store.ts';
import { MOVER_RECORD_PREFIX, parseMoverRegistration, type MoverRegistration } from './mover-registry.ts';
import { StorageUnavailable } from '../contracts/errors.ts';
import { LOCAL_ENDPOINT_CREDENTIALS, S3ObjectStore, s3Client } from './s3-store.ts';
import { compareVersions, isVersion, MIN_MOVER_VERSION } from './version.ts';

/** The one storage call ListMovers needs beyond `get`: the keys under a prefix. */
export interface KeyLister {
  keys(prefix: string): Promise<string[]>;
}

export type MoverStatus = 'live' | 'stale' | 'stopped';

export interface MoverView extends MoverRegistration {
  status: MoverStatus;
  /** Seconds since the mover last wrote its record. */
  ageSeconds: number;
  /** False when the mover is older than the jobs' minimum version (it will upgrade at its next job). */
  upToDate: boolean;
}

export async function listMovers(deps: { store: Pick<ObjectStore, 'get'>; lister: KeyLister; now: () => Date; staleAfterBeats?: number; minMoverVersion?: string }): Promise<MoverView[]> {
  const now = deps.now().getTime();
  const min = deps.minMoverVersion ?? MIN_MOVER_VERSION;
  const out: MoverView[] = [];
  for (const key of await deps.lister.keys(MOVER_RECORD_PREFIX)) {
    if (!key.endsWith('.json')) continue;
    const bytes = await deps.store.get(key);
    const r = bytes && parseMoverRegistration(bytes);
    if (!r) continue;
    const ageSeconds = Math.max(0, (now - Date.parse(r.seenAt)) / 1000);
    const status: MoverStatus = r.state === 'stopped' ? 'stopped' : ageSeconds > (deps.staleAfterBeats ?? 3) * r.heartbeatSeconds ? 'stale' : 'live';
    out.push({ ...r, status, ageSeconds: Math.round(ageSeconds), upToDate: isVersion(r.version) && compareVersions(r.version, min) >= 0 });
  }
  return out.sort((a, b) => a.group.localeCompare(b.group) || a.name.localeCompare(b.name));
}

/** Keys under a prefix of one bucket (ListObjectsV2, every page). */
export function s3KeyLister(client: S3Client, bucket: string): KeyLister {
  return {
    keys: async (prefix) => {
      const keys: string[] = [];
      let token: string | undefined;
      try {
        do {
          const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
          for (const o of page.Contents ?? []) if (o.Key) keys.push(o.Key);
          token = page.IsTruncated ? page.NextContinuationToken : undefined;
        } while (token);
      } catch (err) {
        throw new StorageUnavailable(`LIST s3://${bucket}/${prefix} failed: ${(err as Error).message}`, err);
      }
      return keys;
    },
  };
}

export interface ListMoversInput {
  /** The repository bucket the movers register in. */
  bucket: string;
}

export const handler = middy<ListMoversInput, MoverView[]>().handler((input) => {
  if (typeof input?.bucket !== 'string' || !input.bucket) throw new Error('ListMovers needs { "bucket": "<repository bucket>" }');
  const endpoint = process.env.LIFEBOAT_S3_ENDPOINT;
  const client = s3Client({ region: process.env.AWS_REGION ?? 'us-east-1', endpoint, forcePathStyle: !!endpoint, ...(endpoint ? { credentials: LOCAL_ENDPOINT_CREDENTIALS } : {}) });
  return listMovers({ store: new S3ObjectStore(client, input.bucket), lister: s3KeyLister(client, input.bucket), now: () => new Date() });
});
