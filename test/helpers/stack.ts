/** Test fixture: an embedded stack in a temp folder, with real mover processes. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sfnClient } from '../../local/client.ts';
import { startMover, type MoverLogLine, type MoverProcess } from '../../local/movers.ts';
import type { LifeboatConfig } from '../../core/config.ts';
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { RecoveryCatalog } from '../../functions/catalog/recovery-catalog.ts';
import { EmbeddedStack, LOCAL_CREDENTIALS, type EmbeddedStackOptions, type StackEndpoints } from '../../local/stack.ts';

export interface TestStack {
  stack: EmbeddedStack;
  movers: MoverProcess[];
  logs: MoverLogLine[];
  dir: string;
  sfn: ReturnType<typeof sfnClient>;
  close(): Promise<void>;
}

export interface TestStackOptions {
  /** Movers of group site-a (default 2), when `groups` is not given. */
  movers?: number;
  /** Movers per mover group, e.g. `{ 'site-a': 2, 'site-b': 1 }`; named `<group>-mover-<n>`. */
  groups?: Record<string, number>;
  moverEnv?: Record<string, string>;
  slots?: number;
  config?: LifeboatConfig;
  /** See EmbeddedStackOptions.endpointFront. */
  endpointFront?: (repositoryId: string, serverUrl: string) => Promise<string>;
  /** Step Functions quotas lowered for the test (EmbeddedStack.start's `quotas`). */
  quotas?: EmbeddedStackOptions['quotas'];
  /** The local S3 front's clock for Object Lock (EmbeddedStack.start's `s3Clock`). */
  s3Clock?: () => Date;
}

export async function startTestStack(opts: TestStackOptions = {}): Promise<TestStack> {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-test-'));
  const stack = await EmbeddedStack.start({
    dataDir: join(dir, 'data'),
    ...(opts.config ? { config: opts.config } : {}),
    ...(opts.endpointFront ? { endpointFront: opts.endpointFront } : {}),
    ...(opts.quotas ? { quotas: opts.quotas } : {}),
    ...(opts.s3Clock ? { s3Clock: opts.s3Clock } : {}),
  });
  const logs: MoverLogLine[] = [];
  const groups = opts.groups ?? { 'site-a': opts.movers ?? 2 };
  const movers = Object.entries(groups).flatMap(([group, n]) =>
    Array.from({ length: n }, (_, i) =>
      startMover(stack.endpoints, {
        name: opts.groups ? `${group}-mover-${i + 1}` : `test-mover-${i + 1}`,
        group,
        env: opts.moverEnv,
        onLog: (l) => logs.push(l),
        ...(opts.slots ? { slots: opts.slots } : {}),
      }),
    ),
  );
  return {
    stack,
    movers,
    logs,
    dir,
    sfn: sfnClient(stack.endpoints),
    close: async () => {
      await Promise.all(movers.map((m) => m.stop(true)));
      await stack.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/** The recovery records (restores, verifications, prunes, replicas, quarantine) of a running stack, as a test reads them. */
export function stackRecoveryCatalog(e: StackEndpoints): RecoveryCatalog {
  return new RecoveryCatalog(
    DynamoDBDocumentClient.from(new DynamoDBClient({ region: e.region, endpoint: e.dynamodb, credentials: LOCAL_CREDENTIALS })),
    e.table,
  );
}
