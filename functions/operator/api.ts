/**
 * The operator API: GET routes over the read model (views.ts, alerts.ts, inventory.ts) and
 * one write, `POST /api/vms` (`lifeboat vm add`), answered as JSON. The same function
 * serves the embedded stack (invoked in process: local/operator.ts, behind the console
 * server) and a Lambda function URL with IAM auth in AWS (`OperatorApi`, handler below);
 * the CLI and the console read both through it, the same way.
 *
 *   GET  /api/vms  /api/vms/<vm>/backups  /api/runs  /api/runs/<run>  /api/policies
 *        /api/movers  /api/restore-points[?vm=<vm>]  /api/alerts
 *        /api/progress/<id>  (a restore's or deep verification's execution name, or a backup id: its disks' progress)
 *        /api/host-configs[?host=<host>]  /api/host-configs/<host>/<backupId>
 *   POST /api/vms  { vmId, host, source, datastores? }
 */
import { DescribeExecutionCommand, ListExecutionsCommand, SFNClient } from '@aws-sdk/client-sfn';
import { parseProgress, progressPrefix, type TaskProgress } from '../../contracts/progress.ts';
import { listMovers } from '../../core/mover-fleet.ts';
import type { ObjectStore } from '../../core/object-store.ts';
import { LOCAL_ENDPOINT_CREDENTIALS } from '../../core/s3-store.ts';
import { z } from 'zod';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { currentAlerts, type AlertDeps } from './alerts.ts';
import { addVm, hostConfigBackups, InventoryRefused, type InventoryDeps } from './inventory.ts';
import { listBackups, listPolicies, listRestorePoints, listRuns, listVms, operationProgress, runDetail, type BackupExecutions } from './views.ts';

export interface ApiAnswer {
  status: number;
  body: unknown;
}

const notFound = (message: string): ApiAnswer => ({ status: 404, body: { error: 'NotFound', message } });

export type ApiDeps = AlertDeps & InventoryDeps;

export interface ApiRequest {
  method: string;
  /** Without the query. */
  path: string;
  query: URLSearchParams;
  body?: string;
}

/** Answers one request of the API. */
export async function answer(req: ApiRequest, deps: ApiDeps): Promise<ApiAnswer> {
  const { path, query } = req;
  const parts = path.replace(/\/+$/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] !== 'api') return notFound(`${path} is not an API path; the API is under /api/`);
  const [, what, id, sub] = parts;
  if (req.method === 'POST' && what === 'vms' && !id) {
    try {
      return { status: 200, body: await addVm(req.body ?? '', deps) };
    } catch (err) {
      if (err instanceof InventoryRefused) return { status: err.status, body: { error: err.name, message: err.message } };
      throw err;
    }
  }
  if (req.method !== 'GET')
    return {
      status: 405,
      body: {
        error: 'MethodNotAllowed',
        message: `${req.method} ${path}: the operator API only reads (GET), but for POST /api/vms (\`lifeboat vm add\`); start workflows with Step Functions StartExecution (\`lifeboat backup|restore|verify\`)`,
      },
    };
  switch (what) {
    case 'vms':
      if (!id) return { status: 200, body: await listVms(deps) };
      if (sub === 'backups') {
        const rows = await listBackups(id, deps);
        return rows ? { status: 200, body: rows } : notFound(`VM '${id}' is not in the inventory and has no backups; \`lifeboat vms\` lists the VMs`);
      }
      break;
    case 'runs': {
      if (!id) return { status: 200, body: await listRuns(deps, Number(query.get('max') ?? 20) || 20) };
      const run = await runDetail(id, deps);
      return run ? { status: 200, body: run } : notFound(`run '${id}' was not found: \`lifeboat runs\` lists the newest runs`);
    }
    case 'policies':
      return { status: 200, body: await listPolicies(deps) };
    case 'movers':
      return { status: 200, body: await deps.movers() };
    case 'restore-points':
      return { status: 200, body: await listRestorePoints(deps, query.get('vm') ?? undefined) };
    case 'alerts':
      return { status: 200, body: await currentAlerts(deps) };
    case 'host-configs': {
      if (!id) return { status: 200, body: await hostConfigBackups(deps, query.get('host') ?? undefined) };
      if (!sub) return { status: 200, body: await hostConfigBackups(deps, id) };
      const record = await deps.hostConfigs.get(id, sub);
      return record
        ? { status: 200, body: record }
        : notFound(`host '${id}' has no host configuration backup '${sub}': list its backups with \`lifeboat host-config list --host ${id}\``);
    }
    case 'progress': {
      if (!id) break;
      const p = await operationProgress(id, deps);
      return p
        ? { status: 200, body: p }
        : notFound(`no progress for '${id}': its tasks have not started yet, or it ended more than a day ago (progress objects expire)`);
    }
  }
  return notFound(
    `no such API path ${path}: the API has /api/vms, /api/vms/<vm>/backups, /api/runs, /api/runs/<run>, /api/policies, /api/movers, /api/restore-points, /api/alerts, /api/progress/<id>, /api/host-configs`,
  );
}

/** The Backup workflow's executions through the Step Functions API. */
export function sfnExecutions(sfn: Pick<SFNClient, 'send'>, stateMachineArn: string): BackupExecutions {
  const iso = (d: Date | undefined) => (d ? new Date(d).toISOString() : undefined);
  return {
    list: async (max) => {
      const out = await sfn.send(new ListExecutionsCommand({ stateMachineArn, maxResults: max }));
      return (out.executions ?? []).map((e) => ({
        name: e.name!,
        executionArn: e.executionArn!,
        status: e.status!,
        startDate: iso(e.startDate)!,
        ...(e.stopDate ? { stopDate: iso(e.stopDate)! } : {}),
      }));
    },
    describe: async (name) => {
      // Execution ARNs are the state machine's ARN with `stateMachine` → `execution` and the name appended.
      const executionArn = name.startsWith('arn:') ? name : `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${name}`;
      try {
        const d = await sfn.send(new DescribeExecutionCommand({ executionArn }));
        return {
          name: d.name!,
          executionArn,
          status: d.status!,
          startDate: iso(d.startDate)!,
          ...(d.stopDate ? { stopDate: iso(d.stopDate)! } : {}),
          ...(d.input ? { input: d.input } : {}),
          ...(d.error ? { error: d.error } : {}),
          ...(d.cause ? { cause: d.cause } : {}),
        };
      } catch (err) {
        if ((err as Error).name === 'ExecutionDoesNotExist' || (err as Error).name === 'InvalidArn') return undefined;
        throw err;
      }
    },
  };
}

/** The operator deps over the primary repository (mover records, progress objects) and a Step Functions client. */
export function operatorDeps(o: {
  catalog: ApiDeps['catalog'];
  recovery: AlertDeps['recovery'];
  hostConfigs: ApiDeps['hostConfigs'];
  store: Pick<ObjectStore, 'get' | 'list'>;
  sfn: Pick<SFNClient, 'send'>;
  backupStateMachineArn: string;
  now?: () => Date;
}): ApiDeps {
  const { store } = o;
  const now = o.now ?? (() => new Date());
  return {
    catalog: o.catalog,
    recovery: o.recovery,
    hostConfigs: o.hostConfigs,
    now,
    movers: () => listMovers({ store, now }),
    progress: async (backupId) => {
      const out: TaskProgress[] = [];
      for await (const { key } of store.list(progressPrefix(backupId))) {
        const bytes = await store.get(key);
        const p = bytes && parseProgress(bytes);
        if (p) out.push(p);
      }
      return out;
    },
    executions: sfnExecutions(o.sfn, o.backupStateMachineArn),
  };
}

/** The parts of a Lambda function URL event (payload format 2.0) the API reads. */
const functionUrlEvent = z.object({
  rawPath: z.string(),
  rawQueryString: z.string().optional(),
  requestContext: z.object({ http: z.object({ method: z.string() }) }),
  body: z.string().optional(),
  isBase64Encoded: z.boolean().optional(),
});

/** A VM to add is a few hundred bytes: a larger body is refused before it is parsed. */
const MAX_BODY = 64 * 1024;

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  let deps: ApiDeps | undefined;
  /** Built at the first request: the Step Functions client (the embedded stack's API when `sfnEndpoint` is set), the primary repository, the Backup workflow. */
  const operator = (): ApiDeps =>
    (deps ??= operatorDeps({
      catalog: c.catalog,
      recovery: c.recovery,
      hostConfigs: c.hostConfigs,
      store: c.store(c.env.repositoryBucket ?? ''),
      sfn: new SFNClient({ region: c.env.region, ...(c.env.sfnEndpoint ? { endpoint: c.env.sfnEndpoint, credentials: LOCAL_ENDPOINT_CREDENTIALS } : {}) }),
      backupStateMachineArn: c.env.backupStateMachineArn ?? '',
    }));
  return {
    /** `OperatorApi`: a Lambda function URL (AWS_IAM auth) answering the routes above. */
    handler: lambdaHandler('OperatorApi', functionUrlEvent, async (event) => {
      const json = (statusCode: number, body: unknown) => ({ statusCode, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const body = event.body === undefined ? undefined : event.isBase64Encoded ? Buffer.from(event.body, 'base64').toString('utf8') : event.body;
      if (body && body.length > MAX_BODY) return json(413, { error: 'PayloadTooLarge', message: `the request body is over ${MAX_BODY} bytes` });
      try {
        const a = await answer(
          {
            method: event.requestContext.http.method,
            path: event.rawPath,
            query: new URLSearchParams(event.rawQueryString ?? ''),
            ...(body === undefined ? {} : { body }),
          },
          operator(),
        );
        return json(a.status, a.body);
      } catch (err) {
        return json(500, { error: (err as Error).name, message: (err as Error).message });
      }
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
