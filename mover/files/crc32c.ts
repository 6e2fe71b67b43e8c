/**
 * CRC-32C (Castagnoli), as ext4's metadata checksums and jbd2's journal checksums use it:
 * the raw register, seeded by the caller and without the final inversion (the kernel's
 * `crc32c(seed, data, len)`). Node has no CRC-32C; this is the plain table-driven form,
 * fast enough for metadata blocks. Runs in the sandboxed child (Node built-ins only).
 */
const TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

/** The CRC-32C register after `data`, starting from `seed` (ext4 and jbd2 start from ~0 or a derived seed). */
export function crc32c(seed: number, data: Uint8Array): number {
  let c = seed >>> 0;
  for (let i = 0; i < data.length; i++) c = TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** A little-endian u32 as 4 bytes, for checksums over numbers (inode and group numbers). */
export function le32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}
