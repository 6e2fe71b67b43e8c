/**
 * The embedded stack enforces each Lambda function's timeout as AWS does: an invocation that
 * runs past it fails with `Sandbox.Timedout` at the timeout, and the handler, which cannot be
 * stopped in process, sends nothing more (a frozen sandbox's calls never leave). A real
 * handler (SyncConfig, which writes one catalog item per host) on a real dynalite behind a
 * proxy that holds its first request past a short, injected timeout.
 */
import { DynamoDBClient, ScanCommand } from '@aws-sdk/client-dynamodb';
import dynalite from 'dynalite';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../core/config.ts';
import { createClients } from '../functions/commons/clients.ts';
import { LAMBDA_DEFAULT_TIMEOUT_SECONDS, resolveTemplate, synthesizeTemplate, taskStates, type ResolvedTemplate } from '../local/asl.ts';
import { LocalFunctions } from '../local/lambdas.ts';
import { LOCAL_CREDENTIALS } from '../local/stack.ts';
import { functionAccess } from '../cdk/lib/function-access.ts';
import { createCatalogTable } from './helpers/catalog.ts';

process.env.POWERTOOLS_METRICS_DISABLED = 'true';
process.env.POWERTOOLS_LOG_LEVEL = 'SILENT';

const config = loadConfig();
const event = { config, buckets: Object.fromEntries(config.repositories.map((r) => [r.id, 'bucket'])) };

let db: ReturnType<typeof dynalite>;
let proxy: Server;
let proxyUrl: string;
/** The DynamoDB operations that reached the server, in order. */
let seen: string[] = [];
/** Milliseconds the proxy holds the first request before passing it on (0: none). */
let holdFirstMs = 0;
/** Settles when the held request's answer has gone back to the handler. */
let heldAnswered: Promise<void> = Promise.resolve();

beforeAll(async () => {
  db = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
  await new Promise<void>((ok, fail) => db.once('error', fail).listen(0, '127.0.0.1', ok));
  const target = (db.address() as AddressInfo).port;
  proxy = createServer((req, res) => {
    const pass = () => {
      seen.push(String(req.headers['x-amz-target']).replace(/^DynamoDB_\d+\./, ''));
      const out = request({ host: '127.0.0.1', port: target, path: req.url, method: req.method, headers: req.headers }, (answer) => {
        res.writeHead(answer.statusCode ?? 500, answer.headers);
        answer.pipe(res);
      });
      out.on('error', () => res.destroy());
      req.on('error', () => out.destroy());
      req.pipe(out);
    };
    const hold = holdFirstMs;
    holdFirstMs = 0;
    if (!hold) return pass();
    heldAnswered = new Promise((ok) => res.once('finish', () => ok()));
    setTimeout(pass, hold);
  });
  await new Promise<void>((ok) => proxy.listen(0, '127.0.0.1', ok));
  proxyUrl = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  await createCatalogTable(new DynamoDBClient({ region: 'us-east-1', endpoint: `http://127.0.0.1:${target}`, credentials: LOCAL_CREDENTIALS }));
});
afterAll(async () => {
  proxy.closeAllConnections();
  await new Promise((ok) => proxy.close(ok));
  await new Promise((ok) => db.close(ok));
});
beforeEach(() => {
  seen = [];
});

const itemCount = async () =>
  (await new DynamoDBClient({ region: 'us-east-1', endpoint: proxyUrl, credentials: LOCAL_CREDENTIALS }).send(new ScanCommand({ TableName: 'catalog' }))).Count;

const functionsWith = (timeoutSeconds: number) =>
  new LocalFunctions(createClients({ tableName: `catalog`, region: 'us-east-1', dynamodbEndpoint: proxyUrl }), {
    timeoutSeconds: { SyncConfig: timeoutSeconds },
  });

describe('a Lambda function past its timeout in the embedded stack', () => {
  it('fails at the timeout as in AWS (middy answers TimeoutError just before Lambda would), and its handler writes nothing after it', async () => {
    holdFirstMs = 2_500;
    const failed = await functionsWith(1)
      .invoke('SyncConfig', event)
      .then(
        () => undefined,
        (e: Error) => e,
      );
    expect(failed?.name).toBe('TimeoutError');
    expect(JSON.parse(failed!.message)).toMatchObject({ errorType: 'TimeoutError' });
    // The write in flight at the timeout lands (in AWS too: it had left); the handler then goes on, and its next writes are refused.
    await heldAnswered;
    await new Promise((ok) => setTimeout(ok, 300));
    expect(seen).toEqual(['PutItem']);
    expect(await itemCount()).toBe(1);
  });

  it('runs to the end within its timeout (the same handler, the same writes)', async () => {
    const out = (await functionsWith(30).invoke('SyncConfig', event)) as { hosts: string[] };
    expect(out.hosts.length).toBe(config.hosts.length);
    expect(seen.filter((op) => op === 'PutItem').length).toBeGreaterThan(config.hosts.length);
  });
});

describe("the embedded stack's function timeouts", () => {
  let dir: string;
  let template: ResolvedTemplate;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'lambda-timeouts-'));
    template = resolveTemplate(synthesizeTemplate(join(dir, 'cdk.out'), config));
  }, 300_000);
  afterAll(async () => rm(dir, { recursive: true, force: true }));

  it('let every Lambda task wait for its function: no Task timeout cuts a function short within its own', () => {
    const tasks = Object.values(template.stateMachines).flatMap((m) =>
      taskStates(m.definition).flatMap(([name, s]) => {
        const fid = template.functions[String(s.Resource)] ?? template.functions[String((s.Parameters as { FunctionName?: string } | undefined)?.FunctionName)];
        return fid ? [{ task: `${m.logicalId}.${name}`, fid, task_s: s.TimeoutSeconds as number | undefined }] : [];
      }),
    );
    expect(tasks.find((t) => t.fid === 'Verify')).toBeDefined();
    const cut = tasks.filter((t) => t.task_s !== undefined && t.task_s < template.functionTimeouts[t.fid]!);
    expect(cut).toEqual([]);
  });

  it("are the CDK app's: a function's own timeoutSeconds, 60 s where it sets none", () => {
    const t = template.functionTimeouts;
    expect(t.Verify).toBe(functionAccess.Verify?.timeoutSeconds);
    expect(t.CollectGarbage).toBe(900);
    expect(functionAccess.Commit?.timeoutSeconds).toBeUndefined();
    expect(t.Commit).toBe(60);
    expect(LAMBDA_DEFAULT_TIMEOUT_SECONDS).toBe(3);
    expect(Object.values(t).every((s) => s >= 1 && s <= 900)).toBe(true);
  });
});
