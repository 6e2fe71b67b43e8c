/**
 * What the operator API answers beyond the read model of views.ts: the one write it takes,
 * `POST /api/vms` (`lifeboat vm add`: a VM into the inventory, on a host of the
 * configuration), and the host configuration backups the HostConfigBackup workflow recorded
 * (`lifeboat host-config list|restore`).
 */
import { addVmRequest, type AddVmAnswer } from '../../contracts/operator.ts';
import type { Catalog } from '../catalog/catalog.ts';
import type { HostConfigRecord } from '../../contracts/host-config.ts';
import type { HostConfigCatalog } from '../catalog/host-config-catalog.ts';

export interface InventoryDeps {
  catalog: Pick<Catalog, 'getHost' | 'putVm' | 'listHosts'>;
  hostConfigs: Pick<HostConfigCatalog, 'list' | 'get'>;
}

/** A request the caller must fix: answered 400 (bad body) or 404 (unknown host), with what to do. */
export class InventoryRefused extends Error {
  readonly status: 400 | 404;
  constructor(status: 400 | 404, message: string) {
    super(message);
    this.status = status;
    this.name = status === 400 ? 'BadRequest' : 'NotFound';
  }
}

/** Puts the VM of `body` (JSON text, `contracts/operator.ts` addVmRequest) into the inventory. */
export async function addVm(body: string, deps: Pick<InventoryDeps, 'catalog'>): Promise<AddVmAnswer> {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    throw new InvalidBody('the body is not JSON');
  }
  const parsed = addVmRequest.safeParse(json);
  if (!parsed.success) throw new InvalidBody(parsed.error.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`).join('; '));
  const v = parsed.data;
  const host = await deps.catalog.getHost(v.host);
  if (!host)
    throw new InventoryRefused(
      404,
      `host '${v.host}' is not in the configuration: add it to "hosts" and to a mover group, then deploy (or restart the embedded stack)`,
    );
  await deps.catalog.putVm({ vmId: v.vmId, host: v.host, source: v.source, ...(v.datastores?.length ? { datastores: v.datastores } : {}) });
  return { vmId: v.vmId, host: v.host, moverGroup: host.moverGroup };
}

class InvalidBody extends InventoryRefused {
  constructor(why: string) {
    super(400, `a VM to add is { "vmId", "host", "source", "datastores"? } (strings): ${why}`);
  }
}

/** The host configuration backups of one host, or of every libvirt host (in host order), newest first per host. */
export async function hostConfigBackups(deps: InventoryDeps, hostId?: string): Promise<HostConfigRecord[]> {
  const hosts = hostId
    ? [hostId]
    : (await deps.catalog.listHosts())
        .filter((h) => h.hypervisor?.driver === 'libvirt')
        .map((h) => h.hostId)
        .sort();
  return (await Promise.all(hosts.map((h) => deps.hostConfigs.list(h)))).flat();
}
