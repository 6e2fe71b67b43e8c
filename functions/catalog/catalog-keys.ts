/** The catalog table's item keys (`pk`, `sk`) by kind of record, and what reading and writing items share. */
import { ConditionalCheckFailedException } from '@aws-sdk/client-dynamodb';

export const k = {
  /** A deployment-wide setting from the configuration (one item per name). */
  setting: (name: string) => ({ pk: 'SETTINGS', sk: name }),
  policy: (id: string) => ({ pk: `POLICY#${id}`, sk: 'POLICY' }),
  vm: (id: string) => ({ pk: `VM#${id}`, sk: 'VM' }),
  host: (id: string) => ({ pk: `HOST#${id}`, sk: 'HOST' }),
  /** The list of hosts (one Query lists them all, for discovery). */
  hostListing: (id: string) => ({ pk: 'HOSTS', sk: `HOST#${id}` }),
  /** Membership of a VM on a host, so a policy can select a host's VMs with one Query. */
  hostVm: (host: string, vmId: string) => ({ pk: `HOST#${host}`, sk: `VM#${vmId}` }),
  backup: (vmId: string, backupId: string) => ({ pk: `VM#${vmId}`, sk: `BACKUP#${backupId}` }),
  run: (runId: string) => ({ pk: `RUN#${runId}`, sk: 'RUN' }),
  slot: (host: string, i: number) => ({ pk: `SLOT#${host}`, sk: `SLOT#${i}` }),
};

export const strip = <T>(item: Record<string, unknown> | undefined): T | undefined => {
  if (!item) return undefined;
  const { pk: _pk, sk: _sk, ...rest } = item;
  return rest as T;
};

export const isConditionFailed = (err: unknown) => err instanceof ConditionalCheckFailedException || (err as Error)?.name === 'ConditionalCheckFailedException';
