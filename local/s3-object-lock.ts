/**
 * S3 Object Lock for the local S3 front (s3-server.ts), following AWS's documented
 * behaviour where Lifeboat depends on it:
 *
 * - A bucket has Object Lock when it was started with it (`LocalS3Options.objectLock`),
 *   created with `x-amz-bucket-object-lock-enabled: true`, or given a configuration by
 *   PutObjectLockConfiguration; GetObjectLockConfiguration reads it. Its default
 *   retention (mode, days) applies to every object written without retention headers.
 * - PUT (and CopyObject, CompleteMultipartUpload) sets the object's retention: the
 *   `x-amz-object-lock-mode` and `x-amz-object-lock-retain-until-date` headers (both or
 *   neither; a date in the future), else the bucket's default. HEAD and GET answer with
 *   the two headers.
 * - PutObjectRetention / GetObjectRetention (`?retention`): extending is always allowed;
 *   a shorter date, a removal or a change of mode is refused (AccessDenied) in COMPLIANCE,
 *   and in GOVERNANCE unless the request sends `x-amz-bypass-governance-retention: true`
 *   and the caller holds s3:BypassGovernanceRetention (`governanceBypass`: the local
 *   server has one identity, which does not hold it unless the option says so).
 * - DeleteObject and DeleteObjects of an object whose retain-until is still ahead are
 *   refused with AccessDenied (per key in DeleteObjects' result); so is an overwrite.
 *
 * What is simplified: the bucket keeps one version per key. AWS requires versioning with
 * Object Lock; there an overwrite stores a new version and a DELETE without a version id
 * adds a delete marker, both "succeeding" while the locked version stays. Here both are
 * refused, as AWS refuses deleting a locked version: the locked bytes stay readable under
 * their key, which is what matters to a backup that references them (on AWS a delete
 * marker would hide them from readers until removed). Legal holds, `Years` in a default
 * retention beyond days×365, and the Content-MD5 that AWS requires on these requests are
 * not modelled. Time is `now()` (injectable), so tests can move past a retention.
 *
 * Retention is kept beside each object in s3rver's folder (`<key>._S3rver_retention.json`),
 * a bucket's configuration in `<bucket>/._S3rver_object-lock.json`, so both survive restarts.
 */
import { readFile, rm, writeFile } from 'node:fs/promises';
import { readAll, s3Error, s3Xml, xmlEscape, xmlUnescape, type Ctx } from './s3-front-http.ts';

export type LockMode = 'GOVERNANCE' | 'COMPLIANCE';
const MODES: readonly string[] = ['GOVERNANCE', 'COMPLIANCE'];

/** A bucket's Object Lock: enabled, with an optional default retention. */
export interface BucketObjectLock {
  mode?: LockMode;
  days?: number;
}

export interface ObjectLockOptions {
  /** Buckets that have Object Lock from the start, with their default retention. */
  buckets?: Record<string, BucketObjectLock>;
  /** The time retention is judged by (default: the system clock). */
  now?: () => Date;
  /** Whether the caller holds s3:BypassGovernanceRetention (default false). */
  governanceBypass?: boolean;
}

export interface ObjectRetention {
  mode: LockMode;
  until: Date;
}

/** The parts of s3rver the lock needs: where a resource of a key lives, and deleting an object. */
export interface LockableStore {
  getResourcePath(bucket: string, key: string, resource: string): string;
  deleteObject(bucket: string, key: string): Promise<void>;
  existsObject(bucket: string, key: string): Promise<boolean>;
}

const NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"';
const DAY_MS = 86_400_000;
const LOCKED = 'Access Denied because object protected by object lock.';
const tag = (xml: string, name: string) => {
  const m = new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml);
  return m ? xmlUnescape(m[1]!.trim()) : undefined;
};
const readJson = async <T>(path: string): Promise<T | undefined> => {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
};

/** Object Lock over an s3rver store; `handle` is called by the front for every request. */
export class ObjectLock {
  private readonly store: LockableStore;
  private readonly now: () => Date;
  private readonly bypassAllowed: boolean;
  private readonly configs = new Map<string, BucketObjectLock | null>();

  constructor(store: LockableStore, o: ObjectLockOptions = {}) {
    this.store = store;
    this.now = o.now ?? (() => new Date());
    this.bypassAllowed = o.governanceBypass ?? false;
    for (const [bucket, c] of Object.entries(o.buckets ?? {})) this.configs.set(bucket, c);
  }

  /** Writes the buckets configured at start to disk (call once their folders exist). */
  async persistConfigured(): Promise<void> {
    for (const [bucket, c] of this.configs) if (c) await writeFile(this.configPath(bucket), JSON.stringify(c));
  }

  private configPath(bucket: string) {
    return this.store.getResourcePath(bucket, '', 'object-lock.json');
  }
  private retentionPath(bucket: string, key: string) {
    return this.store.getResourcePath(bucket, key, 'retention.json');
  }

  /** The bucket's Object Lock, or null when it has none. */
  async bucketLock(bucket: string): Promise<BucketObjectLock | null> {
    if (!this.configs.has(bucket)) this.configs.set(bucket, (await readJson<BucketObjectLock>(this.configPath(bucket))) ?? null);
    return this.configs.get(bucket)!;
  }
  private async setBucketLock(bucket: string, c: BucketObjectLock) {
    await writeFile(this.configPath(bucket), JSON.stringify(c));
    this.configs.set(bucket, c);
  }

  /** The object's retention (also one that has run out), or undefined. */
  async retention(bucket: string, key: string): Promise<ObjectRetention | undefined> {
    const r = await readJson<{ mode: LockMode; until: string }>(this.retentionPath(bucket, key));
    return r ? { mode: r.mode, until: new Date(r.until) } : undefined;
  }
  private async setRetention(bucket: string, key: string, r: ObjectRetention | undefined) {
    if (r) await writeFile(this.retentionPath(bucket, key), JSON.stringify({ mode: r.mode, until: r.until.toISOString() }));
    else await rm(this.retentionPath(bucket, key), { force: true });
  }

  /** Why the object may not be deleted or overwritten now (undefined: it may). */
  private async refusal(ctx: Ctx, bucket: string, key: string): Promise<string | undefined> {
    const r = await this.retention(bucket, key);
    if (!r || r.until.getTime() <= this.now().getTime()) return undefined;
    if (r.mode === 'GOVERNANCE' && this.bypassing(ctx)) return undefined;
    return `${LOCKED} (${r.mode} retention until ${r.until.toISOString()})`;
  }
  private bypassing(ctx: Ctx) {
    return ctx.get('x-amz-bypass-governance-retention').toLowerCase() === 'true' && this.bypassAllowed;
  }

  /**
   * Handles what Object Lock changes about a request: answers it itself (retention and
   * configuration subresources, deletes) or runs `next` (s3rver) with the checks and
   * bookkeeping around it. `write` runs a PUT inside the key's turn (s3-server.ts).
   */
  async handle(ctx: Ctx, bucket: string, key: string, next: () => Promise<void>, write: (id: string, fn: () => Promise<void>) => Promise<void>): Promise<void> {
    const q = new URLSearchParams(ctx.querystring);
    if (bucket === '') return next();
    if (key === '') {
      if (q.has('object-lock')) return this.lockConfiguration(ctx, bucket);
      if (ctx.method === 'POST' && q.has('delete')) return this.deleteObjects(ctx, bucket);
      if (ctx.method === 'PUT' && ctx.get('x-amz-bucket-object-lock-enabled').toLowerCase() === 'true') {
        await next();
        if (ctx.status < 300) await this.setBucketLock(bucket, (await this.bucketLock(bucket)) ?? {});
        return;
      }
      return next();
    }
    if (q.has('retention')) return ctx.method === 'PUT' ? this.putRetention(ctx, bucket, key) : this.getRetention(ctx, bucket, key);
    if (ctx.method === 'DELETE' && !q.has('uploadId')) {
      const refused = await this.refusal(ctx, bucket, key);
      if (refused) return s3Error(ctx, 403, 'AccessDenied', refused, key);
      await this.setRetention(bucket, key, undefined);
      return next();
    }
    const completes = ctx.method === 'POST' && q.has('uploadId');
    const puts = ctx.method === 'PUT' && !q.has('uploadId') && !q.has('partNumber');
    if (puts || completes) return write(`${bucket}/${key}`, () => this.write(ctx, bucket, key, next));
    if (ctx.method === 'GET' || ctx.method === 'HEAD') {
      await next();
      const r = ctx.status < 300 ? await this.retention(bucket, key) : undefined;
      if (r) {
        ctx.set('x-amz-object-lock-mode', r.mode);
        ctx.set('x-amz-object-lock-retain-until-date', r.until.toISOString());
      }
      return;
    }
    return next();
  }

  /** A PUT, copy or multipart completion: refused over a locked object; the new object gets its retention. */
  private async write(ctx: Ctx, bucket: string, key: string, next: () => Promise<void>): Promise<void> {
    const mode = ctx.get('x-amz-object-lock-mode');
    const untilHeader = ctx.get('x-amz-object-lock-retain-until-date');
    const lock = await this.bucketLock(bucket);
    let asked: ObjectRetention | undefined;
    if (mode || untilHeader) {
      if (!lock) return s3Error(ctx, 400, 'InvalidRequest', 'Bucket is missing Object Lock Configuration', key);
      if (!mode || !untilHeader)
        return s3Error(ctx, 400, 'InvalidArgument', 'x-amz-object-lock-retain-until-date and x-amz-object-lock-mode must both be supplied', key);
      const until = new Date(untilHeader);
      if (!MODES.includes(mode)) return s3Error(ctx, 400, 'InvalidArgument', `Unknown wormMode directive: ${mode}`, key);
      if (Number.isNaN(until.getTime())) return s3Error(ctx, 400, 'InvalidArgument', `The retain until date is not a date: ${untilHeader}`, key);
      if (until.getTime() <= this.now().getTime()) return s3Error(ctx, 400, 'InvalidArgument', 'The retain until date must be in the future!', key);
      asked = { mode: mode as LockMode, until };
    }
    const refused = await this.refusal(ctx, bucket, key);
    if (refused) return s3Error(ctx, 403, 'AccessDenied', refused, key);
    await next();
    if (ctx.status >= 300) return;
    const byDefault = lock?.mode && lock.days ? { mode: lock.mode, until: new Date(this.now().getTime() + lock.days * DAY_MS) } : undefined;
    await this.setRetention(bucket, key, asked ?? byDefault);
  }

  private async getRetention(ctx: Ctx, bucket: string, key: string) {
    if (!(await this.bucketLock(bucket))) return s3Error(ctx, 400, 'InvalidRequest', 'Bucket is missing Object Lock Configuration', key);
    if (!(await this.store.existsObject(bucket, key))) return s3Error(ctx, 404, 'NoSuchKey', 'The specified key does not exist.', key);
    const r = await this.retention(bucket, key);
    if (!r) return s3Error(ctx, 404, 'NoSuchObjectLockConfiguration', 'The specified object does not have a ObjectLock configuration', key);
    s3Xml(ctx, `<Retention ${NS}><Mode>${r.mode}</Mode><RetainUntilDate>${r.until.toISOString()}</RetainUntilDate></Retention>`);
  }

  /** PutObjectRetention: extend always; shorten, remove or change mode only past COMPLIANCE and with a GOVERNANCE bypass. */
  private async putRetention(ctx: Ctx, bucket: string, key: string) {
    const xml = (await readAll(ctx.req)).toString('utf8');
    if (!(await this.bucketLock(bucket))) return s3Error(ctx, 400, 'InvalidRequest', 'Bucket is missing Object Lock Configuration', key);
    if (!(await this.store.existsObject(bucket, key))) return s3Error(ctx, 404, 'NoSuchKey', 'The specified key does not exist.', key);
    const mode = tag(xml, 'Mode');
    const untilText = tag(xml, 'RetainUntilDate');
    if ((mode === undefined) !== (untilText === undefined))
      return s3Error(ctx, 400, 'MalformedXML', 'Retention needs both Mode and RetainUntilDate, or neither (to remove it)', key);
    if (mode !== undefined && !MODES.includes(mode)) return s3Error(ctx, 400, 'MalformedXML', `Mode must be GOVERNANCE or COMPLIANCE, got ${mode}`, key);
    const until = untilText === undefined ? undefined : new Date(untilText);
    if (until && Number.isNaN(until.getTime())) return s3Error(ctx, 400, 'MalformedXML', `RetainUntilDate is not a date: ${untilText}`, key);
    if (until && until.getTime() <= this.now().getTime()) return s3Error(ctx, 400, 'InvalidArgument', 'The retain until date must be in the future!', key);
    const next = until ? { mode: mode as LockMode, until } : undefined;
    const current = await this.retention(bucket, key);
    if (current && current.until.getTime() > this.now().getTime()) {
      const extends_ = next !== undefined && next.mode === current.mode && next.until.getTime() >= current.until.getTime();
      if (!extends_ && (current.mode === 'COMPLIANCE' || !this.bypassing(ctx))) {
        return s3Error(
          ctx,
          403,
          'AccessDenied',
          `${LOCKED} A ${current.mode} retention (until ${current.until.toISOString()}) can only be extended${current.mode === 'GOVERNANCE' ? ' without x-amz-bypass-governance-retention and s3:BypassGovernanceRetention' : ''}.`,
          key,
        );
      }
    }
    await this.setRetention(bucket, key, next);
    ctx.status = 200;
    ctx.body = '';
  }

  /** DeleteObjects: every key not under retention is deleted; a locked one is an AccessDenied error in the result. */
  private async deleteObjects(ctx: Ctx, bucket: string) {
    const xml = (await readAll(ctx.req)).toString('utf8');
    const quiet = tag(xml, 'Quiet') === 'true';
    const keys = [...xml.matchAll(/<Object>([\s\S]*?)<\/Object>/g)].map((m) => tag(m[1]!, 'Key')).filter((k) => k !== undefined);
    if (keys.length > 1000) return s3Error(ctx, 400, 'MalformedXML', 'DeleteObjects takes at most 1000 keys', '');
    const out: string[] = [];
    for (const key of keys) {
      const refused = await this.refusal(ctx, bucket, key);
      if (refused) {
        out.push(`<Error><Key>${xmlEscape(key)}</Key><Code>AccessDenied</Code><Message>${xmlEscape(refused)}</Message></Error>`);
        continue;
      }
      await this.setRetention(bucket, key, undefined);
      await this.store.deleteObject(bucket, key);
      if (!quiet) out.push(`<Deleted><Key>${xmlEscape(key)}</Key></Deleted>`);
    }
    s3Xml(ctx, `<DeleteResult ${NS}>${out.join('')}</DeleteResult>`);
  }

  /** GetObjectLockConfiguration / PutObjectLockConfiguration. */
  private async lockConfiguration(ctx: Ctx, bucket: string) {
    if (ctx.method === 'PUT') {
      const xml = (await readAll(ctx.req)).toString('utf8');
      if (tag(xml, 'ObjectLockEnabled') !== 'Enabled') return s3Error(ctx, 400, 'MalformedXML', 'ObjectLockEnabled must be Enabled', '');
      const mode = tag(xml, 'Mode');
      const days = tag(xml, 'Days') ?? (tag(xml, 'Years') !== undefined ? String(Number(tag(xml, 'Years')) * 365) : undefined);
      if ((mode === undefined) !== (days === undefined)) return s3Error(ctx, 400, 'MalformedXML', 'DefaultRetention needs Mode and Days (or Years)', '');
      if (mode !== undefined && !MODES.includes(mode)) return s3Error(ctx, 400, 'MalformedXML', `Mode must be GOVERNANCE or COMPLIANCE, got ${mode}`, '');
      if (days !== undefined && !(Number.isInteger(Number(days)) && Number(days) > 0))
        return s3Error(ctx, 400, 'InvalidArgument', `Default retention period must be a positive integer value, got ${days}`, '');
      await this.setBucketLock(bucket, mode ? { mode: mode as LockMode, days: Number(days) } : {});
      ctx.status = 200;
      ctx.body = '';
      return;
    }
    const c = await this.bucketLock(bucket);
    if (!c) return s3Error(ctx, 404, 'ObjectLockConfigurationNotFoundError', 'Object Lock configuration does not exist for this bucket', '');
    const rule = c.mode ? `<Rule><DefaultRetention><Mode>${c.mode}</Mode><Days>${c.days}</Days></DefaultRetention></Rule>` : '';
    s3Xml(ctx, `<ObjectLockConfiguration ${NS}><ObjectLockEnabled>Enabled</ObjectLockEnabled>${rule}</ObjectLockConfiguration>`);
  }
}
