/**
 * The Discover workflow's functions: ListDiscoveryHosts, RecordInventory (one page of a
 * host's VMs into the catalog; after the last, the VMs no longer there marked gone) and
 * SummarizeDiscovery (the execution's output and its metrics). Logic in discovery/inventory.ts.
 */
import { MetricUnit } from '@aws-lambda-powertools/metrics';
import { z } from 'zod';
import { discoverPage } from '../../contracts/discovery.ts';
import { fromEnvironment, type Clients } from '../commons/clients.ts';
import { lambdaHandler } from '../commons/lambda.ts';
import { discoveryMetrics } from '../../contracts/metric-names.ts';
import { caughtError } from '../../contracts/errors.ts';
import { listDiscoveryHosts, recordInventory, summarizeDiscovery } from './inventory.ts';

const text = z.string().min(1);
const count = z.number().int().nonnegative();

export const listDiscoveryHostsInput = z.looseObject({ hostId: text.optional() });

const hostInventory = z.looseObject({
  hostId: text,
  found: count,
  new: count,
  returned: count,
  manual: count,
  gone: count,
  stillGone: count,
  next: z.string().nullable(),
});

export const recordInventoryInput = z.looseObject({
  discoveryId: text,
  startedAt: z.string().refine((s) => !Number.isNaN(Date.parse(s)), 'must be a timestamp'),
  hostId: text,
  page: discoverPage,
  totals: hostInventory.nullable().optional(),
});

export const summarizeDiscoveryInput = z.looseObject({
  discoveryId: text,
  hosts: z.array(z.union([z.looseObject({ hostId: text, error: caughtError }), hostInventory])),
  /** Per DR site, what the sweep of test failover leftovers removed, or its error (passed through to the output). */
  sweeps: z.array(z.looseObject({ moverGroup: text })).optional(),
});

/** This module's Lambda handlers, built from the clients they use (the embedded stack passes its own: local/lambdas.ts). */
export function makeHandlers(c: Clients) {
  return {
    listHostsHandler: lambdaHandler('ListDiscoveryHosts', listDiscoveryHostsInput, (input) => listDiscoveryHosts(input, { catalog: c.catalog })),
    recordHandler: lambdaHandler('RecordInventory', recordInventoryInput, (input) => recordInventory(input, { catalog: c.catalog, now: () => new Date() })),
    summarizeHandler: lambdaHandler('SummarizeDiscovery', summarizeDiscoveryInput, async (input, { metrics }) => {
      const summary = summarizeDiscovery(input);
      metrics.addMetric(discoveryMetrics.hostsFailed, MetricUnit.Count, summary.failedHosts.length);
      metrics.addMetric(discoveryMetrics.vmsGone, MetricUnit.Count, summary.gone);
      return { ...summary, sweeps: input.sweeps ?? [] };
    }),
  };
}

/** The Lambda entry: the handlers with clients built from the environment, once per container. */
export const { listHostsHandler, recordHandler, summarizeHandler } = fromEnvironment(makeHandlers);
