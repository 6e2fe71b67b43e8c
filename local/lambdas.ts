/**
 * Runs the control plane's Lambda handlers in process: the same modules the CDK app
 * bundles, found through contracts/functions.ts, called with a Lambda-like context.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomUUID } from 'node:crypto';
import { lambdaFunctions, type LambdaFunctionId } from '../contracts/functions.ts';

type Handler = (event: unknown, context: unknown) => Promise<unknown>;
const loaded = new Map<LambdaFunctionId, Promise<Handler>>();

async function load(id: LambdaFunctionId): Promise<Handler> {
  let h = loaded.get(id);
  if (!h) {
    const def = lambdaFunctions[id];
    h = import(new URL(`../${def.entry}`, import.meta.url).href).then((m: Record<string, Handler>) => {
      const fn = m[def.handler];
      if (typeof fn !== 'function') throw new Error(`${def.entry} does not export '${def.handler}'`);
      return fn;
    });
    loaded.set(id, h);
  }
  return h;
}

/** Invocations of each function in this process and their summed duration (the cost bench prices them as Lambda would). */
const invocations = new Map<LambdaFunctionId, { count: number; ms: number }>();
export function lambdaInvocations(): Record<string, { count: number; ms: number }> {
  return Object.fromEntries([...invocations].map(([id, v]) => [id, { ...v }]));
}

/** The function whose invocation is running (tests attribute SDK calls to functions with it). */
export const currentInvocation = new AsyncLocalStorage<{ functionId: LambdaFunctionId }>();

/**
 * Invokes function `id` as Lambda would. A thrown error becomes an Error whose name is
 * the error's name and whose message is Lambda's JSON cause, as Step Functions sees it.
 */
export async function invokeLocal(id: LambdaFunctionId, event: unknown, timeoutMs = 300_000): Promise<unknown> {
  const handler = await load(id);
  const deadline = Date.now() + timeoutMs;
  const context = { functionName: id, awsRequestId: randomUUID(), getRemainingTimeInMillis: () => deadline - Date.now(), callbackWaitsForEmptyEventLoop: false };
  const started = performance.now();
  try {
    return await currentInvocation.run({ functionId: id }, () => handler(structuredClone(event), context));
  } catch (err) {
    const e = err as Error;
    const failure = new Error(JSON.stringify({ errorType: e.name, errorMessage: e.message }));
    failure.name = e.name && e.name !== 'Error' ? e.name : 'Error';
    throw failure;
  } finally {
    const n = invocations.get(id) ?? { count: 0, ms: 0 };
    invocations.set(id, { count: n.count + 1, ms: n.ms + (performance.now() - started) });
  }
}
