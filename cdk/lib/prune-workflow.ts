/**
 * The Prune workflow: PlanPrune (GFS retention per VM, with a reason per backup) → a dry
 * run ends there with the list; otherwise PruneBackups (Map: PruneBackup per expired
 * backup: catalog `pruning`, manifests deleted, catalog record removed) → RecordPrune.
 *
 * Input: `{ policyId, dryRun?, timeZone? }`. Chunks are freed by garbage collection.
 */
import { Duration } from 'aws-cdk-lib';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import { Construct } from 'constructs';
import { StorageUnavailable } from '../../contracts/errors.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { recordFailureThenFail } from './recovery-failure.ts';
import { lambdaStep, retryAnyError } from './steps.ts';

export interface PruneWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
}

export class PruneWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: PruneWorkflowProps) {
    super(scope, id);
    const invoke = (name: string, f: LambdaFunctionId, payload?: sfn.TaskInput) => lambdaStep(this, name, props.functions[f], payload ? { payload } : {});

    const plan = invoke('PlanPrune', 'PlanPrune', sfn.TaskInput.fromObject({ 'pruneId.$': '$$.Execution.Name', 'request.$': '$' }));

    const pruneOne = invoke('PruneBackup', 'PruneBackup');
    pruneOne.addRetry({ errors: [StorageUnavailable.code, 'Lambda.TooManyRequestsException', 'Lambda.ServiceException'], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 4 });
    const pruneAll = new sfn.Map(this, 'PruneBackups', { itemsPath: '$.remove', maxConcurrency: 4, resultPath: '$.pruned' });
    pruneAll.itemProcessor(pruneOne);
    pruneAll.addCatch(recordFailureThenFail(this, props.functions.RecordRecoveryFailure, 'PRUNE'), { resultPath: '$.error' });

    const record = invoke('RecordPrune', 'RecordPrune');
    retryAnyError(record);

    const dryRun = new sfn.Choice(this, 'DryRun')
      .when(sfn.Condition.booleanEquals('$.dryRun', true), new sfn.Succeed(this, 'DryRunListed', { comment: 'the output lists what would go and why' }))
      .otherwise(pruneAll.next(record));

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment: 'Lifeboat prune: apply a policy\'s GFS retention; remove expired backups from the catalog and their manifests from the repository',
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(dryRun)),
      timeout: Duration.hours(6),
    });
  }
}
