/**
 * The command line's one way to a stack: the embedded stack (its endpoints file, written
 * by `lifeboat up`) or a deployed one (`--stack NAME`: the CloudFormation stack's outputs,
 * with the usual AWS profile and region resolution). Workflows start through Step
 * Functions; listings and details come from the read-only operator API (the embedded
 * stack's `/api/`, or the `OperatorApiUrl` function URL, signed with SigV4). Nothing here
 * imports the control plane's modules: the CLI sees what any other client sees.
 */
import { CloudFormationClient, DescribeStacksCommand } from '@aws-sdk/client-cloudformation';
import type { S3Client } from '@aws-sdk/client-s3';
import { DescribeExecutionCommand, SFNClient, StartExecutionCommand, StopExecutionCommand, type DescribeExecutionCommandOutput } from '@aws-sdk/client-sfn';
import { Hash } from '@smithy/hash-node';
import { SignatureV4 } from '@smithy/signature-v4';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { KMSClient } from '@aws-sdk/client-kms';
import { runExecution, waitForExecution } from '../local/client.ts';
import type { RepositoryLocation } from '../contracts/endpoints.ts';
import type { ObjectStore } from '../core/object-store.ts';
import { LOCAL_ENDPOINT_CREDENTIALS as LOCAL_CREDENTIALS, S3ObjectStore, endpointSettings, s3Client, type S3Endpoint } from '../core/s3-store.ts';
import { openRepository, type KeySource, type Repository } from '../repository/open.ts';
import type { StackEndpoints } from '../local/stack.ts';

export interface Out {
  out(line: string): void;
  status?(line: string): void;
}

export interface StackOptions {
  dataDir: string;
  endpoints?: string;
  /** A deployed stack's CloudFormation name. */
  stack?: string;
  profile?: string;
  region?: string;
}

/** The options naming the stack, on every command that talks to one. */
export function stackOptions<C extends { option(flags: string, description: string, defaultValue?: string): C }>(c: C, defaultDataDir: string): C {
  return c
    .option('--data-dir <dir>', 'state folder of the running embedded stack', defaultDataDir)
    .option('--endpoints <file>', 'endpoints file of the running embedded stack (default: <data-dir>/endpoints.json)')
    .option('--stack <name>', 'a deployed stack (its CloudFormation name, e.g. Lifeboat) instead of the embedded one')
    .option('--profile <name>', 'with --stack: the AWS profile (default: AWS_PROFILE or the default chain)')
    .option('--region <region>', "with --stack: the AWS region (default: AWS_REGION or the profile's)");
}

export async function endpoints(opts: Pick<StackOptions, 'dataDir' | 'endpoints'>): Promise<StackEndpoints> {
  const file = opts.endpoints ? resolve(opts.endpoints) : join(resolve(opts.dataDir), 'endpoints.json');
  try {
    return JSON.parse(await readFile(file, 'utf8')) as StackEndpoints;
  } catch (err) {
    throw new Error(
      `cannot read the stack's endpoints from ${file} (${(err as Error).message}); start the stack with \`lifeboat up\` first, or name a deployed stack with --stack`,
    );
  }
}

/** What the CLI needs of a stack, however it was found. */
export interface StackInfo {
  /** For messages: `the embedded stack at <dir>` or `stack Lifeboat in eu-west-1`. */
  where: string;
  kind: 'embedded' | 'aws';
  region: string;
  stateMachines: Record<string, string>;
  /** Base URL of the operator API (its paths start with /api/). */
  api: string;
  bucket: string;
  buckets: Record<string, string>;
  /** The mover groups (restores and verifications run on one). */
  groups: string[];
  /** What unwraps the repository keys: the embedded stack's key file, or the deployed stack's KMS key (`RepositoryKeyArn`). */
  keys: { keyFile: string } | { kmsKeyId: string };
}

/** A mover group's id from its Activity's ARN (`...:activity:<stack>-mover-<group>`), as the mover takes it. */
const groupOfActivity = (arn: string) => /-mover-([A-Za-z0-9-]+)$/.exec(arn)?.[1] ?? arn.split(':').pop() ?? arn;

/** A CloudFormation stack's outputs as the CLI reads them (cdk/lib/lifeboat-stack.ts, operator-api.ts, recovery-workflows.ts). */
export function stackInfoFromOutputs(name: string, region: string, outputs: Record<string, string>): StackInfo {
  const need = (key: string) => {
    const v = outputs[key];
    if (!v) throw new Error(`stack ${name} has no output ${key}: deploy this version of Lifeboat (\`cdk deploy\`) first`);
    return v;
  };
  const stateMachines = Object.fromEntries(
    Object.entries(outputs)
      .filter(([k]) => k.endsWith('StateMachineArn'))
      .map(([k, v]) => [k.slice(0, -'StateMachineArn'.length), v]),
  );
  const bucket = need('RepositoryBucketName');
  return {
    where: `stack ${name} in ${region}`,
    kind: 'aws',
    region,
    stateMachines,
    api: need('OperatorApiUrl').replace(/\/$/, ''),
    bucket,
    buckets: outputs.RepositoryBuckets ? (JSON.parse(outputs.RepositoryBuckets) as Record<string, string>) : { primary: bucket },
    // MoverGroups (the activities are in the site stacks); a stack deployed before them has an ActivityArn<group> output per group.
    groups: (outputs.MoverGroups
      ? outputs.MoverGroups.split(',').filter(Boolean)
      : Object.entries(outputs)
          .filter(([k]) => k.startsWith('ActivityArn'))
          .map(([, v]) => groupOfActivity(v))
    ).sort(),
    keys: { kmsKeyId: need('RepositoryKeyArn') },
  };
}

export class StackClient {
  readonly info: StackInfo;
  readonly sfn: SFNClient;
  /**
   * The stack's repository bucket, for the records movers leave there for a caller to read
   * while a task runs (the endpoint of an export or an instant recovery: contracts/export-job.ts).
   */
  get store(): ObjectStore {
    this.s3 ??= s3Client(this.s3Settings);
    return new S3ObjectStore(this.s3, this.info.bucket);
  }
  private readonly signer: SignatureV4 | undefined;
  private readonly s3Settings: S3Endpoint;
  private s3: S3Client | undefined;
  private readonly others: S3Client[] = [];
  private kms: KMSClient | undefined;
  private readonly config: { region?: string; profile?: string };

  private constructor(info: StackInfo, sfn: SFNClient, s3Settings: S3Endpoint, config: { region?: string; profile?: string }, signer?: SignatureV4) {
    this.info = info;
    this.sfn = sfn;
    this.s3Settings = s3Settings;
    this.config = config;
    this.signer = signer;
  }

  /**
   * A repository opened with the caller's credentials (an operator restoring what the
   * repository holds outside any workflow: `host-config restore`): the embedded stack's key
   * file, or the deployed stack's KMS key (the caller needs `kms:Decrypt` on it and
   * `s3:GetObject` on the bucket).
   */
  async openRepository(location: RepositoryLocation): Promise<Repository> {
    let client: S3Client;
    if (location.bucket === this.info.bucket && !location.endpoint) {
      client = s3Client(this.s3Settings);
    } else {
      const own = this.info.kind === 'embedded' ? { region: this.info.region, url: this.s3Settings.endpoint } : { region: this.info.region };
      client = s3Client({
        ...endpointSettings(location.endpoint, own),
        ...(this.info.kind === 'embedded' ? { credentials: LOCAL_CREDENTIALS } : this.config.profile ? { profile: this.config.profile } : {}),
      });
    }
    this.others.push(client);
    const store = new S3ObjectStore(client, location.bucket);
    const k = this.info.keys;
    const source: KeySource = 'keyFile' in k ? { keyFile: k.keyFile } : { kms: (this.kms ??= new KMSClient(this.config)), kmsKeyId: k.kmsKeyId };
    try {
      return await openRepository({ store, bucket: location.bucket, keys: source });
    } catch (err) {
      const how =
        'keyFile' in k ? `the key file ${k.keyFile}` : `KMS key ${k.kmsKeyId} (your credentials need kms:Decrypt on it, and s3:GetObject on the bucket)`;
      throw new Error(`cannot open the repository in bucket ${location.bucket} with ${how}: ${(err as Error).name}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** The stack the options name: `--stack` (deployed), else the embedded stack's endpoints file. */
  static async connect(opts: StackOptions): Promise<StackClient> {
    if (!opts.stack) {
      const e = await endpoints(opts);
      const info: StackInfo = {
        where: `the embedded stack at ${e.dataDir}`,
        kind: 'embedded',
        region: e.region,
        stateMachines: e.stateMachines,
        api: e.console ?? '',
        bucket: e.bucket,
        buckets: e.buckets,
        groups: Object.values(e.activities ?? {})
          .map(groupOfActivity)
          .sort(),
        keys: { keyFile: e.keyFile },
      };
      const s3 = { region: e.region, endpoint: e.s3, forcePathStyle: true, credentials: LOCAL_CREDENTIALS };
      return new StackClient(info, new SFNClient({ region: e.region, endpoint: e.sfn, credentials: LOCAL_CREDENTIALS }), s3, {});
    }
    const config = { ...(opts.region ? { region: opts.region } : {}), ...(opts.profile ? { profile: opts.profile } : {}) };
    const cfn = new CloudFormationClient(config);
    let outputs: Record<string, string>;
    try {
      const out = await cfn.send(new DescribeStacksCommand({ StackName: opts.stack }));
      outputs = Object.fromEntries((out.Stacks?.[0]?.Outputs ?? []).map((o) => [o.OutputKey ?? '', o.OutputValue ?? '']));
    } catch (err) {
      throw new Error(
        `cannot read the outputs of stack ${opts.stack} (${(err as Error).name}: ${(err as Error).message}); check its name, --region and your AWS credentials (--profile)`,
        { cause: err },
      );
    } finally {
      cfn.destroy();
    }
    const region = await cfn.config.region();
    const sfn = new SFNClient(config);
    const signer = new SignatureV4({ service: 'lambda', region, credentials: sfn.config.credentials, sha256: Hash.bind(null, 'sha256') });
    const info = stackInfoFromOutputs(opts.stack, region, outputs);
    return new StackClient(
      info,
      sfn,
      { region, ...(opts.profile ? { profile: opts.profile } : {}) },
      { region, ...(opts.profile ? { profile: opts.profile } : {}) },
      signer,
    );
  }

  workflowArn(name: string): string {
    const arn = this.info.stateMachines[name];
    if (!arn)
      throw new Error(
        `${this.info.where} has no ${name} workflow (it has ${Object.keys(this.info.stateMachines).join(', ') || 'none'}); ${this.info.kind === 'aws' ? 'deploy' : 'restart it with'} this version`,
      );
    return arn;
  }

  /** Starts `workflow` with `input`, calls `onPoll` while it runs, and returns its output; a failed execution throws with its error and cause. */
  async runWorkflow(
    workflow: string,
    input: Record<string, unknown>,
    opts: { onPoll?: (executionName: string, seconds: number) => void | Promise<void>; pollMs?: number } = {},
  ) {
    const started = Date.now();
    let name = '';
    const d = await runExecution(this.sfn, this.workflowArn(workflow), input, {
      pollMs: opts.pollMs ?? 500,
      onStarted: (arn) => {
        name = arn.split(':').pop()!;
      },
      onPoll: () => opts.onPoll?.(name, (Date.now() - started) / 1000),
    });
    if (d.status !== 'SUCCEEDED') throw new Error(`${workflow} ${d.status}: ${d.error ?? ''}: ${lambdaMessage(d.cause ?? '')}`);
    return { output: JSON.parse(d.output ?? 'null') as unknown, seconds: (Date.now() - started) / 1000, executionArn: d.executionArn!, name };
  }

  /** Starts `workflow` under the execution name `name` and returns its ARN, for a caller that watches it itself. */
  async start(workflow: string, name: string, input: Record<string, unknown>): Promise<string> {
    const { executionArn } = await this.sfn.send(
      new StartExecutionCommand({ stateMachineArn: this.workflowArn(workflow), name, input: JSON.stringify(input) }),
    );
    return executionArn!;
  }

  /** The ARN of `workflow`'s execution named `name`. */
  executionArn(workflow: string, name: string): string {
    return `${this.workflowArn(workflow).replace(':stateMachine:', ':execution:')}:${name}`;
  }

  /** Waits until an execution stops; returns its final description. */
  waitFor(executionArn: string, pollMs = 500): Promise<DescribeExecutionCommandOutput> {
    return waitForExecution(this.sfn, executionArn, { pollMs });
  }

  async stop(executionArn: string, cause: string): Promise<void> {
    await this.sfn.send(new StopExecutionCommand({ executionArn, cause }));
  }

  /** A request to the operator API; an answer that is not 2xx throws its message (it names the thing and what to do). */
  async request<T>(method: 'GET' | 'POST', path: string, body?: unknown): Promise<T> {
    const { status, body: answer } = await this.call(method, path, body === undefined ? undefined : JSON.stringify(body));
    if (status < 200 || status > 299) throw new Error((answer as { message?: string } | null)?.message ?? `the operator API answered ${status} for ${path}`);
    return answer as T;
  }

  /** One request of the operator API (signed for a deployed stack): its status and JSON body, whatever the status. */
  async call(method: 'GET' | 'POST', path: string, text?: string): Promise<{ status: number; body: unknown }> {
    if (!this.info.api) throw new Error(`${this.info.where} has no operator API (its endpoints file predates it): restart it with \`lifeboat up\``);
    const url = new URL(`${this.info.api}${path}`);
    let headers: Record<string, string> = { accept: 'application/json', ...(text === undefined ? {} : { 'content-type': 'application/json' }) };
    if (this.signer) {
      const query = Object.fromEntries(url.searchParams);
      const signed = await this.signer.sign({
        method,
        protocol: url.protocol,
        hostname: url.hostname,
        ...(url.port ? { port: Number(url.port) } : {}),
        path: url.pathname,
        query,
        headers: { ...headers, host: url.host },
        ...(text ? { body: text } : {}),
      });
      headers = signed.headers as Record<string, string>;
    }
    const res = await fetch(url, { method, headers, ...(text ? { body: text } : {}), signal: AbortSignal.timeout(60_000) });
    const answer = (await res.json().catch(() => ({
      message: `the operator API at ${this.info.api} answered ${res.status} without JSON${res.status === 403 ? ': check that your credentials may call it (lambda:InvokeFunctionUrl)' : ''}`,
    }))) as unknown;
    return { status: res.status, body: answer };
  }

  /** An execution's status and outcome, or undefined when `workflow` has no execution of that name. */
  async describe(workflow: string, name: string): Promise<{ status: string; output?: string; error?: string; cause?: string } | undefined> {
    try {
      const d = await this.sfn.send(new DescribeExecutionCommand({ executionArn: this.executionArn(workflow, name) }));
      return { status: d.status!, ...(d.output ? { output: d.output } : {}), ...(d.error ? { error: d.error } : {}), ...(d.cause ? { cause: d.cause } : {}) };
    } catch (err) {
      if ((err as Error).name === 'ExecutionDoesNotExist') return undefined;
      throw err;
    }
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  close(): void {
    this.sfn.destroy();
    this.s3?.destroy();
    for (const c of this.others) c.destroy();
    this.kms?.destroy();
  }
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
  if (at)
    return `the embedded stack is not running at ${at} (connection refused): start it with \`npx lifeboat up\` (or name the running stack's endpoints file with --endpoints, or a deployed stack with --stack)`;
  return (err as Error)?.message ?? String(err);
}

/** Exit codes (README, "Exit codes"): 0 done, 1 failed (or a listed failure), 2 usage, 3 damage or a failed restore test. */
export const EXIT = { ok: 0, failed: 1, usage: 2, damaged: 3 } as const;

/** Runs a command's body; a failure prints its message (no stack) and exits 1. */
export const guarded =
  <A extends unknown[]>(fn: (...args: A) => Promise<void>) =>
  async (...args: A) => {
    try {
      await fn(...args);
    } catch (err) {
      process.stderr.write(`lifeboat: ${describeFailure(err)}\n`);
      process.exitCode = EXIT.failed;
    }
  };
