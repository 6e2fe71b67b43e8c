/** OnDeploy, the deploy-time custom resource: repository key once, configuration into the catalog. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../core/config.ts';
import { KeyFileWrapper, loadMasterKey } from '../repository/keyring.ts';
import { MemoryObjectStore } from '../core/memory-store.ts';
import type { Catalog, Host, HostConfigSettings, Policy } from '../functions/catalog/catalog.ts';
import { onDeploy, onDeployEvent, type OnDeployEvent } from '../functions/deploy/on-deploy.ts';

/** The five catalog calls SyncConfig makes, over maps. */
function memoryCatalog() {
  const policies = new Map<string, Policy>();
  const hosts = new Map<string, Host>();
  const settings: { hostConfig?: HostConfigSettings } = {};
  const catalog = {
    putHostConfigSettings: async (s: HostConfigSettings) => void (settings.hostConfig = s),
    putHost: async (h: Host) => void hosts.set(h.hostId, h),
    putPolicy: async (p: Policy) => void policies.set(p.policyId, p),
    listPolicies: async () => [...policies.values()],
    deletePolicy: async (id: string) => void policies.delete(id),
  } as unknown as Catalog;
  return { catalog, policies, hosts, settings };
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('OnDeploy', () => {
  const config = loadConfig();
  const event = (RequestType: OnDeployEvent['RequestType'], c: unknown = config): OnDeployEvent =>
    onDeployEvent.parse({
      RequestType,
      ServiceToken: 'arn:aws:lambda:eu-central-1:111122223333:function:framework',
      PhysicalResourceId: 'lifeboat-deployment',
      ResourceProperties: { configJson: JSON.stringify(c), buckets: { primary: 'repo-primary', dr: 'repo-dr' }, primaryBucket: 'repo-primary' },
    });

  async function setup() {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-ondeploy-'));
    dirs.push(dir);
    const wrapper = await KeyFileWrapper.load(join(dir, 'kek'), { create: true });
    const stores = new Map<string, MemoryObjectStore>();
    const store = (b: string) => stores.get(b) ?? stores.set(b, new MemoryObjectStore()).get(b)!;
    return { ...memoryCatalog(), store, wrapper, deps: (catalog: Catalog) => ({ catalog, store, keyWrapper: async () => wrapper }) };
  }

  it('creates the repository key on Create and keeps it on every later Update', async () => {
    const s = await setup();
    const created = await onDeploy(event('Create'), s.deps(s.catalog));
    expect(created).toMatchObject({ PhysicalResourceId: 'lifeboat-deployment', Data: { repositoryKey: 'created' } });
    const key = await loadMasterKey(s.store('repo-primary'), s.wrapper);
    const updated = await onDeploy(event('Update'), s.deps(s.catalog));
    expect(updated.Data.repositoryKey).toBe('exists');
    expect(await loadMasterKey(s.store('repo-primary'), s.wrapper)).toEqual(key);
  });

  it('writes the configured policies and hosts with their buckets, and removes a policy the configuration dropped', async () => {
    const s = await setup();
    await onDeploy(event('Create'), s.deps(s.catalog));
    expect([...s.policies.keys()].sort()).toEqual(config.policies.map((p) => p.id).sort());
    expect(s.policies.get('nightly')).toMatchObject({ bucket: 'repo-primary', replicateTo: { repositoryId: 'dr', bucket: 'repo-dr' }, rpoHours: 26 });
    expect([...s.hosts.keys()].sort()).toEqual(config.hosts.map((h) => h.id).sort());
    // Host configuration backups: the first repository's bucket and the default keep, as the configuration sets none.
    expect(s.settings.hostConfig).toEqual({ repositoryId: 'primary', bucket: 'repo-primary', keep: 14 });
    const fewer = { ...config, policies: config.policies.filter((p) => p.id !== 'hourly-critical') };
    const out = await onDeploy(event('Update', fewer), s.deps(s.catalog));
    expect(out.Data).toMatchObject({ policies: 1, removedPolicies: 1 });
    expect(s.policies.has('hourly-critical')).toBe(false);
  });

  it('touches nothing on Delete: the catalog, the repository and its key are retained', async () => {
    const s = await setup();
    const out = await onDeploy(event('Delete'), s.deps(s.catalog));
    expect(out).toEqual({ PhysicalResourceId: 'lifeboat-deployment', Data: { repositoryKey: 'untouched', policies: 0, hosts: 0, removedPolicies: 0 } });
    expect(await s.store('repo-primary').get('keys/default')).toBeUndefined();
    expect(s.policies.size).toBe(0);
  });

  it('fails the deploy with the bad key and value when the configuration does not validate', async () => {
    const s = await setup();
    const bad = { ...config, hosts: config.hosts.map((h, i) => (i === 0 ? { ...h, maxConcurrentBackups: 0 } : h)) };
    await expect(onDeploy(event('Update', bad), s.deps(s.catalog))).rejects.toThrow(/hosts\[0\]\.maxConcurrentBackups = 0/);
    expect(s.policies.size).toBe(0);
  });
});
