/**
 * A tiny real Linux guest for tests and the demo: Debian's kernel and a busybox
 * initramfs holding the virtio modules, the QEMU guest agent (with its shared
 * libraries) and `/init` + the fsfreeze hook from this folder (see README.md).
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { chmod, mkdir, readFile, readdir, realpath, rename, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { VmLabUnavailable } from './errors.ts';

const run = promisify(execFile);

/** The kernel and initramfs of a built guest, for `<kernel>` and `<initrd>`. */
export interface GuestImage {
  kernel: string;
  initrd: string;
}

/** Where the guest's ingredients come from; the defaults are Debian's packages. */
export interface GuestSources {
  /** `/boot/vmlinuz-<version>`; default: the newest one with `/lib/modules/<version>`. */
  kernel?: string;
  /** `busybox-static`'s binary. */
  busybox?: string;
  /** `qemu-guest-agent`'s binary. */
  qemuGa?: string;
}

/**
 * Modules `/init` loads; their dependencies (virtio_ring, virtio, virtio_pci_*_dev) are
 * added in dependency order from `modules.dep`, since without that order `/dev/vda`
 * never appears. virtio_console carries the guest agent's channel.
 */
const MODULES = ['virtio_pci', 'virtio_blk', 'virtio_console'];

/** Bumped when the archive's layout changes, so cached guests are rebuilt. */
const LAYOUT_VERSION = 1;

/**
 * Builds the guest once and caches it under `cacheDir/guest-<hash>/`, the hash covering
 * every input file's content, the scripts and the layout: a kernel or qemu-ga upgrade
 * or an edited `/init` gives a new guest, an unchanged machine reuses the old one.
 * Needs no network and no root. Throws {@link VmLabUnavailable} when a package is missing.
 */
export async function buildGuest(cacheDir: string, sources: GuestSources = {}): Promise<GuestImage> {
  const kernel = sources.kernel ?? (await newestKernel());
  const version = kernelVersion(kernel);
  const busybox = sources.busybox ?? '/bin/busybox';
  const qemuGa = sources.qemuGa ?? '/usr/sbin/qemu-ga';
  for (const [what, path] of [
    ['busybox (busybox-static)', busybox],
    ['qemu-ga (qemu-guest-agent)', qemuGa],
  ] as const) {
    if (!existsSync(path)) throw new VmLabUnavailable(`${what} not found at ${path}`);
  }
  const entries = await guestEntries(version, busybox, qemuGa);
  const kernelBytes = await readFile(kernel).catch((e: unknown) => {
    throw new VmLabUnavailable(`cannot read the guest kernel ${kernel}`, e);
  });

  const hash = createHash('sha256').update(`layout ${LAYOUT_VERSION}\n`).update(kernelBytes);
  for (const e of entries)
    hash
      .update(`${e.name} ${e.mode} ${e.rdev ?? ''} `)
      .update(e.data ?? '')
      .update('\n');
  const dir = join(cacheDir, `guest-${hash.digest('hex').slice(0, 16)}`);
  const image = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.gz') };
  if (existsSync(image.kernel) && existsSync(image.initrd)) return image;

  await mkdir(dir, { recursive: true });
  // Written under temporary names and renamed, so a concurrent or interrupted build
  // never leaves a half-written guest that a later call would take as cached.
  const tmp = `.tmp-${process.pid}-${Date.now()}`;
  await writeFile(join(dir, `initrd${tmp}`), gzipSync(newcArchive(entries), { level: 6 }));
  await writeFile(join(dir, `vmlinuz${tmp}`), kernelBytes);
  await chmod(join(dir, `vmlinuz${tmp}`), 0o644);
  await rename(join(dir, `initrd${tmp}`), image.initrd);
  await rename(join(dir, `vmlinuz${tmp}`), image.kernel);
  return image;
}

async function newestKernel(): Promise<string> {
  const names = await readdir('/boot').catch(() => [] as string[]);
  const usable = names
    .filter((n) => n.startsWith('vmlinuz-') && existsSync(join('/lib/modules', n.slice('vmlinuz-'.length), 'modules.dep')))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const newest = usable.at(-1);
  if (!newest) throw new VmLabUnavailable('no /boot/vmlinuz-* with its /lib/modules (install linux-image-amd64)');
  return join('/boot', newest);
}

function kernelVersion(kernel: string): string {
  const m = /vmlinuz-(.+)$/.exec(kernel);
  if (!m?.[1]) throw new VmLabUnavailable(`cannot tell the kernel version from '${kernel}' (want /boot/vmlinuz-<version>)`);
  return m[1];
}

/** One member of the initramfs. */
export interface InitramfsEntry {
  name: string;
  /** Full st_mode: type and permission bits. */
  mode: number;
  data?: Buffer;
  rdev?: [number, number];
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;

async function guestEntries(version: string, busybox: string, qemuGa: string): Promise<InitramfsEntry[]> {
  const here = new URL('.', import.meta.url);
  const files = new Map<string, InitramfsEntry>();
  const add = (e: InitramfsEntry) => files.set(e.name, e);
  const addFile = async (name: string, source: string, perm = 0o755) => add({ name, mode: S_IFREG | perm, data: await readFile(source) });

  await addFile('init', new URL('init.sh', here).pathname);
  await addFile('etc/qemu/fsfreeze-hook', new URL('fsfreeze-hook.sh', here).pathname);
  await addFile('bin/busybox', busybox);
  await addFile('usr/sbin/qemu-ga', qemuGa);
  add({ name: 'bin/qemu-ga', mode: 0o120000 | 0o777, data: Buffer.from('/usr/sbin/qemu-ga') });
  // The kernel opens /dev/console for /init before anything can mount devtmpfs.
  add({ name: 'dev/console', mode: S_IFCHR | 0o600, rdev: [5, 1] });
  for (const lib of await sharedLibraries(qemuGa)) await addFile(lib.slice(1), await realpath(lib));

  const modDir = join('/lib/modules', version);
  const order = moduleLoadOrder(await readFile(join(modDir, 'modules.dep'), 'utf8'), MODULES);
  for (const rel of order) await addFile(`lib/modules/${rel}`, join(modDir, rel), 0o644);
  add({ name: 'etc/lifeboat/modules', mode: S_IFREG | 0o644, data: Buffer.from(order.join('\n') + '\n') });

  for (const d of ['proc', 'sys', 'dev', 'run', 'tmp']) add({ name: d, mode: S_IFDIR | 0o755 });
  return withParentDirs([...files.values()]);
}

/** Adds every missing parent directory, and sorts so each directory precedes its members. */
function withParentDirs(entries: InitramfsEntry[]): InitramfsEntry[] {
  const names = new Set(entries.map((e) => e.name));
  const dirs: InitramfsEntry[] = [];
  for (const e of entries) {
    const parts = e.name.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (!names.has(d)) {
        names.add(d);
        dirs.push({ name: d, mode: S_IFDIR | 0o755 });
      }
    }
  }
  return [...dirs, ...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/**
 * The modules to insmod, dependencies first, as paths relative to `/lib/modules/<version>`.
 * `modulesDep` is that folder's `modules.dep` (`kernel/x.ko: kernel/dep.ko ...`).
 */
export function moduleLoadOrder(modulesDep: string, wanted: readonly string[]): string[] {
  const deps = new Map<string, string[]>();
  const byName = new Map<string, string>();
  for (const line of modulesDep.split('\n')) {
    const [path, rest] = line.split(':');
    if (!path || rest === undefined) continue;
    deps.set(path, rest.trim().split(/\s+/).filter(Boolean));
    byName.set(moduleName(path), path);
  }
  const order: string[] = [];
  const visit = (path: string) => {
    if (order.includes(path)) return;
    for (const d of deps.get(path) ?? []) visit(d);
    order.push(path);
  };
  for (const name of wanted) {
    const path = byName.get(name);
    if (!path) throw new VmLabUnavailable(`kernel module ${name} is not in modules.dep`);
    visit(path);
  }
  return order;
}

function moduleName(path: string): string {
  return (path.split('/').at(-1) ?? path).replace(/\.ko(\.[a-z]+)?$/, '').replaceAll('-', '_');
}

/** What `ldd` says `binary` loads, the dynamic loader included (absolute paths). */
async function sharedLibraries(binary: string): Promise<string[]> {
  const { stdout } = await run('ldd', [binary]).catch((e: unknown) => {
    throw new VmLabUnavailable(`ldd ${binary} failed`, e);
  });
  const libs: string[] = [];
  for (const line of stdout.split('\n')) {
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (m?.[1]) libs.push(m[1]);
    else if (/not found/.test(line)) throw new VmLabUnavailable(`${binary}: ${line.trim()}`);
  }
  return libs;
}

/**
 * An uncompressed cpio archive in the kernel's `newc` format. Written here rather than by
 * `cpio` so that the device node and the timestamps need neither root nor a staging
 * folder, and the same inputs give the same bytes.
 */
export function newcArchive(entries: readonly InitramfsEntry[]): Buffer {
  const parts: Buffer[] = [];
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const member = (ino: number, e: InitramfsEntry) => {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(`${e.name}\0`);
    const fields = [ino, e.mode, 0, 0, (e.mode & S_IFDIR) === S_IFDIR ? 2 : 1, 0, data.length, 0, 0, e.rdev?.[0] ?? 0, e.rdev?.[1] ?? 0, name.length, 0];
    const header = Buffer.from('070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join(''));
    parts.push(header, name, pad4(header.length + name.length), data, pad4(data.length));
  };
  entries.forEach((e, i) => member(i + 1, e));
  member(0, { name: 'TRAILER!!!', mode: 0 });
  return Buffer.concat(parts);
}

/** True when the files {@link buildGuest} needs by default are on this machine. */
export async function guestSourcesPresent(): Promise<boolean> {
  try {
    await newestKernel();
    return (await stat('/bin/busybox')).isFile() && existsSync('/usr/sbin/qemu-ga');
  } catch {
    return false;
  }
}
