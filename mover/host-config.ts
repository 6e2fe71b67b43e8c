/**
 * The `hostConfig` task: a libvirt host's networks, storage pools and domain definitions
 * (and what virsh says of the host itself), dumped with virsh into one archive document,
 * sealed and stored at the key the control plane chose. The mover never touches the
 * catalog: it returns where the archive is, its counts and its SHA-256, and
 * RecordHostConfig records them.
 */
import { parseTaskInput } from '../contracts/errors.ts';
import type { RepositoryLocation } from '../contracts/endpoints.ts';
import { HOST_CONFIG_FORMAT, HOST_CONFIG_VERSION, type HostConfigArchive, type HostDefinition } from '../repository/host-config.ts';
import { hostConfigTask, type HostConfigResult } from '../contracts/host-config.ts';
import type { Repository } from '../repository/open.ts';
import { Virsh, VirshError } from './sources/libvirt/virsh.ts';

export interface HostConfigDeps {
  /** The repository the task names, opened once per process. */
  repository(repository: RepositoryLocation): Promise<Repository>;
  /** The virsh client of a URI (default: `new Virsh(uri)`). */
  virsh?: (uri: string) => Virsh;
  now?: () => Date;
}

/** The kinds of definition a host has: how virsh lists them and dumps one. */
const KINDS = {
  networks: { list: ['net-list', '--all', '--name'], dump: (name: string) => ['net-dumpxml', '--', name], gone: /network not found|no network with matching/i },
  pools: {
    list: ['pool-list', '--all', '--name'],
    dump: (name: string) => ['pool-dumpxml', '--', name],
    gone: /storage pool not found|no storage pool with matching/i,
  },
  // The persistent definition (what `define` takes back), not the running state.
  domains: {
    list: ['list', '--all', '--name'],
    dump: (name: string) => ['dumpxml', '--inactive', '--', name],
    gone: /domain not found|failed to get domain|no domain with matching/i,
  },
} as const;

const names = (out: string) =>
  [
    ...new Set(
      out
        .split('\n')
        .map((l) => l.trim())
        .filter(Boolean),
    ),
  ].sort();

/**
 * Dumps every definition of one kind, in name order. A definition removed between the
 * listing and its dump is left out; any other failure (the host went away) fails the dump.
 */
async function dumpAll(virsh: Virsh, kind: keyof typeof KINDS, opts: { signal?: AbortSignal; progress?: () => void }): Promise<HostDefinition[]> {
  const k = KINDS[kind];
  const call = opts.signal ? { signal: opts.signal } : {};
  const out: HostDefinition[] = [];
  for (const name of names(await virsh.run([...k.list], call))) {
    try {
      out.push({ name, xml: await virsh.run(k.dump(name), call) });
    } catch (err) {
      if (err instanceof VirshError && k.gone.test(err.stderr)) continue;
      throw err;
    }
    opts.progress?.();
  }
  return out;
}

/** What virsh says of the host (`nodeinfo`, `version`, `capabilities`): extras, so one the driver does not support is left out. */
async function hostFacts(virsh: Virsh, signal?: AbortSignal): Promise<HostConfigArchive['host']> {
  const facts: HostConfigArchive['host'] = {};
  for (const fact of ['nodeinfo', 'version', 'capabilities'] as const) {
    const value = await virsh.run([fact], signal ? { signal } : {}).catch((err: unknown) => {
      if (err instanceof VirshError && /not supported|unsupported/i.test(err.stderr)) return undefined;
      throw err;
    });
    if (value !== undefined) facts[fact] = value;
  }
  return facts;
}

/** Dumps the host's definitions into one archive document. */
export async function collectHostConfig(
  virsh: Virsh,
  hostId: string,
  opts: { signal?: AbortSignal; progress?: () => void; now?: () => Date } = {},
): Promise<HostConfigArchive> {
  const takenAt = (opts.now ?? (() => new Date()))().toISOString();
  // The facts first: an unreachable URI fails here, with the message Virsh gives it.
  const host = await hostFacts(virsh, opts.signal);
  return {
    format: HOST_CONFIG_FORMAT,
    version: HOST_CONFIG_VERSION,
    hostId,
    uri: virsh.uri,
    takenAt,
    host,
    networks: await dumpAll(virsh, 'networks', opts),
    pools: await dumpAll(virsh, 'pools', opts),
    domains: await dumpAll(virsh, 'domains', opts),
  };
}

/** Runs a `hostConfig` task input: validates it, dumps the host and stores the sealed archive. */
export async function runHostConfigTask(
  raw: unknown,
  deps: HostConfigDeps,
  ctx: { signal?: AbortSignal; progress?: () => void } = {},
): Promise<HostConfigResult> {
  const t = parseTaskInput('hostConfig task', hostConfigTask, raw);
  const virsh = (deps.virsh ?? ((uri: string) => new Virsh(uri)))(t.hypervisor.uri);
  const archive = await collectHostConfig(virsh, t.hostId, { ...ctx, ...(deps.now ? { now: deps.now } : {}) });
  const repository = await deps.repository(t.repository);
  const { store } = repository;
  const { sealed, sha256, bytes } = await repository.sealHostConfig(archive, t.objectKey);
  // A retried task writes the same key again: the newer dump replaces the older, and only the last result is recorded.
  await store.put(t.objectKey, sealed);
  return {
    hostId: t.hostId,
    backupId: t.backupId,
    objectKey: t.objectKey,
    takenAt: archive.takenAt,
    sha256,
    bytes,
    counts: { networks: archive.networks.length, pools: archive.pools.length, domains: archive.domains.length },
  };
}
