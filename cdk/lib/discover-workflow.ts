/**
 * The Discover workflow: ListDiscoveryHosts (the host the input names, or every libvirt
 * host) → per host (Map): DiscoverHost (the `discover` activity on the host's mover group:
 * one page of its domains) → RecordInventory (the page into the catalog) → MorePages? back
 * to DiscoverHost → HostDiscovered; a host that fails (an unreachable URI, no mover
 * answering) becomes HostFailed and the other hosts go on → ListDrSites → per DR site
 * (Map): SweepDrSite (the `sweepTestFailovers` activity on the DR mover group, over every
 * libvirt host it serves: the leftovers of test failovers whose cleanup never ran) →
 * SummarizeDiscovery.
 *
 * Input: `{ hostId? }`. Output: per host its counts (found, new, returned, gone, ...) or
 * its error, totals and `failedHosts`; `sweeps`: per DR site what was swept, or its error.
 * Pages keep each task result under Step Functions' 256 KiB (contracts/discovery.ts), so a
 * host of any size fits.
 */
import { Duration } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { lambdaStep, moverStep, retryAnyError } from './steps.ts';

export interface DiscoverWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Activities of the mover groups that serve hosts, by group id: a host's discovery runs on its group. */
  activities: Record<string, sfn.IActivity>;
  /** Hosts inventoried at once (default 4). */
  hostConcurrency?: number;
  /** Activities of every mover group by id: the DR groups' sweeps of test failover leftovers run on them (default: `activities`). */
  drActivities?: Record<string, sfn.IActivity>;
}

export class DiscoverWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: DiscoverWorkflowProps) {
    super(scope, id);
    const fn = props.functions;
    // The Lambda service's transient errors are retried by every LambdaInvoke (aws-cdk-lib's default Retry).
    const listHosts = lambdaStep(this, 'ListDiscoveryHosts', fn.ListDiscoveryHosts, { resultPath: '$.list' });

    const discoverHosts = new sfn.Map(this, 'DiscoverHosts', {
      itemsPath: '$.list.hosts',
      itemSelector: { 'host.$': '$$.Map.Item.Value', 'discoveryId.$': '$$.Execution.Name', 'startedAt.$': '$$.Execution.StartTime' },
      maxConcurrency: props.hostConcurrency ?? 4,
      resultPath: '$.hosts',
    });
    discoverHosts.itemProcessor(this.perHost(props));

    const summarize = lambdaStep(this, 'SummarizeDiscovery', fn.SummarizeDiscovery, {
      payload: sfn.TaskInput.fromObject({ 'discoveryId.$': '$$.Execution.Name', 'hosts.$': '$.hosts', 'sweeps.$': '$.sweeps' }),
    });
    retryAnyError(summarize);

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment:
        "Lifeboat discovery: inventory the libvirt hosts' domains into the catalog; VMs no longer there are marked gone; the DR sites' test failover leftovers swept",
      definitionBody: sfn.DefinitionBody.fromChainable(listHosts.next(discoverHosts).next(this.sweepDrSites(props, summarize))),
      timeout: Duration.hours(2),
    });
  }

  /**
   * ListDrSites → SweepDrSites (Map, per DR site: `sweepTestFailovers` on its mover group,
   * over every libvirt host the group serves) → `next`. A site that fails is reported in
   * `sweeps` and the others go on; a failed listing sweeps nothing (the next hour tries again).
   */
  private sweepDrSites(props: DiscoverWorkflowProps, next: sfn.IChainable): sfn.IChainable {
    const noSweeps = new sfn.Pass(this, 'NoDrSweeps', { result: sfn.Result.fromArray([]), resultPath: '$.sweeps' }).next(next);
    const list = lambdaStep(this, 'ListDrSites', props.functions.ListDrSites, {
      payload: sfn.TaskInput.fromObject({ 'runId.$': '$$.Execution.Name' }),
      resultPath: '$.drSites',
    });
    list.addCatch(noSweeps, { resultPath: '$.drSitesError' });
    const failed = new sfn.Pass(this, 'DrSiteSweepFailed', { parameters: { 'moverGroup.$': '$.site.moverGroup', 'error.$': '$.error' } });
    const sweep = moverStep(this, 'SweepDrSite', {
      activities: props.drActivities ?? props.activities,
      groupPath: '$.site.moverGroup',
      parameters: { task: 'sweepTestFailovers', 'run.$': '$.site.run', 'uris.$': '$.site.uris' },
      timeout: Duration.minutes(30),
      resultPath: '$.swept',
      decorate: (t) => {
        t.addRetry({ errors: ['States.Timeout'], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 2 });
        t.addCatch(failed, { resultPath: '$.error' });
      },
    });
    const swept = new sfn.Pass(this, 'DrSiteSwept', { parameters: { 'moverGroup.$': '$.site.moverGroup', 'swept.$': '$.swept' } });
    const sites = new sfn.Map(this, 'SweepDrSites', {
      itemsPath: '$.drSites.sites',
      itemSelector: { 'site.$': '$$.Map.Item.Value' },
      maxConcurrency: 4,
      resultPath: '$.sweeps',
    });
    sites.itemProcessor(sfn.Chain.start(sweep).next(swept));
    return list.next(sites.next(next));
  }

  /** One host: pages of its domains from its mover group, each recorded, until the last; any failure reports the host. */
  private perHost(props: DiscoverWorkflowProps): sfn.IChainable {
    const hostFailed = new sfn.Pass(this, 'HostFailed', { parameters: { 'hostId.$': '$.host.hostId', 'error.$': '$.error' } });
    // The first page starts after '' (before every name): Parameters cannot hold a null.
    const start = new sfn.Pass(this, 'StartHost', {
      parameters: { 'hostId.$': '$.host.hostId', found: 0, new: 0, returned: 0, manual: 0, gone: 0, stillGone: 0, next: '' },
      resultPath: '$.inventory',
    });
    const discover = moverStep(this, 'DiscoverHost', {
      activities: props.activities,
      groupPath: '$.host.moverGroup',
      parameters: { task: 'discover', 'hostId.$': '$.host.hostId', 'hypervisor.$': '$.host.hypervisor', 'after.$': '$.inventory.next' },
      timeout: Duration.minutes(15),
      heartbeat: Duration.minutes(2),
      resultPath: '$.page',
      decorate: (t) => {
        // A mover that died is replaced by another of the group; an unreachable host is reported (the next discovery tries again).
        t.addRetry({ errors: ['States.Timeout'], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 2 });
        t.addCatch(hostFailed, { resultPath: '$.error' });
      },
    });
    const record = lambdaStep(this, 'RecordInventory', props.functions.RecordInventory, {
      payload: sfn.TaskInput.fromObject({
        'discoveryId.$': '$.discoveryId',
        'startedAt.$': '$.startedAt',
        'hostId.$': '$.host.hostId',
        'page.$': '$.page',
        'totals.$': '$.inventory',
      }),
      resultPath: '$.inventory',
    });
    record.addRetry({ errors: ['States.Timeout'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });
    record.addCatch(hostFailed, { resultPath: '$.error' });
    const morePages = new sfn.Choice(this, 'MorePages', { comment: 'The mover stopped at a page boundary: the next page starts after inventory.next' })
      .when(sfn.Condition.isString('$.inventory.next'), discover)
      .otherwise(new sfn.Pass(this, 'HostDiscovered', { outputPath: '$.inventory' }));
    return start.next(discover).next(record).next(morePages);
  }
}
