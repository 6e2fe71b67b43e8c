/**
 * Failover plans at the DR site (contracts/dr.ts). FailoverPlan boots the replica VMs
 * themselves; TestFailover boots throwaway copies on overlays in an isolated network and
 * removes them afterwards. Both: PlanFailoverPlan (the plan checked against the inventory
 * and the DR configuration; every VM's replica lease taken, all or none, so no replication
 * merges a restore point beside the run: a busy lease is waited for) → [TestFailover:
 * SweepTestFailovers, the leftovers of earlier runs whose cleanup never ran] → ResolvePoints (a DR
 * mover checks every VM's restore point before anything boots) → BootGroups (Map, one group
 * at a time, in order: BootVms, a Map starting the group's VMs together, each waiting for
 * its readiness → GroupDelay) → [TestFailover: CleanupTestFailover] → ReleaseReplicaLeases
 * (a real failover's replicas are guarded afterwards by their failed-over state) →
 * RecordFailoverPlan (the report: recovery points, ready times, RTO). Any failure runs the
 * cleanup (test: remove what the run made; real: power off the VMs this run started and put
 * their replicas back on their newest point) and gives the leases back before the execution
 * fails with the error. Input: `{ plan, points? }` (failoverPlanRequest).
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { ReplicaBusy } from '../../contracts/recovery-errors.ts';
import { invoke, moverTask, type ReplicationWorkflowProps } from './replicate-workflow.ts';
import { moverStep, retryMoverTask } from './steps.ts';

export class FailoverPlanWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: ReplicationWorkflowProps & { test: boolean }) {
    super(scope, id);
    const plan = invoke(this, 'PlanFailoverPlan', props.functions.PlanFailoverPlan, {
      payload: sfn.TaskInput.fromObject({ 'runId.$': '$$.Execution.Name', test: props.test, 'request.$': '$' }),
    });
    // The plan's VMs' replica leases (taken by PlanFailoverPlan, all or none): a replication that holds one is waited for.
    plan.addRetry({ errors: [ReplicaBusy.code], interval: Duration.seconds(5), backoffRate: 1.5, maxDelay: Duration.minutes(1), maxAttempts: 20 });
    const failed = new sfn.Fail(this, 'Failed', { errorPath: '$.error.Error', causePath: '$.error.Cause' });
    const releaseLeases = (name: string) =>
      invoke(this, name, props.functions.ReleaseReplicaLease, { payload: sfn.TaskInput.fromObject({ 'lease.$': '$.lease' }), resultPath: null });
    // After a failure: the leases go back (a release that fails leaves them to run out by themselves).
    const releaseAfterFailure = releaseLeases('ReleaseReplicaLeasesAfterFailure');
    releaseAfterFailure.addCatch(failed, { resultPath: '$.releaseError' });
    releaseAfterFailure.next(failed);
    // The cleanup of a failed run; if it fails too, the run still fails with the first error (a later cleanup, keyed by the run, finishes it).
    // A cleanup that fails too still gives the leases back (a replication must not wait a day for them), and the run fails with its first error.
    const cleanupAfterFailure = moverStep(this, 'CleanupAfterFailure', {
      activities: props.activities,
      groupPath: '$.moverGroup',
      parameters: { task: 'cleanupFailover', 'run.$': '$.run' },
      timeout: Duration.hours(1),
      resultPath: '$.cleanup',
      decorate: (t) => {
        retryMoverTask(t);
        t.addCatch(releaseAfterFailure, { resultPath: '$.cleanupError' });
      },
    });
    const cleanupChain = sfn.Chain.start(cleanupAfterFailure).next(releaseAfterFailure);
    plan.addCatch(failed, { resultPath: '$.error' });

    const resolve = moverTask(
      this,
      props.activities,
      'ResolvePoints',
      '$.moverGroup',
      { task: 'resolveFailoverPoints', 'run.$': '$.run' },
      { hours: 1, resultPath: '$.points', catchTo: cleanupChain },
    );

    const vms = new sfn.Map(this, 'BootVms', { itemsPath: '$.group.vms', itemSelector: { 'vm.$': '$$.Map.Item.Value' }, resultPath: '$.results' });
    vms.itemProcessor(moverTask(this, props.activities, 'FailoverVm', '$.vm.moverGroup', { task: 'failoverVm', 'vm.$': '$.vm' }, { hours: 2 }));
    const delay = new sfn.Wait(this, 'GroupDelay', { time: sfn.WaitTime.secondsPath('$.group.delaySeconds') });
    const groupDone = new sfn.Pass(this, 'GroupBooted', { parameters: { 'index.$': '$.group.index', 'vms.$': '$.results' } });
    const groups = new sfn.Map(this, 'BootGroups', {
      itemsPath: '$.groups',
      maxConcurrency: 1,
      itemSelector: { 'group.$': '$$.Map.Item.Value' },
      resultPath: '$.booted',
    });
    groups.itemProcessor(sfn.Chain.start(vms).next(delay).next(groupDone));
    groups.addCatch(cleanupChain, { resultPath: '$.error' });

    // A test failover first sweeps what earlier runs left behind (their cleanup never ran); a failed sweep does not stop the drill.
    const sweep = props.test
      ? moverStep(this, 'SweepTestFailovers', {
          activities: props.activities,
          groupPath: '$.moverGroup',
          parameters: { task: 'sweepTestFailovers', 'run.$': '$.run' },
          timeout: Duration.minutes(30),
          resultPath: '$.swept',
          decorate: (t) => {
            retryMoverTask(t);
            t.addCatch(resolve, { resultPath: '$.sweepError' });
          },
        })
      : undefined;
    let chain = (sweep ? sfn.Chain.start(plan).next(sweep) : sfn.Chain.start(plan)).next(resolve).next(groups);
    if (props.test) {
      chain = chain.next(
        moverTask(
          this,
          props.activities,
          'CleanupTestFailover',
          '$.moverGroup',
          { task: 'cleanupFailover', 'run.$': '$.run' },
          { hours: 1, resultPath: '$.cleanedUp', catchTo: cleanupChain },
        ),
      );
    }
    chain = chain.next(releaseLeases('ReleaseReplicaLeases'));
    const record = invoke(this, 'RecordFailoverPlan', props.functions.RecordFailoverPlan, {
      payload: sfn.TaskInput.fromObject({
        'runId.$': '$.runId',
        'plan.$': '$.plan',
        'test.$': '$.test',
        'booted.$': '$.booted',
        ...(props.test ? { 'cleanedUp.$': '$.cleanedUp' } : {}),
      }),
    });
    record.addCatch(props.test ? failed : cleanupChain, { resultPath: '$.error' });
    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: props.test
        ? 'Lifeboat test failover: a failover plan on throwaway overlays over the replica VMs, in an isolated network; the replicas stay untouched; everything made is removed'
        : 'Lifeboat failover plan: boot the replica VMs at the DR site in groups, at the chosen restore points; report recovery points, ready times and the RTO',
      definitionBody: sfn.DefinitionBody.fromChainable(chain.next(record)),
      timeout: Duration.hours(24),
    });
  }
}
