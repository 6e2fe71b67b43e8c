/**
 * The Prune workflow: PlanPrune (GFS retention per VM, with a reason per backup; the plan
 * and the list of backups to remove written to the stack's bucket, `runs/prune/`) → a dry
 * run ends there, its output naming the plan; otherwise PruneBackups (a Distributed Map
 * reading the list: one child execution per expired backup running PruneBackup: catalog
 * `pruning`, manifests deleted, catalog record removed; results written to the bucket) →
 * RecordPrune (sums the results from the Map Run's result files). No payload or history
 * grows with the number of VMs or backups.
 *
 * Input: `{ policyId, dryRun?, timeZone? }`. Chunks are freed by garbage collection.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';
import { StorageUnavailable } from '../../contracts/errors.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { recordFailureThenFail } from './recovery-failure.ts';
import { lambdaStep, retryAnyError } from './steps.ts';
import { acknowledgeListMap, listMap, useResultWriterV2 } from './distributed-map.ts';

export interface PruneWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** The stack's own bucket: PlanPrune writes the prune's plan and list under `runs/prune/`, the Map reads the list and writes its results there. */
  runBucket: s3.IBucket;
}

export class PruneWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: PruneWorkflowProps) {
    super(scope, id);
    useResultWriterV2(this);
    const invoke = (name: string, f: LambdaFunctionId, payload?: sfn.TaskInput) => lambdaStep(this, name, props.functions[f], payload ? { payload } : {});

    const plan = invoke('PlanPrune', 'PlanPrune', sfn.TaskInput.fromObject({ 'pruneId.$': '$$.Execution.Name', 'request.$': '$' }));

    const pruneOne = invoke('PruneBackup', 'PruneBackup');
    pruneOne.addRetry({
      errors: [StorageUnavailable.code, 'Lambda.TooManyRequestsException', 'Lambda.ServiceException'],
      interval: Duration.seconds(2),
      backoffRate: 2,
      maxAttempts: 4,
    });
    const pruneAll = listMap(this, 'PruneBackups', {
      comment: 'One child execution per expired backup, read from the list PlanPrune wrote',
      runBucket: props.runBucket,
      keyPath: '$.removeList.key',
      label: 'PruneBackup',
      maxConcurrency: 8,
      resultPath: '$.pruned',
    });
    pruneAll.itemProcessor(pruneOne);
    pruneAll.addCatch(recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'PRUNE'), { resultPath: '$.error' });

    const record = invoke('RecordPrune', 'RecordPrune');
    retryAnyError(record);

    const dryRun = new sfn.Choice(this, 'DryRun')
      .when(sfn.Condition.booleanEquals('$.dryRun', true), new sfn.Succeed(this, 'DryRunListed', { comment: 'the output lists what would go and why' }))
      .otherwise(pruneAll.next(record));

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: "Lifeboat prune: apply a policy's GFS retention; remove expired backups from the catalog and their manifests from the repository",
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(dryRun)),
      timeout: Duration.hours(6),
    });
    acknowledgeListMap(this.stateMachine, props.runBucket, 'PruneBackup');
  }
}
