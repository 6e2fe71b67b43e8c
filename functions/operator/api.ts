/**
 * The read-only operator API: GET routes over the read model (views.ts, alerts.ts),
 * answered as JSON. The same router serves the embedded stack (local/console/server.ts)
 * and a Lambda function URL with IAM auth in AWS (`OperatorApi`, handler below).
 *
 *   /api/vms  /api/vms/<vm>/backups  /api/runs  /api/runs/<run>  /api/policies
 *   /api/movers  /api/restore-points[?vm=<vm>]  /api/alerts
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
import { listBackups, listPolicies, listRestorePoints, listRuns, listVms, runDetail, type BackupExecutions } from './views.ts';

export interface ApiAnswer {
  status: number;
  body: unknown;
}

const notFound = (message: string): ApiAnswer => ({ status: 404, body: { error: 'NotFound', message } });

/** Answers one GET of the API; `path` without the query, `query` its parameters. */
export async function answer(path: string, query: URLSearchParams, deps: AlertDeps): Promise<ApiAnswer> {
  const parts = path.replace(/\/+$/, '').split('/').filter(Boolean).map(decodeURIComponent);
  if (parts[0] !== 'api') return notFound(`${path} is not an API path; the API is under /api/`);
  const [, what, id, sub] = parts;
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
  }
  return notFound(`no such API path ${path}: the API has /api/vms, /api/vms/<vm>/backups, /api/runs, /api/runs/<run>, /api/policies, /api/movers, /api/restore-points, /api/alerts`);
}

/** The Backup workflow's executions through the Step Functions API. */
export function sfnExecutions(sfn: Pick<SFNClient, 'send'>, stateMachineArn: string): BackupExecutions {
  const iso = (d: Date | undefined) => (d ? new Date(d).toISOString() : undefined);
  return {
    list: async (max) => {
      const out = await sfn.send(new ListExecutionsCommand({ stateMachineArn, maxResults: max }));
      return (out.executions ?? []).map((e) => ({ name: e.name!, executionArn: e.executionArn!, status: e.status!, startDate: iso(e.startDate)!, ...(e.stopDate ? { stopDate: iso(e.stopDate)! } : {}) }));
    },
    describe: async (name) => {
      // Execution ARNs are the state machine's ARN with `stateMachine` → `execution` and the name appended.
      const executionArn = name.startsWith('arn:') ? name : `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${name}`;
      try {
        const d = await sfn.send(new DescribeExecutionCommand({ executionArn }));
        return { name: d.name!, executionArn, status: d.status!, startDate: iso(d.startDate)!, ...(d.stopDate ? { stopDate: iso(d.stopDate)! } : {}), ...(d.input ? { input: d.input } : {}), ...(d.error ? { error: d.error } : {}), ...(d.cause ? { cause: d.cause } : {}) };
      } catch (err) {
        if ((err as Error).name === 'ExecutionDoesNotExist' || (err as Error).name === 'InvalidArn') return undefined;
        throw err;
      }
    },
  };
}

/** The operator deps over the primary repository (mover records, progress objects) and a Step Functions client. */
export function operatorDeps(o: { catalog: AlertDeps['catalog']; recovery: AlertDeps['recovery']; store: Pick<ObjectStore, 'get' | 'list'>; sfn: Pick<SFNClient, 'send'>; backupStateMachineArn: string; now?: () => Date }): AlertDeps {
  const { store } = o;
  const now = o.now ?? (() => new Date());
  return {
    catalog: o.catalog, recovery: o.recovery, now,
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
});

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  let deps: AlertDeps | undefined;
  /** Built at the first request: the Step Functions client (the embedded stack's API when `sfnEndpoint` is set), the primary repository, the Backup workflow. */
  const operator = (): AlertDeps => (deps ??= operatorDeps({
    catalog: c.catalog, recovery: c.recovery, store: c.store(c.env.repositoryBucket ?? ''),
    sfn: new SFNClient({ region: c.env.region, ...(c.env.sfnEndpoint ? { endpoint: c.env.sfnEndpoint, credentials: LOCAL_ENDPOINT_CREDENTIALS } : {}) }),
    backupStateMachineArn: c.env.backupStateMachineArn ?? '',
  }));
  return {
    /** `OperatorApi`: a Lambda function URL (AWS_IAM auth) answering the GET routes above. */
    handler: lambdaHandler('OperatorApi', functionUrlEvent, async (event) => {
      const json = (statusCode: number, body: unknown) => ({ statusCode, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      if (event.requestContext.http.method !== 'GET') return json(405, { error: 'MethodNotAllowed', message: 'the operator API is read-only: start workflows with Step Functions StartExecution (`lifeboat backup|restore|verify`)' });
      try {
        const a = await answer(event.rawPath, new URLSearchParams(event.rawQueryString ?? ''), operator());
        return json(a.status, a.body);
      } catch (err) {
        return json(500, { error: (err as Error).name, message: (err as Error).message });
      }
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { handler } = fromEnvironment(makeHandlers);
