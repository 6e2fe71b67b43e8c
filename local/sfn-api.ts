/**
 * Step Functions HTTP API for the embedded stack: speaks the AWS JSON 1.0
 * protocol that `@aws-sdk/client-sfn` uses (POST /, `X-Amz-Target:
 * AWSStepFunctions.<Operation>`), so the real SDK can point its `endpoint` here.
 * SigV4 signatures are not checked.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { ActivityBroker } from './activities.ts';
import type { QuotaUsage } from './quota-guard.ts';

/** One execution as reported by DescribeExecution / ListExecutions. */
export interface ExecutionRecord {
  executionArn: string;
  stateMachineArn: string;
  name: string;
  status: 'RUNNING' | 'SUCCEEDED' | 'FAILED' | 'TIMED_OUT' | 'ABORTED';
  startDate: Date;
  stopDate?: Date;
  input: string;
  output?: string;
  error?: string;
  cause?: string;
  /** What it used of Step Functions' quotas (local/quota-guard.ts); the embedded stack's own, not on the wire. */
  quotaUsage?: QuotaUsage;
  /** A Map Run's child: the Map Run and the parent execution it belongs to. */
  mapRunArn?: string;
  parentExecutionArn?: string;
  /** The Map Runs this execution started (its Distributed Map states), each listing its children through ListExecutions. */
  mapRuns?: { mapRunArn: string; stateName: string; items: number }[];
}

/**
 * Execution operations the API delegates to. Throw an Error whose `name` is a
 * Step Functions exception name (e.g. `ExecutionDoesNotExist`,
 * `StateMachineDoesNotExist`, `ExecutionAlreadyExists`) to answer with it.
 */
export interface ExecutionService {
  start(stateMachineArn: string, input: string, name?: string): Promise<{ executionArn: string; startDate: Date }>;
  /** @throws Error named `ExecutionDoesNotExist`. */
  describe(executionArn: string): Promise<ExecutionRecord>;
  /** By state machine, or by Map Run (`mapRunArn`, its child executions). */
  list(stateMachineArn: string | undefined, statusFilter?: string, maxResults?: number, mapRunArn?: string): Promise<ExecutionRecord[]>;
  stop(executionArn: string, error?: string, cause?: string): Promise<{ stopDate: Date }>;
}

/** Options for {@link startSfnApi}. */
export interface SfnApiOptions {
  /** Interface to bind; default 127.0.0.1. */
  host?: string;
  /** Port to bind; 0 picks a free one (see the returned url). */
  port: number;
  broker: ActivityBroker;
  executions: ExecutionService;
  /** Longest GetActivityTask long poll in ms; default 60000 (as AWS). */
  maxPollMs?: number;
}

/** A running API server. */
export interface SfnApi {
  /** Base URL with the actually bound port, usable as the SDK `endpoint`. */
  url: string;
  close(): Promise<void>;
}

/** Error answered as HTTP `status` with `__type` = `name`. */
class ApiError extends Error {
  readonly status: number;
  constructor(name: string, message: string, status = 400) {
    super(message);
    this.name = name;
    this.status = status;
  }
}

/** Exception names the SDK models for SFN plus generic AWS client errors: answered as 400. */
const CLIENT_ERRORS = new Set([
  'ActivityDoesNotExist',
  'ExecutionAlreadyExists',
  'ExecutionDoesNotExist',
  'ExecutionLimitExceeded',
  'InvalidArn',
  'InvalidExecutionInput',
  'InvalidName',
  'InvalidOutput',
  'InvalidToken',
  'MissingRequiredParameter',
  'ResourceNotFound',
  'StateMachineDoesNotExist',
  'StateMachineDeleting',
  'TaskDoesNotExist',
  'TaskTimedOut',
  'ValidationException',
  'SerializationException',
  'UnknownOperationException',
]);

const MAX_BODY_BYTES = 1024 * 1024;

type Body = Record<string, unknown>;
type Handler = (body: Body, signal: AbortSignal) => Promise<Body>;

/** Starts the HTTP server; resolves once it listens. */
export async function startSfnApi(opts: SfnApiOptions): Promise<SfnApi> {
  const { broker, executions } = opts;
  const maxPollMs = opts.maxPollMs ?? 60_000;
  const inFlight = new Set<AbortController>();

  const ops: Record<string, Handler> = {
    async GetActivityTask(b, signal) {
      const arn = str(b, 'activityArn', 'InvalidArn', true);
      const task = await broker.poll(arn, str(b, 'workerName', 'InvalidName'), maxPollMs, signal);
      if (task && signal.aborted) {
        broker.release(task.taskToken); // the poller left before we could answer
        return {};
      }
      return task ? { taskToken: task.taskToken, input: task.input } : {};
    },
    async SendTaskSuccess(b) {
      const output = str(b, 'output', 'InvalidOutput', true);
      broker.succeed(str(b, 'taskToken', 'InvalidToken', true), output);
      return {};
    },
    async SendTaskFailure(b) {
      broker.fail(str(b, 'taskToken', 'InvalidToken', true), str(b, 'error', 'ValidationException'), str(b, 'cause', 'ValidationException'));
      return {};
    },
    async SendTaskHeartbeat(b) {
      broker.heartbeat(str(b, 'taskToken', 'InvalidToken', true));
      return {};
    },
    async StartExecution(b) {
      const arn = str(b, 'stateMachineArn', 'InvalidArn', true);
      const r = await executions.start(arn, str(b, 'input', 'InvalidExecutionInput') ?? '{}', str(b, 'name', 'InvalidName'));
      return { executionArn: r.executionArn, startDate: epoch(r.startDate) };
    },
    async DescribeExecution(b) {
      return wireRecord(await executions.describe(str(b, 'executionArn', 'InvalidArn', true)), true);
    },
    async ListExecutions(b) {
      // By state machine, or (as AWS) the child executions of a Map Run.
      const mapRunArn = str(b, 'mapRunArn', 'InvalidArn');
      const arn = mapRunArn ? str(b, 'stateMachineArn', 'InvalidArn') : str(b, 'stateMachineArn', 'InvalidArn', true);
      const max = b['maxResults'];
      if (max !== undefined && (typeof max !== 'number' || !Number.isInteger(max) || max < 0 || max > 1000)) {
        throw new ApiError('ValidationException', 'maxResults must be an integer between 0 and 1000');
      }
      const list = await executions.list(arn, str(b, 'statusFilter', 'ValidationException'), max || undefined, mapRunArn);
      return { executions: list.map((r) => wireRecord(r, false)) };
    },
    async StopExecution(b) {
      const r = await executions.stop(
        str(b, 'executionArn', 'InvalidArn', true),
        str(b, 'error', 'ValidationException'),
        str(b, 'cause', 'ValidationException'),
      );
      return { stopDate: epoch(r.stopDate) };
    },
  };

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const abort = new AbortController();
    inFlight.add(abort);
    res.on('close', () => {
      inFlight.delete(abort);
      if (!res.writableFinished) abort.abort(); // client went away mid-request
    });
    try {
      if (req.method !== 'POST') throw new ApiError('UnknownOperationException', `${req.method} is not supported`);
      const target = String(req.headers['x-amz-target'] ?? '');
      const opName = target.startsWith('AWSStepFunctions.') ? target.slice('AWSStepFunctions.'.length) : '';
      const op = Object.hasOwn(ops, opName) ? ops[opName] : undefined;
      if (!op) throw new ApiError('UnknownOperationException', `unknown operation '${target}'`);
      const body = await readJson(req);
      send(res, 200, await op(body, abort.signal));
    } catch (e) {
      const err = e instanceof Error ? e : new Error(String(e));
      const known = err instanceof ApiError || CLIENT_ERRORS.has(err.name);
      const name = known ? err.name : 'InternalFailure';
      const status = err instanceof ApiError ? err.status : known ? 400 : 500;
      send(res, status, { __type: name, message: err.message }, name);
    }
  }

  const server = createServer((req, res) => void handle(req, res));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `http://${host}:${addr.port}`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        for (const a of inFlight) a.abort();
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      }),
  };
}

/** Reads a string field; `required` missing or wrong type → `errName` naming the field. */
function str(b: Body, field: string, errName: string, required: true): string;
function str(b: Body, field: string, errName: string, required?: false): string | undefined;
function str(b: Body, field: string, errName: string, required = false): string | undefined {
  const v = b[field];
  if (v === undefined || v === null) {
    if (required) throw new ApiError(errName, `Invalid ${field}: required parameter '${field}' is missing`);
    return undefined;
  }
  if (typeof v !== 'string') throw new ApiError(errName, `Invalid ${field}: expected a string`);
  if (required && v === '') throw new ApiError(errName, `Invalid ${field}: must not be empty`);
  return v;
}

function epoch(d: Date): number {
  return d.getTime() / 1000;
}

function wireRecord(r: ExecutionRecord, full: boolean): Body {
  const item: Body = {
    executionArn: r.executionArn,
    stateMachineArn: r.stateMachineArn,
    name: r.name,
    status: r.status,
    startDate: epoch(r.startDate),
    stopDate: r.stopDate && epoch(r.stopDate),
    ...(r.mapRunArn ? { mapRunArn: r.mapRunArn } : {}),
  };
  // DescribeExecution of a Map Run's child names its Map Run (AWS: mapRunArn); the parent's Map Runs are the stack's own field.
  return full ? { ...item, input: r.input, output: r.output, error: r.error, cause: r.cause, ...(r.mapRuns ? { mapRuns: r.mapRuns } : {}) } : item;
}

async function readJson(req: IncomingMessage): Promise<Body> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new ApiError('ValidationException', 'request body too large', 413);
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  let body: unknown;
  try {
    body = text.trim() === '' ? {} : JSON.parse(text);
  } catch {
    throw new ApiError('SerializationException', 'request body is not valid JSON');
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new ApiError('SerializationException', 'request body must be a JSON object');
  }
  return body as Body;
}

function send(res: ServerResponse, status: number, body: Body, errorType?: string): void {
  if (res.destroyed || res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/x-amz-json-1.0',
    'content-length': Buffer.byteLength(text),
    'x-amzn-requestid': randomUUID(),
    ...(errorType ? { 'x-amzn-errortype': errorType } : {}),
  });
  res.end(text);
}
