/** Verify by range's planning and joining (repository/referenced.ts `pieceRanges`, functions/backup/verify-ranges.ts). */
import { describe, expect, it } from 'vitest';
import { joinRangeResults } from '../functions/backup/verify-ranges.ts';
import type { ManifestInfo } from '../repository/manifest/reader.ts';
import { pieceCount, pieceRanges } from '../repository/referenced.ts';

const info = (version: 1 | 2 | 3, to: number): ManifestInfo => ({ version, backupId: 'b', diskId: 'd', sizeBytes: to * 1024, chunkSize: 1024, from: 0, to });
const pieces = (...counts: number[]) => {
  let first = 0;
  return counts.map((count) => {
    const p = { firstChunk: first, count };
    first += count;
    return p;
  });
};

describe('pieceRanges', () => {
  it("cuts a version-3 manifest's pieces, as its head names them, into runs of at most perRange", () => {
    expect(pieceRanges(info(3, 12), pieces(2, 2, 1, 4, 3), 2)).toEqual([
      { firstPiece: 0, pieces: 2, from: 0, to: 4 },
      { firstPiece: 2, pieces: 2, from: 4, to: 9 },
      { firstPiece: 4, pieces: 1, from: 9, to: 12 },
    ]);
    expect(pieceRanges(info(3, 12), pieces(2, 2, 1, 4, 3), 64)).toEqual([{ firstPiece: 0, pieces: 5, from: 0, to: 12 }]);
    expect(pieceCount(info(3, 12), pieces(2, 2, 1, 4, 3))).toBe(5);
  });

  it('cuts a version-1 or -2 manifest at every 65,536 chunks, as its reader serves its batches', () => {
    expect(pieceRanges(info(2, 200_000), [], 2)).toEqual([
      { firstPiece: 0, pieces: 2, from: 0, to: 131_072 },
      { firstPiece: 2, pieces: 2, from: 131_072, to: 200_000 },
    ]);
    expect(pieceCount(info(1, 65_537), [])).toBe(2);
    expect(pieceRanges(info(2, 0), [], 2)).toEqual([]);
  });

  it('refuses a range of no pieces, naming the setting', () => {
    expect(() => pieceRanges(info(3, 4), pieces(4), 0)).toThrow('pieces per Verify range 0 (an integer, at least 1)');
  });
});

describe('joinRangeResults', () => {
  const ranges = { bucket: 'run', key: 'runs/verify/x.json', count: 3 };
  const ok = (n: number) => ({
    status: 'SUCCEEDED',
    input: { index: n },
    output: { chunksChecked: 10 + n, bytesChecked: 1000 * n, checksumsCompared: 0, packsChecked: 2, packsTrusted: n },
  });

  it("sums the ranges' counts into what Verify answers", () => {
    expect(joinRangeResults({ backupId: 'b1', vmId: 'vm', ranges }, [ok(0), ok(1), ok(2)], 'where')).toEqual({
      chunksChecked: 33,
      bytesChecked: 3000,
      checksumsCompared: 0,
      packsChecked: 6,
      packsTrusted: 3,
    });
  });

  it("fails with the first failed range's own message, and says how many failed and where every result is", () => {
    const failed = (index: number, message: string) => ({
      status: 'FAILED',
      input: { index },
      error: 'Verify.Failed',
      cause: JSON.stringify({ errorType: 'Verify.Failed', errorMessage: message }),
    });
    const join = () => joinRangeResults({ backupId: 'b1', vmId: 'vm', ranges }, [ok(0), failed(2, 'third'), failed(1, 'second')], 's3://run/m.json');
    expect(join).toThrow(expect.objectContaining({ name: 'Verify.Failed' }));
    expect(join).toThrow("second (2 of 3 ranges of backup b1 of VM 'vm' failed; every range's result: s3://run/m.json)");
  });

  it('fails when a range did not report: the backup is not verified', () => {
    expect(() => joinRangeResults({ backupId: 'b1', vmId: 'vm', ranges }, [ok(0), ok(1)], 's3://run/m.json')).toThrow(
      "backup b1 of VM 'vm': 2 of its 3 ranges reported (s3://run/m.json); it is not verified. Run the backup again",
    );
  });
});
