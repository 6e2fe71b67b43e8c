/**
 * Object Lock on the embedded stack's S3 endpoint (local/s3-object-lock.ts), through the
 * AWS SDK as a client of AWS would send it, with the server's clock moved by the test:
 * default retention on PUT, extend, shorten refused (COMPLIANCE; GOVERNANCE without a
 * bypass), deletes and overwrites refused while locked and allowed after.
 */
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectLockConfigurationCommand,
  GetObjectRetentionCommand,
  HeadObjectCommand,
  PutObjectCommand,
  PutObjectLockConfigurationCommand,
  PutObjectRetentionCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LOCAL_ENDPOINT_CREDENTIALS, s3Client } from '../core/s3-store.ts';
import { startLocalS3, type LocalS3 } from '../local/s3-server.ts';

const DAY = 86_400_000;
const T0 = Date.parse('2026-01-01T00:00:00Z');

/** The S3 error code a request was refused with (or 'ok'). */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    return (err as { name: string }).name;
  }
}

describe('local S3 Object Lock', () => {
  let s3: LocalS3;
  let dir: string;
  let c: S3Client;
  let now = T0;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lifeboat-s3-lock-'));
    s3 = await startLocalS3({
      directory: dir,
      buckets: ['locked', 'plain'],
      objectLock: { locked: { mode: 'COMPLIANCE', days: 30 } },
      now: () => new Date(now),
    });
    c = s3Client({ region: 'us-east-1', endpoint: s3.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
  });
  afterAll(async () => {
    await s3.close();
    await rm(dir, { recursive: true, force: true });
  });

  const retainUntil = async (bucket: string, key: string) =>
    (await c.send(new HeadObjectCommand({ Bucket: bucket, Key: key }))).ObjectLockRetainUntilDate?.getTime();

  it("gives a PUT the bucket's default retention and says so on HEAD and GetObjectRetention", async () => {
    now = T0;
    await c.send(new PutObjectCommand({ Bucket: 'locked', Key: 'packs/a', Body: 'a' }));
    const head = await c.send(new HeadObjectCommand({ Bucket: 'locked', Key: 'packs/a' }));
    expect(head.ObjectLockMode).toBe('COMPLIANCE');
    expect(head.ObjectLockRetainUntilDate?.getTime()).toBe(T0 + 30 * DAY);
    const r = await c.send(new GetObjectRetentionCommand({ Bucket: 'locked', Key: 'packs/a' }));
    expect(r.Retention).toEqual({ Mode: 'COMPLIANCE', RetainUntilDate: new Date(T0 + 30 * DAY) });
    const conf = await c.send(new GetObjectLockConfigurationCommand({ Bucket: 'locked' }));
    expect(conf.ObjectLockConfiguration?.Rule?.DefaultRetention).toEqual({ Mode: 'COMPLIANCE', Days: 30 });
  });

  it('refuses deletes and overwrites of a locked object with AccessDenied, and allows them once its retention ran out', async () => {
    now = T0;
    await c.send(new PutObjectCommand({ Bucket: 'locked', Key: 'packs/b', Body: 'b' }));
    now = T0 + 30 * DAY - 1000;
    expect(await outcome(c.send(new DeleteObjectCommand({ Bucket: 'locked', Key: 'packs/b' })))).toBe('AccessDenied');
    expect(await outcome(c.send(new PutObjectCommand({ Bucket: 'locked', Key: 'packs/b', Body: 'other' })))).toBe('AccessDenied');
    const many = await c.send(new DeleteObjectsCommand({ Bucket: 'locked', Delete: { Objects: [{ Key: 'packs/b' }, { Key: 'packs/none' }] } }));
    expect(many.Errors?.map((e) => [e.Key, e.Code])).toEqual([['packs/b', 'AccessDenied']]);
    expect(many.Deleted?.map((d) => d.Key)).toEqual(['packs/none']);
    expect(await retainUntil('locked', 'packs/b')).toBe(T0 + 30 * DAY);
    now = T0 + 30 * DAY + 1000;
    const after = await c.send(new DeleteObjectsCommand({ Bucket: 'locked', Delete: { Objects: [{ Key: 'packs/b' }] } }));
    expect(after.Errors ?? []).toEqual([]);
    expect(await outcome(c.send(new HeadObjectCommand({ Bucket: 'locked', Key: 'packs/b' })))).toBe('NotFound');
  });

  it('extends a COMPLIANCE retention and refuses to shorten or weaken it', async () => {
    now = T0;
    await c.send(new PutObjectCommand({ Bucket: 'locked', Key: 'packs/c', Body: 'c' }));
    const later = new Date(T0 + 90 * DAY);
    await c.send(new PutObjectRetentionCommand({ Bucket: 'locked', Key: 'packs/c', Retention: { Mode: 'COMPLIANCE', RetainUntilDate: later } }));
    expect(await retainUntil('locked', 'packs/c')).toBe(later.getTime());
    expect(
      await outcome(
        c.send(
          new PutObjectRetentionCommand({ Bucket: 'locked', Key: 'packs/c', Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(T0 + 60 * DAY) } }),
        ),
      ),
    ).toBe('AccessDenied');
    expect(
      await outcome(
        c.send(
          new PutObjectRetentionCommand({
            Bucket: 'locked',
            Key: 'packs/c',
            BypassGovernanceRetention: true,
            Retention: { Mode: 'GOVERNANCE', RetainUntilDate: later },
          }),
        ),
      ),
    ).toBe('AccessDenied');
    expect(
      await outcome(
        c.send(new PutObjectRetentionCommand({ Bucket: 'locked', Key: 'packs/c', Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(T0 - DAY) } })),
      ),
    ).toBe('InvalidArgument');
    expect(await retainUntil('locked', 'packs/c')).toBe(later.getTime());
    now = later.getTime() - 1000;
    expect(await outcome(c.send(new DeleteObjectCommand({ Bucket: 'locked', Key: 'packs/c' })))).toBe('AccessDenied');
  });

  it('lets GOVERNANCE be shortened only with the bypass header and the permission', async () => {
    now = T0;
    await c.send(
      new PutObjectCommand({ Bucket: 'locked', Key: 'gov/d', Body: 'd', ObjectLockMode: 'GOVERNANCE', ObjectLockRetainUntilDate: new Date(T0 + 10 * DAY) }),
    );
    expect((await c.send(new HeadObjectCommand({ Bucket: 'locked', Key: 'gov/d' }))).ObjectLockMode).toBe('GOVERNANCE');
    const shorter = { Mode: 'GOVERNANCE' as const, RetainUntilDate: new Date(T0 + DAY) };
    expect(await outcome(c.send(new PutObjectRetentionCommand({ Bucket: 'locked', Key: 'gov/d', Retention: shorter })))).toBe('AccessDenied');
    // This server's identity does not hold s3:BypassGovernanceRetention: the header alone is not enough.
    expect(await outcome(c.send(new PutObjectRetentionCommand({ Bucket: 'locked', Key: 'gov/d', BypassGovernanceRetention: true, Retention: shorter })))).toBe(
      'AccessDenied',
    );
    const dir2 = await mkdtemp(join(tmpdir(), 'lifeboat-s3-lock-bypass-'));
    const admin = await startLocalS3({
      directory: dir2,
      buckets: ['gov'],
      objectLock: { gov: { mode: 'GOVERNANCE', days: 10 } },
      now: () => new Date(now),
      governanceBypass: true,
    });
    try {
      const a = s3Client({ region: 'us-east-1', endpoint: admin.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
      await a.send(new PutObjectCommand({ Bucket: 'gov', Key: 'k', Body: 'k' }));
      expect(await outcome(a.send(new DeleteObjectCommand({ Bucket: 'gov', Key: 'k' })))).toBe('AccessDenied');
      await a.send(new PutObjectRetentionCommand({ Bucket: 'gov', Key: 'k', BypassGovernanceRetention: true, Retention: shorter }));
      expect((await a.send(new HeadObjectCommand({ Bucket: 'gov', Key: 'k' }))).ObjectLockRetainUntilDate?.getTime()).toBe(T0 + DAY);
      expect(await outcome(a.send(new DeleteObjectCommand({ Bucket: 'gov', Key: 'k', BypassGovernanceRetention: true })))).toBe('ok');
    } finally {
      await admin.close();
      await rm(dir2, { recursive: true, force: true });
    }
  });

  it('refuses retention on a bucket without Object Lock, and enables it by CreateBucket or PutObjectLockConfiguration', async () => {
    now = T0;
    await c.send(new PutObjectCommand({ Bucket: 'plain', Key: 'x', Body: 'x' }));
    expect(
      await outcome(
        c.send(new PutObjectRetentionCommand({ Bucket: 'plain', Key: 'x', Retention: { Mode: 'COMPLIANCE', RetainUntilDate: new Date(T0 + DAY) } })),
      ),
    ).toBe('InvalidRequest');
    expect(await outcome(c.send(new GetObjectLockConfigurationCommand({ Bucket: 'plain' })))).toBe('ObjectLockConfigurationNotFoundError');
    expect(await retainUntil('plain', 'x')).toBeUndefined();
    await c.send(new CreateBucketCommand({ Bucket: 'created-locked', ObjectLockEnabledForBucket: true }));
    await c.send(
      new PutObjectLockConfigurationCommand({
        Bucket: 'created-locked',
        ObjectLockConfiguration: { ObjectLockEnabled: 'Enabled', Rule: { DefaultRetention: { Mode: 'GOVERNANCE', Days: 7 } } },
      }),
    );
    await c.send(new PutObjectCommand({ Bucket: 'created-locked', Key: 'y', Body: 'y' }));
    expect(await retainUntil('created-locked', 'y')).toBe(T0 + 7 * DAY);
  });

  it('answers a malformed retention document with MalformedXML and keeps the retention it had', async () => {
    now = T0;
    await c.send(new PutObjectCommand({ Bucket: 'locked', Key: 'packs/m', Body: 'm' }));
    for (const body of [
      '<Retention><Mode>FOREVER</Mode><RetainUntilDate>2027-01-01T00:00:00Z</RetainUntilDate></Retention>',
      '<Retention><Mode>COMPLIANCE</Mode></Retention>',
      '<Retention><Mode>COMPLIANCE</Mode><RetainUntilDate>soon</RetainUntilDate></Retention>',
    ]) {
      const res = await fetch(`${s3.url}/locked/packs/m?retention`, { method: 'PUT', body });
      expect(res.status, body).toBe(400);
      expect(await res.text(), body).toContain('<Code>MalformedXML</Code>');
    }
    expect(await retainUntil('locked', 'packs/m')).toBe(T0 + 30 * DAY);
    expect(await outcome(c.send(new GetObjectRetentionCommand({ Bucket: 'locked', Key: 'packs/none' })))).toBe('NoSuchKey');
  });

  it('keeps retention across a restart of the server', async () => {
    now = T0;
    await c.send(new PutObjectCommand({ Bucket: 'locked', Key: 'packs/e', Body: 'e' }));
    const again = await startLocalS3({ directory: dir, buckets: ['locked'], now: () => new Date(now) });
    try {
      const a = s3Client({ region: 'us-east-1', endpoint: again.url, forcePathStyle: true, credentials: LOCAL_ENDPOINT_CREDENTIALS });
      expect((await a.send(new HeadObjectCommand({ Bucket: 'locked', Key: 'packs/e' }))).ObjectLockRetainUntilDate?.getTime()).toBe(T0 + 30 * DAY);
      expect(await outcome(a.send(new DeleteObjectCommand({ Bucket: 'locked', Key: 'packs/e' })))).toBe('AccessDenied');
      await a.send(new PutObjectCommand({ Bucket: 'locked', Key: 'packs/f', Body: 'f' }));
      expect((await a.send(new HeadObjectCommand({ Bucket: 'locked', Key: 'packs/f' }))).ObjectLockRetainUntilDate?.getTime()).toBe(T0 + 30 * DAY);
    } finally {
      await again.close();
    }
  });
});
