/**
 * Changed-block tracking in the backup pipeline: chunks no changed extent touches are
 * taken from the parent manifest without being read; whenever the tracking cannot be
 * trusted the disk is read whole and the result says why. The real dirty bitmaps (libvirt,
 * QEMU) are exercised by test/libvirt.e2e.test.ts; here the reader is a buffer that
 * records what was read, so each edge case is forced exactly.
 */
import { Repository } from '../repository/open.ts';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { deriveKeys } from '../repository/format.ts';
import type { ChangeTrackingOffer, DiskRef } from '../contracts/jobs.ts';
import { decodeManifest } from './helpers/manifest.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import { backupDisk } from '../mover/pipeline/backup-disk.ts';
import type { DiskReader, Extent } from '../mover/sources/source.ts';

const CHUNK = 64 * 1024;
const keys = deriveKeys(randomBytes(32));

/** A disk in memory whose reads are recorded, with the changed extents a dirty bitmap would list. */
function memoryDisk(data: Buffer, changed?: Extent[]) {
  const reads: number[] = [];
  const reader: DiskReader = {
    sizeBytes: data.length,
    read: async (buf, offset, length) => {
      reads.push(offset);
      data.copy(buf, 0, offset, offset + length);
      return length;
    },
    ...(changed ? { changed: async () => changed } : {}),
    close: async () => {},
  };
  return { reader, reads };
}

const disk = (data: Buffer, changeTracking?: ChangeTrackingOffer): DiskRef => ({
  diskId: 'vda',
  path: 'mem',
  sizeBytes: data.length,
  ...(changeTracking ? { changeTracking } : {}),
});

async function fullThenIncremental(opts: { resize?: boolean; offer?: (parent: string) => ChangeTrackingOffer; changed?: Extent[]; heal?: 'first' } = {}) {
  const store = new MemoryObjectStore();
  const base = randomBytes(CHUNK * 16);
  base.fill(0, 3 * CHUNK, 4 * CHUNK); // a zero chunk
  const full = await backupDisk({
    repository: new Repository(store, keys),
    reader: memoryDisk(base).reader,
    disk: disk(base),
    backupId: 'b1',
    chunkSize: CHUNK,
  });
  const next = Buffer.from(base);
  randomBytes(4096).copy(next, 5 * CHUNK + 100); // the guest writes into chunk 5 ...
  randomBytes(4096).copy(next, 9 * CHUNK); // ... and chunk 9
  const data = opts.resize ? Buffer.concat([next, randomBytes(CHUNK)]) : next;
  const changed = opts.changed ?? [
    { offset: 5 * CHUNK + 64, length: 4096 + 64 },
    { offset: 9 * CHUNK, length: 4096 },
  ];
  const { reader, reads } = memoryDisk(data, changed);
  const parentManifest = await decodeManifest(keys, (await store.get(full.manifestKey))!, 'b1', 'vda', store);
  const result = await backupDisk({
    repository: new Repository(store, keys),
    reader,
    disk: disk(data, opts.offer ? opts.offer('b1') : { since: 'lifeboat-b1', sinceBackupId: 'b1' }),
    backupId: 'b2',
    chunkSize: CHUNK,
    parentManifestKey: full.manifestKey,
    parentBackupId: 'b1',
    ...(opts.heal ? { healChunks: new Set([parentManifest.chunks[0]!]) } : {}),
  });
  const manifest = await decodeManifest(keys, (await store.get(result.manifestKey))!, 'b2', 'vda', store);
  return { result, reads: reads.map((o) => o / CHUNK), manifest, parentManifest };
}

describe('changed-block tracking', () => {
  it('reads only the chunks the changed extents touch and takes the rest from the parent', async () => {
    const { result, reads, manifest, parentManifest } = await fullThenIncremental();
    expect(reads.sort((a, b) => a - b)).toEqual([5, 9]);
    expect(result.changeTracking).toEqual({ used: true, since: 'lifeboat-b1' });
    expect(result.stats.bytesRead).toBe(2 * CHUNK);
    expect(result.stats.bytesUnchanged).toBe(14 * CHUNK);
    expect(result.stats.uploadedChunks).toBe(2);
    // Untouched chunks are the parent's, the zero chunk stays zero, the written ones are new.
    for (let i = 0; i < 16; i++) {
      if (i === 5 || i === 9) expect(manifest.chunks[i]).not.toBe(parentManifest.chunks[i]);
      else expect(manifest.chunks[i]).toBe(parentManifest.chunks[i]);
    }
    expect(manifest.chunks[3]).toBeNull();
  });

  it('reads everything and says why when the disk was resized', async () => {
    const { result, reads } = await fullThenIncremental({ resize: true });
    expect(reads).toHaveLength(17);
    expect(result.changeTracking).toMatchObject({ used: false, reason: expect.stringMatching(/resized/) });
    expect(result.stats.uploadedChunks).toBe(3); // the two written chunks and the new one: the rest matched by id
  });

  it('reads everything when the source offers no tracking, and passes its reason on', async () => {
    const { result, reads } = await fullThenIncremental({ offer: () => ({ unavailable: 'the VM was shut off' }) });
    expect(reads).toHaveLength(16);
    expect(result.changeTracking).toEqual({ used: false, reason: 'the VM was shut off' });
    expect(result.stats.uploadedChunks).toBe(2);
  });

  it('does not trust changes tracked since another backup than the parent', async () => {
    const { result, reads } = await fullThenIncremental({ offer: () => ({ since: 'lifeboat-b0', sinceBackupId: 'b0' }) });
    expect(reads).toHaveLength(16);
    expect(result.changeTracking).toMatchObject({ used: false, reason: expect.stringMatching(/since backup b0, not since the parent b1/) });
  });

  it('reads a quarantined chunk again even where nothing changed', async () => {
    const { reads } = await fullThenIncremental({ heal: 'first' });
    expect(reads.sort((a, b) => a - b)).toEqual([0, 5, 9]);
  });

  it('treats an empty change list as nothing changed: no read, no upload, same chunks', async () => {
    const { result, reads, manifest, parentManifest } = await fullThenIncremental({ changed: [] });
    expect(reads).toEqual([]);
    expect(result.stats.uploadedChunks).toBe(0);
    // The data did change (the test wrote it), so this backup holds the parent's chunks: exactly what the bitmap claimed.
    expect(manifest.chunks).toEqual(parentManifest.chunks);
  });
});
