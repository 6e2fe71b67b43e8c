/**
 * The HostConfigBackup workflow: PlanHostConfigBackup (the host the input names, or every
 * libvirt host, each with the key its archive goes to) → per host (Map): BackupHostConfig
 * (the `hostConfig` activity on the host's mover group: networks, pools and domain
 * definitions dumped with virsh, sealed into the repository) → RecordHostConfig (the
 * archive into the catalog; the host's archives beyond `keep` deleted) → HostConfigBackedUp;
 * a host that fails (an unreachable URI, no mover answering) becomes HostConfigFailed and
 * the other hosts go on → SummarizeHostConfigBackup.
 *
 * Input: `{ hostId? }`. Output: per host its archive (key, counts, SHA-256, retention) or
 * its error, `succeeded` and `failedHosts`.
 */
import { Duration } from 'aws-cdk-lib';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import { StorageUnavailable, TaskStalled } from '../../contracts/errors.ts';
import type { LambdaFunctionId } from '../../contracts/functions.ts';
import { lambdaStep, moverStep, retryAnyError } from './steps.ts';

export interface HostConfigBackupWorkflowProps {
  functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Activities of the mover groups that serve hosts, by group id: a host's backup runs on its group. */
  activities: Record<string, sfn.IActivity>;
  /** Hosts backed up at once (default 4). */
  hostConcurrency?: number;
}

export class HostConfigBackupWorkflow extends Construct {
  readonly stateMachine: sfn.StateMachine;

  constructor(scope: Construct, id: string, props: HostConfigBackupWorkflowProps) {
    super(scope, id);
    const fn = props.functions;
    // The Lambda service's transient errors are retried by every LambdaInvoke (aws-cdk-lib's default Retry).
    const plan = lambdaStep(this, 'PlanHostConfigBackup', fn.PlanHostConfigBackup, { resultPath: '$.plan' });

    const hosts = new sfn.Map(this, 'BackUpHosts', {
      itemsPath: '$.plan.hosts',
      itemSelector: { 'job.$': '$$.Map.Item.Value', 'runId.$': '$$.Execution.Name' },
      maxConcurrency: props.hostConcurrency ?? 4,
      resultPath: '$.hosts',
    });
    hosts.itemProcessor(this.perHost(props));

    const summarize = lambdaStep(this, 'SummarizeHostConfigBackup', fn.SummarizeHostConfigBackup, {
      payload: sfn.TaskInput.fromObject({ 'runId.$': '$$.Execution.Name', 'hosts.$': '$.hosts' }),
    });
    retryAnyError(summarize);

    this.stateMachine = new sfn.StateMachine(this, 'StateMachine', {
      comment:
        "Lifeboat host configuration backup: each libvirt host's networks, storage pools and domain definitions, sealed into the repository; the newest N per host kept",
      definitionBody: sfn.DefinitionBody.fromChainable(plan.next(hosts).next(summarize)),
      timeout: Duration.hours(2),
    });
  }

  /** One host: the dump on its mover group, then its record; any failure reports the host. */
  private perHost(props: HostConfigBackupWorkflowProps): sfn.IChainable {
    const failed = new sfn.Pass(this, 'HostConfigFailed', { parameters: { 'hostId.$': '$.job.hostId', 'error.$': '$.error' } });
    const dump = moverStep(this, 'BackupHostConfig', {
      activities: props.activities,
      groupPath: '$.job.moverGroup',
      parameters: {
        task: 'hostConfig',
        'hostId.$': '$.job.hostId',
        'hypervisor.$': '$.job.hypervisor',
        'repository.$': '$.job.repository',
        'backupId.$': '$.job.backupId',
        'objectKey.$': '$.job.objectKey',
      },
      timeout: Duration.minutes(15),
      heartbeat: Duration.minutes(2),
      resultPath: '$.result',
      decorate: (t) => {
        // A mover that died is replaced by another of the group, storage that failed is tried again;
        // an unreachable host is reported (the next scheduled run tries again).
        t.addRetry({ errors: ['States.Timeout', StorageUnavailable.code, TaskStalled.code], interval: Duration.seconds(5), backoffRate: 2, maxAttempts: 2 });
        t.addCatch(failed, { resultPath: '$.error' });
      },
    });
    const record = lambdaStep(this, 'RecordHostConfig', props.functions.RecordHostConfig, {
      payload: sfn.TaskInput.fromObject({ 'runId.$': '$.runId', 'job.$': '$.job', 'result.$': '$.result' }),
      resultPath: '$.outcome',
    });
    record.addRetry({ errors: ['States.Timeout', StorageUnavailable.code], interval: Duration.seconds(2), backoffRate: 2, maxAttempts: 3 });
    record.addCatch(failed, { resultPath: '$.error' });
    return dump.next(record).next(new sfn.Pass(this, 'HostConfigBackedUp', { outputPath: '$.outcome' }));
  }
}
