/**
 * OnDeploy: the CloudFormation custom resource that runs on every `cdk deploy` whose
 * configuration changed. It creates the primary repository's key (random, wrapped by the
 * KMS key) when the repository has none, then writes the configuration into the catalog
 * (SyncConfig). Both steps are idempotent. Deleting the stack deletes nothing: the
 * catalog and the repository are retained, and so is the key that opens them.
 */
import { z } from 'zod';
import { parseConfig } from '../../core/config.ts';
import { objectKeys } from '../../repository/format.ts';
import { loadMasterKey, type KeyWrapper } from '../../repository/keyring.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import type { Catalog } from '../catalog/catalog.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { syncConfig, type SyncConfigOutput } from './sync-config.ts';

/** CloudFormation passes every property as a string, so the configuration travels as JSON. */
export const onDeployEvent = z.looseObject({
  RequestType: z.enum(['Create', 'Update', 'Delete']),
  PhysicalResourceId: z.string().optional(),
  ResourceProperties: z.looseObject({
    configJson: z.string().min(2),
    /** Bucket name per configured repository id. */
    buckets: z.record(z.string(), z.string().min(1)),
    /** The bucket whose key this stack creates (the first repository). */
    primaryBucket: z.string().min(1),
  }),
});
export type OnDeployEvent = z.infer<typeof onDeployEvent>;

export interface OnDeployResult {
  PhysicalResourceId: string;
  /** Counts, not names: CloudFormation caps a custom resource's response at 4 KB. */
  Data: { repositoryKey: 'created' | 'exists' | 'untouched'; policies: number; hosts: number; removedPolicies: number };
}

export const PHYSICAL_ID = 'lifeboat-deployment';

export async function onDeploy(
  event: OnDeployEvent,
  deps: { catalog: Catalog; store: (bucket: string) => ObjectStore; keyWrapper: (bucket: string) => Promise<KeyWrapper> },
): Promise<OnDeployResult> {
  if (event.RequestType === 'Delete') {
    return { PhysicalResourceId: event.PhysicalResourceId ?? PHYSICAL_ID, Data: { repositoryKey: 'untouched', policies: 0, hosts: 0, removedPolicies: 0 } };
  }
  const props = event.ResourceProperties;
  let json: unknown;
  try {
    json = JSON.parse(props.configJson);
  } catch (err) {
    throw new Error(`OnDeploy: configJson is not JSON (${(err as Error).message}); the CDK app passes the validated configuration here`, { cause: err });
  }
  const config = parseConfig(json, 'the deployed configuration');

  const store = deps.store(props.primaryBucket);
  const existed = (await store.head(objectKeys.masterKey())) !== undefined;
  await loadMasterKey(store, await deps.keyWrapper(props.primaryBucket), { create: true });

  const synced: SyncConfigOutput = await syncConfig({ config, buckets: props.buckets }, { catalog: deps.catalog });
  return {
    PhysicalResourceId: PHYSICAL_ID,
    Data: {
      repositoryKey: existed ? 'exists' : 'created',
      policies: synced.policies.length,
      hosts: synced.hosts.length,
      removedPolicies: synced.removedPolicies.length,
    },
  };
}

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    handler: lambdaHandler('OnDeploy', onDeployEvent, (event) => {
      return onDeploy(event, { catalog: c.catalog, store: c.store, keyWrapper: c.keyWrapper });
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
