/**
 * The one way a Lambda handler is built: middy with Powertools Logger (Lambda context in
 * every log line), Powertools Metrics (EMF, flushed after each invocation) and the
 * Powertools parser validating the input against a zod schema. A bad input fails with
 * `Function.BadInput` naming the function and every bad field, never reaching the logic.
 *
 * Configuration is the Powertools environment: POWERTOOLS_SERVICE_NAME,
 * POWERTOOLS_METRICS_NAMESPACE, POWERTOOLS_LOG_LEVEL, POWERTOOLS_METRICS_DISABLED (the
 * embedded stack sets the last one; its handlers run in-process).
 */
import { Logger } from '@aws-lambda-powertools/logger';
import { injectLambdaContext } from '@aws-lambda-powertools/logger/middleware';
import { Metrics } from '@aws-lambda-powertools/metrics';
import { logMetrics } from '@aws-lambda-powertools/metrics/middleware';
import { parser } from '@aws-lambda-powertools/parser/middleware';
import middy from '@middy/core';
import type { Context } from 'aws-lambda';
import { z } from 'zod';
import { BadFunctionInput, LifeboatError } from '../../contracts/errors.ts';

let shared: { logger: Logger; metrics: Metrics } | undefined;
/**
 * The container's Logger and Metrics, made at the first invocation, not at import: the
 * embedded stack imports handler modules before it sets the Powertools environment.
 */
export function powertools(): { logger: Logger; metrics: Metrics } {
  if (shared) return shared;
  const serviceName = process.env.POWERTOOLS_SERVICE_NAME ?? 'lifeboat';
  const logger = new Logger({ serviceName });
  // Most functions publish no metric of their own; Metrics would warn about that on every invocation.
  const metricsLog = {
    debug: (...a: unknown[]) => logger.debug(String(a[0]), ...(a.slice(1) as [])),
    info: (...a: unknown[]) => logger.info(String(a[0]), ...(a.slice(1) as [])),
    warn: (...a: unknown[]) => {
      if (!String(a[0]).startsWith('No application metrics to publish')) logger.warn(String(a[0]), ...(a.slice(1) as []));
    },
    error: (...a: unknown[]) => logger.error(String(a[0]), ...(a.slice(1) as [])),
  };
  shared = { logger, metrics: new Metrics({ serviceName, namespace: process.env.POWERTOOLS_METRICS_NAMESPACE ?? 'Lifeboat', logger: metricsLog }) };
  return shared;
}

/** What a handler body gets besides its parsed input. */
export interface HandlerTools {
  logger: Logger;
  metrics: Metrics;
  context: Context;
  /** Aborted a few milliseconds before the function's timeout (middy's timeoutEarly), when the invocation answers `TimeoutError`: long loops stop at it. */
  signal: AbortSignal;
}

type Issue = { message: string; path?: readonly (PropertyKey | { key: PropertyKey })[] };

const pathOf = (path: Issue['path']) =>
  (path ?? [])
    .map((p) => (typeof p === 'object' ? p.key : p))
    .reduce<string>((acc, k) => (typeof k === 'number' ? `${acc}[${k}]` : acc ? `${acc}.${String(k)}` : String(k)), '') || '(the input)';

/** `Function.BadInput` for a failed parse: the function, then one line per bad field. */
export function badInput(functionName: string, error: unknown): BadFunctionInput {
  const cause = (error as Error)?.cause;
  const issues: Issue[] | undefined = error instanceof z.ZodError ? error.issues : Array.isArray(cause) ? (cause as Issue[]) : undefined;
  const detail = issues ? issues.map((i) => `  - ${pathOf(i.path)}: ${i.message}`).join('\n') : `  - ${String((error as Error)?.message ?? error)}`;
  return new BadFunctionInput(`${functionName} received an input that does not match its schema (a workflow/function version mismatch?):\n${detail}`, error);
}

/** A Lambda handler: `(event, context) => Promise<result>`. */
export type LambdaHandler<R> = ((event: unknown, context: Context) => Promise<R>) & { readonly lifeboatFunction: string };

/**
 * Builds a middy handler: `schema` validates the event, `fn` runs with the parsed input.
 * Errors keep their name (Step Functions matches it); unexpected ones are logged. The
 * middy chain is built at the first invocation (see {@link powertools}).
 */
export function lambdaHandler<S extends z.ZodType, R>(
  functionName: string,
  schema: S,
  fn: (input: z.output<S>, tools: HandlerTools) => Promise<R>,
): LambdaHandler<R> {
  let built: ((event: unknown, context: Context) => Promise<R>) | undefined;
  const build = () => {
    const { logger, metrics } = powertools();
    return middy<z.output<S>, R, Error, Context>()
      .use(injectLambdaContext(logger, { resetKeys: true }))
      .use(logMetrics(metrics))
      .use(
        parser({
          schema,
          errorHandler: (error) => {
            throw badInput(functionName, error);
          },
        }),
      )
      .handler(async (input, context, { signal }) => {
        try {
          return await fn(input, { logger, metrics, context, signal });
        } catch (err) {
          // Expected failures (a full slot, a missing policy) are part of the workflow; the rest is a bug or an outage.
          if (!(err instanceof LifeboatError)) logger.error(`${functionName} failed`, err as Error);
          throw err;
        }
      }) as unknown as (event: unknown, context: Context) => Promise<R>;
  };
  return Object.assign((event: unknown, context: Context) => (built ??= build())(event, context), { lifeboatFunction: functionName });
}
