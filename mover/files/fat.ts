/**
 * A read-only FAT12/16/32 reader with long (VFAT) names: the type from the count of
 * clusters (as Microsoft's specification says), the fixed root directory of FAT12/16 and
 * the cluster-chained one of FAT32, short names with their lower-case flags, long names
 * checked against their short entry's checksum. FAT keeps no owner or permission bits:
 * directories read as 0755, files as 0644 (0444 when read-only), owner 0; its times are
 * local times without a zone, read as UTC.
 *
 * Every cluster chain is followed at most as many steps as the volume has clusters (a
 * loop is an error naming the file), and every cluster number is checked. Runs in the
 * sandboxed child.
 */
import { FsCorrupt, view, type BlockReader } from './block-reader.ts';
import { LIMITS, type Entry, type FileSystem } from './fs-types.ts';

export interface FatNode {
  /** 0: the fixed root directory of FAT12/16. */
  cluster: number;
  size: number;
  dir: boolean;
}

const ATTR = { READ_ONLY: 0x01, VOLUME_ID: 0x08, DIRECTORY: 0x10, LFN: 0x0f };

function fatTime(date: number, time: number): number {
  if (date === 0) return 0;
  const y = 1980 + (date >> 9),
    mo = ((date >> 5) & 15) - 1,
    d = date & 31;
  return Date.UTC(y, mo, d, time >> 11, (time >> 5) & 63, (time & 31) * 2);
}

/** Short names are in an OEM code page; 437 is DOS's and Linux's default (bytes below 0x80 are ASCII). */
const CP437_HIGH = 'ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u00a0';
const oem = (b: Buffer) => [...b].map((c) => (c < 0x80 ? String.fromCharCode(c) : CP437_HIGH[c - 0x80]!)).join('');

function shortChecksum(b: Buffer, at: number): number {
  let sum = 0;
  for (let i = 0; i < 11; i++) sum = (((sum & 1) << 7) + (sum >> 1) + b[at + i]!) & 0xff;
  return sum;
}

export class FatFs implements FileSystem<FatNode> {
  readonly kind: string;
  private readonly bytesPerSector: number;
  private readonly clusterBytes: number;
  private readonly fatOffset: number;
  private readonly fatBytes: number;
  private readonly rootOffset: number;
  private readonly rootEntries: number;
  private readonly dataOffset: number;
  private readonly clusters: number;
  private readonly bits: 12 | 16 | 32;
  private readonly rootCluster: number;
  private fat: Buffer | undefined;
  private readonly chains = new WeakMap<FatNode, number[]>();

  private readonly disk: BlockReader;

  private constructor(disk: BlockReader, b: Buffer) {
    this.disk = disk;
    this.bytesPerSector = b.readUInt16LE(11);
    const secPerClus = b[13]!;
    const reserved = b.readUInt16LE(14);
    const numFats = b[16]!;
    this.rootEntries = b.readUInt16LE(17);
    const totSec = b.readUInt16LE(19) || b.readUInt32LE(32);
    const fatSz = b.readUInt16LE(22) || b.readUInt32LE(36);
    this.clusterBytes = secPerClus * this.bytesPerSector;
    this.fatOffset = reserved * this.bytesPerSector;
    this.fatBytes = fatSz * this.bytesPerSector;
    this.rootOffset = this.fatOffset + numFats * this.fatBytes;
    const rootBytes = Math.ceil((this.rootEntries * 32) / this.bytesPerSector) * this.bytesPerSector;
    this.dataOffset = this.rootOffset + rootBytes;
    if (fatSz === 0 || totSec === 0 || this.dataOffset >= totSec * this.bytesPerSector)
      throw new FsCorrupt(`FAT boot sector: FAT size ${fatSz} sectors and ${totSec} sectors in all leave no data area`);
    this.clusters = Math.floor((totSec * this.bytesPerSector - this.dataOffset) / this.clusterBytes);
    this.bits = this.clusters < 4085 ? 12 : this.clusters < 65525 ? 16 : 32;
    this.rootCluster = this.bits === 32 ? b.readUInt32LE(44) & 0x0fffffff : 0;
    if (this.bits === 32 && !this.validCluster(this.rootCluster))
      throw new FsCorrupt(`FAT32 boot sector: root directory cluster ${this.rootCluster} is not one of the volume's clusters 2-${this.clusters + 1}`);
    if (this.fatBytes * 8 < (this.clusters + 2) * this.bits)
      throw new FsCorrupt(`FAT boot sector: a FAT of ${this.fatBytes} bytes cannot hold ${this.clusters} clusters`);
    if (totSec * this.bytesPerSector > disk.size + this.bytesPerSector)
      throw new FsCorrupt(`FAT boot sector: ${totSec} sectors do not fit the ${disk.size}-byte partition (truncated image?)`);
    this.kind = `vfat (FAT${this.bits})`;
  }

  /** The FAT volume on `disk`, or undefined when its first sector is no FAT boot sector. */
  static async open(disk: BlockReader): Promise<FatFs | undefined> {
    if (disk.size < 512) return undefined;
    const b = view(await disk.read(0, 512));
    if (!FatFs.looksLikeBootSector(b)) return undefined;
    return new FatFs(disk, b);
  }

  /** A jump instruction, a power-of-two sector (512-4096) and cluster size, reserved sectors and one or two FATs, 55AA. */
  static looksLikeBootSector(b: Buffer): boolean {
    const bps = b.readUInt16LE(11);
    const spc = b[13]!;
    return (
      (b[0] === 0xeb || b[0] === 0xe9) &&
      b[510] === 0x55 &&
      b[511] === 0xaa &&
      [512, 1024, 2048, 4096].includes(bps) &&
      spc > 0 &&
      (spc & (spc - 1)) === 0 &&
      b.readUInt16LE(14) >= 1 &&
      (b[16] === 1 || b[16] === 2)
    );
  }

  private validCluster(c: number): boolean {
    return c >= 2 && c < this.clusters + 2;
  }

  private async next(c: number): Promise<number> {
    this.fat ??= view(await this.disk.read(this.fatOffset, this.fatBytes));
    const f = this.fat;
    if (this.bits === 32) return f.readUInt32LE(c * 4) & 0x0fffffff;
    if (this.bits === 16) return f.readUInt16LE(c * 2);
    const v = f.readUInt16LE(Math.floor(c * 1.5));
    return c & 1 ? v >> 4 : v & 0xfff;
  }

  private isEnd(v: number): boolean {
    return v >= (this.bits === 32 ? 0x0ffffff8 : this.bits === 16 ? 0xfff8 : 0xff8);
  }

  /** The chain from `first`: at most `maxClusters` (a loop or a bad cluster number is an error). */
  private async chain(first: number, maxClusters: number, what: string): Promise<number[]> {
    const out: number[] = [];
    for (let c = first; ; ) {
      if (!this.validCluster(c)) throw new FsCorrupt(`FAT: ${what}: cluster ${c} in its chain is not one of the volume's clusters 2-${this.clusters + 1}`);
      if (out.length >= maxClusters)
        throw new FsCorrupt(`FAT: ${what}: its cluster chain is longer than ${maxClusters} clusters (a loop, or a size that does not match)`);
      out.push(c);
      const n = await this.next(c);
      if (this.isEnd(n)) return out;
      c = n;
    }
  }

  private entry(name: string, b: Buffer, at: number): Entry {
    const attr = b[at + 11]!;
    const dir = (attr & ATTR.DIRECTORY) !== 0;
    return {
      name,
      type: dir ? 'dir' : 'file',
      size: dir ? 0 : b.readUInt32LE(at + 28),
      mode: dir ? 0o755 : attr & ATTR.READ_ONLY ? 0o444 : 0o644,
      uid: 0,
      gid: 0,
      mtimeMs: fatTime(b.readUInt16LE(at + 24), b.readUInt16LE(at + 22)),
      atimeMs: fatTime(b.readUInt16LE(at + 18), 0),
    };
  }

  nodeId(n: FatNode): string {
    return `cluster ${n.cluster}`;
  }

  async root(): Promise<{ node: FatNode; entry: Entry }> {
    return {
      node: { cluster: this.rootCluster, size: 0, dir: true },
      entry: { name: '/', type: 'dir', size: 0, mode: 0o755, uid: 0, gid: 0, mtimeMs: 0, atimeMs: 0 },
    };
  }

  async list(dir: FatNode, path: string): Promise<{ node: FatNode; entry: Entry }[]> {
    if (!dir.dir) throw new FsCorrupt(`FAT: ${path} is not a directory`);
    let b: Buffer;
    if (dir.cluster === 0) b = view(await this.disk.read(this.rootOffset, this.rootEntries * 32));
    else {
      const chain = await this.chain(dir.cluster, Math.ceil(LIMITS.dirBytes / this.clusterBytes), `directory ${path}`);
      b = Buffer.concat(
        await Promise.all(chain.map(async (c) => view(await this.disk.read(this.dataOffset + (c - 2) * this.clusterBytes, this.clusterBytes)))),
      );
    }
    const out: { node: FatNode; entry: Entry }[] = [];
    let lfn: string[] = [];
    let lfnSum = -1;
    for (let at = 0; at + 32 <= b.length; at += 32) {
      const first = b[at]!;
      if (first === 0) break;
      const attr = b[at + 11]!;
      if (first === 0xe5) {
        lfn = [];
        continue;
      }
      if ((attr & 0x3f) === ATTR.LFN) {
        const seq = first & 0x1f;
        if (first & 0x40) {
          lfn = [];
          lfnSum = b[at + 13]!;
        }
        if (seq < 1 || seq > 20 || b[at + 13] !== lfnSum) {
          lfn = [];
          continue;
        }
        const part = Buffer.concat([b.subarray(at + 1, at + 11), b.subarray(at + 14, at + 26), b.subarray(at + 28, at + 32)]).toString('utf16le');
        lfn[seq - 1] = part;
        continue;
      }
      if (attr & ATTR.VOLUME_ID) {
        lfn = [];
        continue;
      }
      const long = lfn.length && lfnSum === shortChecksum(b, at) && lfn.every((x) => x !== undefined) ? lfn.join('').replace(/\0[\s\S]*$/, '') : '';
      lfn = [];
      const nt = b[at + 12]!;
      const raw = Buffer.from(b.subarray(at, at + 11));
      if (raw[0] === 0x05) raw[0] = 0xe5; // a name starting with 0xE5 is stored as 0x05
      const base = oem(raw.subarray(0, 8)).trimEnd();
      const ext = oem(raw.subarray(8, 11)).trimEnd();
      const short = (nt & 0x08 ? base.toLowerCase() : base) + (ext ? `.${nt & 0x10 ? ext.toLowerCase() : ext}` : '');
      const name = long || short;
      if (name === '.' || name === '..') continue;
      if (out.length >= LIMITS.dirEntries) throw new FsCorrupt(`FAT: directory ${path} has more than ${LIMITS.dirEntries} entries`);
      const cluster = (this.bits === 32 ? b.readUInt16LE(at + 20) << 16 : 0) | b.readUInt16LE(at + 26);
      const entry = this.entry(name, b, at);
      out.push({ node: { cluster, size: entry.size, dir: entry.type === 'dir' }, entry });
    }
    return out;
  }

  async read(file: FatNode, offset: number, length: number, path: string): Promise<Uint8Array | null> {
    const end = Math.min(file.size, offset + length);
    if (offset >= end) return Buffer.alloc(0);
    if (file.cluster === 0) throw new FsCorrupt(`FAT: ${path} has ${file.size} bytes but no first cluster`);
    let chain = this.chains.get(file);
    if (!chain) this.chains.set(file, (chain = await this.chain(file.cluster, Math.ceil(file.size / this.clusterBytes), path)));
    const out = Buffer.alloc(end - offset);
    for (let at = offset; at < end; ) {
      const i = Math.floor(at / this.clusterBytes);
      if (chain[i] === undefined)
        throw new FsCorrupt(`FAT: ${path}: its cluster chain ends after ${chain.length} clusters, before its size of ${file.size} bytes`);
      // Neighbouring clusters in one read.
      let j = i;
      while (chain[j + 1] === chain[j]! + 1 && (j + 1) * this.clusterBytes < end) j++;
      const within = at % this.clusterBytes;
      const n = Math.min((j - i + 1) * this.clusterBytes - within, end - at);
      out.set(await this.disk.read(this.dataOffset + (chain[i]! - 2) * this.clusterBytes + within, n), at - offset);
      at += n;
    }
    return out;
  }
}
