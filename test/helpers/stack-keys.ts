/**
 * The keys of the embedded stack's repository, for tests that read, damage or rewrite its
 * objects with the free keyed functions (test helpers such as `decodeManifest`). Product code
 * never holds them: a `Repository` keeps its keys inside. Unwrapped here from the stack's
 * key file, as `openRepository` does.
 */
import type { ObjectStore } from '../../core/object-store.ts';
import { repositoryStore, type StackEndpoints } from '../../local/stack.ts';
import { deriveKeys, type RepositoryKeys } from '../../repository/format.ts';
import { loadMasterKey } from '../../repository/keyring.ts';
import { keyWrapper } from '../../repository/open.ts';

export interface StackRepositoryKeys {
  store: ObjectStore;
  masterKey: Buffer;
  keys: RepositoryKeys;
}

/** The stack's repository (or a configured one, by id): its store, master key and derived keys. */
export async function stackRepositoryKeys(e: StackEndpoints, repositoryId?: string): Promise<StackRepositoryKeys> {
  const store = repositoryStore(e, repositoryId);
  const bucket = repositoryId ? e.repositories[repositoryId]!.bucket : e.bucket;
  const masterKey = await loadMasterKey(store, await keyWrapper({ keyFile: e.keyFile }, bucket));
  return { store, masterKey, keys: deriveKeys(masterKey) };
}
