/**
 * Runs the control plane's Lambda handlers in process: the same modules the CDK app
 * bundles, found through contracts/functions.ts, each module's handlers built by its
 * `makeHandlers` factory with the embedded stack's own clients (no environment variables),
 * called with a Lambda-like context.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { lambdaFunctions, type LambdaFunctionId } from '../contracts/functions.ts';
import { gateSdkCalls, type Clients } from '../functions/commons/clients.ts';

type Handler = (event: unknown, context: unknown) => Promise<unknown>;
type HandlerModule = { makeHandlers?: (c: Clients) => Record<string, Handler> };

/**
 * Invocations of each function in this process, their summed duration and the shortest one
 * (the cost bench prices them as Lambda would; the shortest bounds what the load added).
 */
const invocations = new Map<LambdaFunctionId, { count: number; ms: number; minMs: number }>();
export function lambdaInvocations(): Record<string, { count: number; ms: number; minMs: number }> {
  return Object.fromEntries([...invocations].map(([id, v]) => [id, { ...v }]));
}

/**
 * The function whose invocation is running (tests attribute SDK calls to functions with it),
 * and a signal aborted once that invocation has ended, by its answer or its timeout.
 */
export const currentInvocation = new AsyncLocalStorage<{ functionId: LambdaFunctionId; ended?: AbortSignal }>();

/** Lambda's maximum timeout: a function no template names runs at most this long. */
const LAMBDA_MAX_TIMEOUT_SECONDS = 900;

/**
 * The error Lambda returns for an invocation still running at its function's timeout, as
 * Step Functions' `lambda:invoke` task fails with it: `Sandbox.Timedout` (older Step
 * Functions docs call it `Lambda.Unknown`). `States.ALL` and `States.TaskFailed` match it; a
 * Retry on the `Lambda.*` service errors, or on `States.Timeout` (the Task's own
 * TimeoutSeconds), does not. Handlers built by functions/commons/lambda.ts answer a few
 * milliseconds earlier with middy's `TimeoutError`, as they do in AWS; this one is for a
 * handler whose event loop was too busy for that.
 */
export const LAMBDA_TIMEOUT_ERROR = 'Sandbox.Timedout';

/** What an SDK call fails with when its invocation has ended: in AWS the sandbox is frozen then, and the call never leaves. */
export class InvocationEnded extends Error {
  override name = 'InvocationEnded';
}

// An invocation that has answered or timed out sends nothing more: no late catalog write, no late upload.
gateSdkCalls(() => {
  const s = currentInvocation.getStore();
  if (s?.ended?.aborted)
    throw new InvocationEnded(`${s.functionId}'s invocation has ended (answered or timed out): its late calls are refused, as a frozen Lambda sandbox's`);
});

/** The control plane's functions, in process, built with one set of clients. */
export class LocalFunctions {
  private clients: Clients;
  /** Each module's handlers, built once per set of clients. */
  private built = new Map<string, Promise<Record<string, Handler>>>();

  /** Each function's timeout in seconds (the template's); a function not listed gets Lambda's maximum. */
  private timeouts: Readonly<Record<string, number>>;

  constructor(clients: Clients, opts: { timeoutSeconds?: Readonly<Record<string, number>> } = {}) {
    this.clients = clients;
    this.timeouts = opts.timeoutSeconds ?? {};
  }

  /** Builds the handlers again with other clients (the stack learns its Step Functions API's URL after it starts; tests put a fault proxy in front of S3). */
  useClients(clients: Clients): void {
    this.clients = clients;
    this.built.clear();
  }

  private async handler(id: LambdaFunctionId): Promise<Handler> {
    const def = lambdaFunctions[id];
    let handlers = this.built.get(def.entry);
    if (!handlers) {
      const clients = this.clients;
      handlers = import(new URL(`../${def.entry}`, import.meta.url).href).then((m: HandlerModule) => {
        if (typeof m.makeHandlers !== 'function') throw new Error(`${def.entry} does not export 'makeHandlers'`);
        return m.makeHandlers(clients);
      });
      this.built.set(def.entry, handlers);
    }
    const fn = (await handlers)[def.handler];
    if (typeof fn !== 'function') throw new Error(`${def.entry}'s makeHandlers makes no '${def.handler}'`);
    return fn;
  }

  /**
   * Invokes function `id` as Lambda would. A thrown error becomes an Error whose name is
   * the error's name and whose message is Lambda's JSON cause, as Step Functions sees it.
   * An invocation still running at the function's timeout fails with {@link LAMBDA_TIMEOUT_ERROR}.
   * Its handler cannot be stopped in process; once the invocation has ended (answered or timed
   * out), the SDK calls it still makes are refused and its result is dropped, as a frozen
   * sandbox's would be.
   */
  async invoke(id: LambdaFunctionId, event: unknown): Promise<unknown> {
    const handler = await this.handler(id);
    const timeoutSeconds = this.timeouts[id] ?? LAMBDA_MAX_TIMEOUT_SECONDS;
    const deadline = Date.now() + timeoutSeconds * 1000;
    const context = {
      functionName: id,
      awsRequestId: randomUUID(),
      getRemainingTimeInMillis: () => deadline - Date.now(),
      callbackWaitsForEmptyEventLoop: false,
    };
    const ended = new AbortController();
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    try {
      const run = currentInvocation.run({ functionId: id, ended: ended.signal }, () => handler(structuredClone(event), context));
      const timeout = new Promise<never>((_, fail) => {
        timer = setTimeout(() => fail(timedOutError(context.awsRequestId, timeoutSeconds)), timeoutSeconds * 1000);
      });
      run.catch(() => {}); // after a timeout its failure is nobody's: the invocation already failed
      return await Promise.race([run, timeout]);
    } catch (err) {
      const e = err as Error;
      const failure = new Error(JSON.stringify({ errorType: e.name, errorMessage: e.message }));
      failure.name = e.name && e.name !== 'Error' ? e.name : 'Error';
      throw failure;
    } finally {
      clearTimeout(timer);
      ended.abort();
      const n = invocations.get(id) ?? { count: 0, ms: 0, minMs: Number.POSITIVE_INFINITY };
      const ms = performance.now() - started;
      invocations.set(id, { count: n.count + 1, ms: n.ms + ms, minMs: Math.min(n.minMs, ms) });
    }
  }
}

/** Lambda's answer for an invocation past its timeout (the message as Lambda words it). */
function timedOutError(requestId: string, seconds: number): Error {
  const e = new Error(`RequestId: ${requestId} Error: Task timed out after ${seconds.toFixed(2)} seconds`);
  e.name = LAMBDA_TIMEOUT_ERROR;
  return e;
}
