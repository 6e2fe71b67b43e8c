/**
 * The parts of a libvirt domain definition the driver works with: its identity and its
 * disks, read from `virsh dumpxml`; and the definition of a restored copy (new name, no
 * UUID or MAC addresses, so libvirt makes new ones; disks pointing at restored files).
 * The XML is parsed with fast-xml-parser, never with regular expressions: a domain
 * definition is input from the hypervisor, and a restore rewrites it.
 */
import { XMLBuilder, XMLParser } from 'fast-xml-parser';
import { SourceUnavailable } from '../../../contracts/errors.ts';

/** One `<disk>` of a domain, as far as backing it up goes. */
export interface DomainDisk {
  /** The guest's device name (`vda`): the disk's id in the backup. */
  target: string;
  /** `disk`, `cdrom`, `floppy`, `lun`. */
  device: string;
  /** `file`, `block`, `network`, `volume`, `nvme`, ... */
  type: string;
  /** The image file or block device (file and block disks). */
  source?: string;
  /** The storage pool volume (volume disks): libvirt finds its path (`vol-path`). */
  volume?: { pool: string; name: string };
  /** Image format (`qcow2`, `raw`, ...). */
  format: string;
  readonly: boolean;
}

export interface DomainInfo {
  name: string;
  uuid: string;
  disks: DomainDisk[];
  /** Whether the domain has the QEMU guest agent channel (quiesce is possible). */
  agentChannel: boolean;
  /** Lifeboat tags from the domain's `<metadata>` (`<lifeboat:tags>a,b</lifeboat:tags>`), for policies that select by tag. */
  tags: string[];
}

const ARRAYS = new Set(['domain.devices.disk', 'domain.devices.channel', 'domain.devices.interface']);
const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  removeNSPrefix: true,
  jPath: true,
  isArray: (_name, path) => ARRAYS.has(String(path)),
  parseAttributeValue: false,
  parseTagValue: false,
});

type Node = Record<string, unknown>;
const node = (v: unknown): Node => (v && typeof v === 'object' ? (v as Node) : {});
const attr = (v: unknown, name: string): string | undefined => {
  const a = node(v)[`@${name}`];
  return typeof a === 'string' ? a : undefined;
};
const text = (v: unknown): string | undefined => (typeof v === 'string' ? v : typeof node(v)['#text'] === 'string' ? (node(v)['#text'] as string) : undefined);

/** Reads a domain's identity, disks and agent channel from its XML; throws naming what is missing. */
export function parseDomainXml(xml: string, what: string): DomainInfo {
  let doc: Node;
  try {
    doc = node(parser.parse(xml, true));
  } catch (err) {
    throw new SourceUnavailable(`the definition of ${what} is not valid XML: ${(err as Error).message}`, err);
  }
  const domain = node(doc.domain);
  const name = text(domain.name);
  const uuid = text(domain.uuid);
  if (!name || !uuid) throw new SourceUnavailable(`the definition of ${what} has no <name> or <uuid>: is it a libvirt domain XML?`);
  const devices = node(domain.devices);
  const disks = ((devices.disk as unknown[]) ?? []).map((d): DomainDisk => {
    const target = attr(node(d).target, 'dev');
    if (!target) throw new SourceUnavailable(`a disk of ${what} has no <target dev=...>`);
    const src = node(node(d).source);
    return {
      target,
      device: attr(d, 'device') ?? 'disk',
      type: attr(d, 'type') ?? 'file',
      ...((attr(src, 'file') ?? attr(src, 'dev')) ? { source: (attr(src, 'file') ?? attr(src, 'dev'))! } : {}),
      ...(attr(src, 'pool') && attr(src, 'volume') ? { volume: { pool: attr(src, 'pool')!, name: attr(src, 'volume')! } } : {}),
      format: attr(node(d).driver, 'type') ?? 'raw',
      readonly: 'readonly' in node(d),
    };
  });
  const agentChannel = ((devices.channel as unknown[]) ?? []).some((c) => attr(node(c).target, 'name') === 'org.qemu.guest_agent.0');
  const tagText = text(node(domain.metadata).tags) ?? '';
  return {
    name,
    uuid,
    disks,
    agentChannel,
    tags: tagText
      .split(',')
      .map((t) => t.trim())
      .filter(Boolean),
  };
}

/**
 * The user and group QEMU runs as for a running domain (its DAC security label, `+uid:+gid`),
 * or undefined when libvirt does not relabel (QEMU runs as the daemon's user).
 */
export function qemuOwner(liveXml: string): { uid: number; gid: number } | undefined {
  const doc = node(parser.parse(liveXml));
  const labels = node(doc.domain).seclabel;
  for (const l of Array.isArray(labels) ? labels : [labels]) {
    if (attr(l, 'model') !== 'dac') continue;
    const m = /^\+?(\d+):\+?(\d+)$/.exec(text(node(l).label)?.trim() ?? '');
    if (m) return { uid: Number(m[1]), gid: Number(m[2]) };
  }
  return undefined;
}

/** The disks a backup reads: writable block devices of type file, block or volume; throws naming a disk the driver cannot read. */
export function backedUpDisks(info: DomainInfo, what: string): DomainDisk[] {
  const disks = info.disks.filter((d) => (d.device === 'disk' || d.device === 'lun') && !d.readonly);
  for (const d of disks) {
    // A storage pool volume (what a restore into a pool defines) is a file or a block device on the host too.
    if (d.type !== 'file' && d.type !== 'block' && !(d.type === 'volume' && d.volume)) {
      throw new SourceUnavailable(
        `disk ${d.target} of ${what} is a ${d.type} disk; the libvirt driver reads file, block and storage pool volume disks only: exclude the VM from the policy, or back up that storage by its own means`,
      );
    }
  }
  if (disks.length === 0) throw new SourceUnavailable(`${what} has no writable disk to back up`);
  return disks;
}

// --- restored copies ---------------------------------------------------------------

const orderedParser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@',
  preserveOrder: true,
  parseAttributeValue: false,
  parseTagValue: false,
  trimValues: false,
});
const builder = new XMLBuilder({ ignoreAttributes: false, attributeNamePrefix: '@', preserveOrder: true, suppressEmptyNode: true });

type Ordered = Record<string, unknown>[];
const tagOf = (n: Record<string, unknown>) => Object.keys(n).find((k) => k !== ':@');
const children = (n: Record<string, unknown>): Ordered => (n[tagOf(n)!] as Ordered) ?? [];
const attrs = (n: Record<string, unknown>): Record<string, string> => (n[':@'] ??= {}) as Record<string, string>;

/**
 * Where a restored disk is: a file, or a volume of a libvirt storage pool. A volume is named
 * by pool and volume (`<disk type='volume'>`), not by its path: libvirt resolves the path
 * each time the domain starts, so the domain follows the pool when the pool is redefined
 * at another place (a new mount point, storage moved), and its disks show as the pool's.
 */
export type RestoredDiskSource = { path: string; format: 'raw' | 'qcow2' } | { pool: string; volume: string; format: 'raw' | 'qcow2' };

export interface RestoredDomain {
  name: string;
  /** New disks by target (`vda` → file or pool volume, and format). */
  disks: Record<string, RestoredDiskSource>;
  /** Drop every network interface (a restore test runs isolated). */
  withoutNetwork?: boolean;
  /**
   * A failed read or write of a disk pauses the VM (`error_policy`/`rerror_policy` `stop`)
   * instead of failing in the guest: an instant recovery's disks, whose backing export may be
   * restarted under it (the VM is resumed after, and the request is retried).
   */
  pauseOnIoError?: boolean;
  /**
   * The copy's serial console goes to this file (the original's console device would
   * share the original's log, or a pty nobody reads; a restore test reads this file).
   */
  consoleLog: string;
  /** The domain's `<description>` (a restore test records its owner there, `virsh desc` reads it back). */
  description?: string;
  /**
   * Each interface's network (`<source network>` or `<source bridge>`) → the network the copy
   * is connected to (`type='network'`): a DR replica's site network map, or a test
   * failover's isolated network. Throws to refuse one (a network missing from the map).
   */
  network?: (name: string) => string;
}

/**
 * The definition of a restored copy of a backed-up domain: its own name; no UUID and no
 * MAC addresses (libvirt generates new ones, so the copy never clashes with the original);
 * each backed-up disk pointing at its restored file; disks not restored (CD-ROMs, disks
 * not in the backup) removed.
 */
export function restoredDomainXml(originalXml: string, r: RestoredDomain): string {
  const doc = orderedParser.parse(originalXml) as Ordered;
  const domain = doc.find((n) => tagOf(n) === 'domain');
  if (!domain) throw new SourceUnavailable('the backed-up VM definition has no <domain> element');
  const out: Ordered = [];
  for (const child of children(domain)) {
    const tag = tagOf(child);
    if (tag === 'uuid') continue;
    if (tag === 'description' && r.description !== undefined) continue;
    if (tag === 'name') child[tag] = [{ '#text': r.name }];
    if (tag === 'devices') child[tag] = restoredDevices(children(child), r);
    out.push(child);
    if (tag === 'name' && r.description !== undefined) out.push({ description: [{ '#text': r.description }] });
  }
  domain.domain = out;
  return builder.build(doc) as string;
}

function restoredDevices(devices: Ordered, r: RestoredDomain): Ordered {
  const out: Ordered = [
    {
      serial: [
        { source: [], ':@': { '@path': r.consoleLog } },
        { target: [], ':@': { '@port': '0' } },
      ],
      ':@': { '@type': 'file' },
    },
    { console: [{ target: [], ':@': { '@type': 'serial', '@port': '0' } }], ':@': { '@type': 'file' } },
  ];
  for (const dev of devices) {
    const tag = tagOf(dev);
    if (tag === 'serial' || tag === 'console') continue;
    if (tag === 'interface') {
      if (r.withoutNetwork) continue;
      dev.interface = children(dev).filter((c) => tagOf(c) !== 'mac' && tagOf(c) !== 'target');
      if (r.network) {
        const source = (dev.interface as Ordered).find((c) => tagOf(c) === 'source');
        const from = source ? (attrs(source)['@network'] ?? attrs(source)['@bridge']) : undefined;
        if (from === undefined)
          throw new SourceUnavailable(
            `an interface of the backed-up VM definition names no network or bridge (type '${attrs(dev)['@type'] ?? '?'}'): it cannot be mapped to a network of this site`,
          );
        attrs(dev)['@type'] = 'network';
        source![':@'] = { '@network': r.network(from) };
      }
    }
    if (tag === 'disk') {
      const target = children(dev).find((c) => tagOf(c) === 'target');
      const restored = target ? r.disks[attrs(target)['@dev'] ?? ''] : undefined;
      if (!restored) continue;
      attrs(dev)['@type'] = 'path' in restored ? 'file' : 'volume';
      const source = 'path' in restored ? { '@file': restored.path } : { '@pool': restored.pool, '@volume': restored.volume };
      dev.disk = children(dev).filter((c) => !['source', 'backingStore', 'driver'].includes(tagOf(c)!));
      const driver = { '@name': 'qemu', '@type': restored.format, ...(r.pauseOnIoError ? { '@error_policy': 'stop', '@rerror_policy': 'stop' } : {}) };
      (dev.disk as Ordered).unshift({ driver: [], ':@': driver }, { source: [], ':@': source });
    }
    out.push(dev);
  }
  return out;
}
