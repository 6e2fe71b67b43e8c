/**
 * Runs the control plane's Lambda handlers in process: the same modules the CDK app
 * bundles, found through contracts/functions.ts, each module's handlers built by its
 * `makeHandlers` factory with the embedded stack's own clients (no environment variables),
 * called with a Lambda-like context.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { lambdaFunctions, type LambdaFunctionId } from '../contracts/functions.ts';
import type { Clients } from '../functions/commons/clients.ts';

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

/** The function whose invocation is running (tests attribute SDK calls to functions with it). */
export const currentInvocation = new AsyncLocalStorage<{ functionId: LambdaFunctionId }>();

/** The control plane's functions, in process, built with one set of clients. */
export class LocalFunctions {
  private clients: Clients;
  /** Each module's handlers, built once per set of clients. */
  private built = new Map<string, Promise<Record<string, Handler>>>();

  constructor(clients: Clients) {
    this.clients = clients;
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
   */
  async invoke(id: LambdaFunctionId, event: unknown, timeoutMs = 300_000): Promise<unknown> {
    const handler = await this.handler(id);
    const deadline = Date.now() + timeoutMs;
    const context = {
      functionName: id,
      awsRequestId: randomUUID(),
      getRemainingTimeInMillis: () => deadline - Date.now(),
      callbackWaitsForEmptyEventLoop: false,
    };
    const started = performance.now();
    try {
      return await currentInvocation.run({ functionId: id }, () => handler(structuredClone(event), context));
    } catch (err) {
      const e = err as Error;
      const failure = new Error(JSON.stringify({ errorType: e.name, errorMessage: e.message }));
      failure.name = e.name && e.name !== 'Error' ? e.name : 'Error';
      throw failure;
    } finally {
      const n = invocations.get(id) ?? { count: 0, ms: 0, minMs: Number.POSITIVE_INFINITY };
      const ms = performance.now() - started;
      invocations.set(id, { count: n.count + 1, ms: n.ms + ms, minMs: Math.min(n.minMs, ms) });
    }
  }
}
