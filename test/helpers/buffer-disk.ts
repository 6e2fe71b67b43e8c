/** A disk reader over a buffer in memory, for backing up a test's bytes with backupDisk. */
export function bufferReader(data: Buffer) {
  return { sizeBytes: data.length, read: async (b: Buffer, off: number, len: number) => data.copy(b, 0, off, off + len), close: async () => {} };
}
