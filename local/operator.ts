/**
 * The embedded stack's operator side: the console server (API, pages, actions) and, when
 * the configuration names a webhook, the alert notifier. The API is the `OperatorApi`
 * function invoked in process with a function URL event, as Lambda invokes it in AWS; it
 * reads through the stack's own endpoints.
 */
import { DescribeExecutionCommand, SFNClient, StartExecutionCommand } from '@aws-sdk/client-sfn';
import type { LifeboatConfig } from '../core/config.ts';
import { LOCAL_ENDPOINT_CREDENTIALS } from '../core/s3-store.ts';
import type { Alert } from '../contracts/operator.ts';
import { AlertNotifier } from './alert-notifier.ts';
import { LOCAL_REGION, type ResolvedTemplate } from './asl.ts';
import { startConsoleServer, type ConsoleServerOptions, type ConsoleWorkflow } from './console/server.ts';
import type { LocalFunctions } from './lambdas.ts';

export interface OperatorOptions {
  dataDir: string;
  config: LifeboatConfig;
  sfn: string;
  /** The control plane's functions: the operator API is the OperatorApi function. */
  functions: LocalFunctions;
  template: ResolvedTemplate;
  port: number;
  onAlert?: (event: string, fields: Record<string, unknown>) => void;
}

/** The operator API through the OperatorApi function, one request as its function URL passes it. */
const apiThrough =
  (functions: LocalFunctions): ConsoleServerOptions['api'] =>
  async (method, pathAndQuery, body) => {
    const [rawPath = '/', rawQueryString = ''] = pathAndQuery.split('?', 2);
    const r = (await functions.invoke('OperatorApi', {
      rawPath,
      rawQueryString,
      requestContext: { http: { method } },
      ...(body === undefined ? {} : { body, isBase64Encoded: false }),
    })) as { statusCode: number; body: string };
    return { status: r.statusCode, body: JSON.parse(r.body) as unknown };
  };

export async function startOperator(o: OperatorOptions): Promise<{ url: string; close(): Promise<void> }> {
  const sfn = new SFNClient({ region: LOCAL_REGION, endpoint: o.sfn, credentials: LOCAL_ENDPOINT_CREDENTIALS });
  const arn = (workflow: ConsoleWorkflow) => {
    const m = Object.values(o.template.stateMachines).find((x) => x.logicalId.replace(/StateMachine[0-9A-F]{8}$/, '') === workflow);
    if (!m) throw new Error(`the stack has no ${workflow} workflow`);
    return m.arn;
  };
  const api = apiThrough(o.functions);
  const server = await startConsoleServer({
    port: o.port,
    api,
    groups: o.config.moverGroups.map((g) => g.id),
    start: async (workflow, input) => {
      const { executionArn } = await sfn.send(new StartExecutionCommand({ stateMachineArn: arn(workflow), input: JSON.stringify(input) }));
      return { name: executionArn!.split(':').pop()! };
    },
    describe: async (workflow, name) => {
      try {
        const d = await sfn.send(new DescribeExecutionCommand({ executionArn: `${arn(workflow).replace(':stateMachine:', ':execution:')}:${name}` }));
        return { status: d.status!, ...(d.output ? { output: d.output } : {}), ...(d.error ? { error: d.error } : {}), ...(d.cause ? { cause: d.cause } : {}) };
      } catch (err) {
        if ((err as Error).name === 'ExecutionDoesNotExist') return undefined;
        throw err;
      }
    },
  });
  const webhook = o.config.notifications?.webhook;
  const alerts = async () => {
    const a = await api('GET', '/api/alerts');
    if (a.status !== 200) throw new Error(`the operator API answered ${a.status} for /api/alerts: ${JSON.stringify(a.body)}`);
    return a.body as Alert[];
  };
  const notifier = webhook
    ? new AlertNotifier({
        dataDir: o.dataDir,
        url: webhook.url,
        checkSeconds: webhook.checkSeconds ?? 60,
        alerts,
        ...(o.onAlert ? { onEvent: o.onAlert } : {}),
      })
    : undefined;
  notifier?.start();
  return {
    url: server.url,
    close: async () => {
      await notifier?.stop();
      await server.close();
      sfn.destroy();
    },
  };
}
