/**
 * What the command line's workflow commands share: the running stack's endpoints (from
 * the file `lifeboat up` writes), starting a workflow by name and waiting for it, and
 * turning failures into one readable line.
 */
import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient } from '@aws-sdk/lib-dynamodb';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Catalog } from '../functions/catalog/catalog.ts';
import { HostConfigCatalog } from '../functions/catalog/host-config-catalog.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import { LOCAL_CREDENTIALS, type StackEndpoints } from '../local/stack.ts';

export interface Out {
  out(line: string): void;
  status?(line: string): void;
}

export interface StackOptions {
  dataDir: string;
  endpoints?: string;
}

export async function endpoints(opts: StackOptions): Promise<StackEndpoints> {
  const file = opts.endpoints ? resolve(opts.endpoints) : join(resolve(opts.dataDir), 'endpoints.json');
  try {
    return JSON.parse(await readFile(file, 'utf8')) as StackEndpoints;
  } catch (err) {
    throw new Error(`cannot read the stack's endpoints from ${file} (${(err as Error).message}); start the stack with \`lifeboat up\` first`);
  }
}

export function machine(e: StackEndpoints, name: string): string {
  const arn = e.stateMachines?.[name];
  if (!arn) throw new Error(`the running stack has no ${name} workflow (it has ${Object.keys(e.stateMachines ?? {}).join(', ') || 'none'}); restart it with this version`);
  return arn;
}

/** A Lambda failure's cause is `{ errorType, errorMessage }` JSON: show the message. */
export function lambdaMessage(cause: string): string {
  try {
    const c = JSON.parse(cause) as { errorMessage?: unknown };
    if (typeof c?.errorMessage === 'string') return c.errorMessage;
  } catch {
    // not JSON: a mover's or a Fail state's cause, shown as is
  }
  return cause;
}

/** Starts `workflow` with `input`, shows progress, and returns its output; a failed execution throws with its error and cause. */
export async function runWorkflow(e: StackEndpoints, workflow: string, input: Record<string, unknown>, io: Out) {
  const started = Date.now();
  const d = await runExecution(sfnClient(e), machine(e, workflow), input, {
    pollMs: 500,
    onPoll: () => io.status?.(`${workflow} running… ${Math.round((Date.now() - started) / 1000)} s`),
  });
  if (d.status !== 'SUCCEEDED') throw new Error(`${workflow} ${d.status}: ${d.error ?? ''}: ${lambdaMessage(d.cause ?? '')}`);
  return { output: JSON.parse(d.output ?? 'null') as unknown, seconds: (Date.now() - started) / 1000, executionArn: d.executionArn! };
}

function stackTable(e: StackEndpoints): DynamoDBDocumentClient {
  const db = new DynamoDBClient({ region: e.region, endpoint: e.dynamodb, credentials: LOCAL_CREDENTIALS });
  return DynamoDBDocumentClient.from(db, { marshallOptions: { removeUndefinedValues: true } });
}

/** The catalog of a running embedded stack (the operator's view; movers never get this). */
export function stackCatalog(e: StackEndpoints): Catalog {
  return new Catalog(stackTable(e), e.table);
}

/** The host configuration records of a running embedded stack (the operator's view; movers never get this). */
export function stackHostConfigs(e: StackEndpoints): HostConfigCatalog {
  return new HostConfigCatalog(stackTable(e), e.table);
}

/** The address a connection was refused at, anywhere in the error (its causes, an AggregateError's errors). */
export function refusedAt(err: unknown, depth = 0): string | undefined {
  if (!err || typeof err !== 'object' || depth > 8) return undefined;
  const e = err as { code?: unknown; address?: unknown; port?: unknown; cause?: unknown; errors?: unknown };
  if (e.code === 'ECONNREFUSED') return typeof e.address === 'string' ? `http://${e.address}${e.port ? `:${String(e.port)}` : ''}` : 'its address';
  for (const inner of [e.cause, ...(Array.isArray(e.errors) ? e.errors : [])]) {
    const at = refusedAt(inner, depth + 1);
    if (at) return at;
  }
  return undefined;
}

/** A command's failure in one line: what failed, why, and what to do. */
export function describeFailure(err: unknown): string {
  const at = refusedAt(err);
  if (at) return `the embedded stack is not running at ${at} (connection refused): start it with \`npx lifeboat up\` (or name the running stack's endpoints file with --endpoints)`;
  return (err as Error)?.message ?? String(err);
}

/** Runs a command's body; a failure prints its message (no stack) and exits 1. */
export const guarded = <A extends unknown[]>(fn: (...args: A) => Promise<void>) => async (...args: A) => {
  try {
    await fn(...args);
  } catch (err) {
    process.stderr.write(`lifeboat: ${describeFailure(err)}\n`);
    process.exitCode = 1;
  }
};
