/**
 * Alarms, notifications and the dashboard of the control plane.
 *
 * - **Workflow failed**: per state machine, `ExecutionsFailed + ExecutionsTimedOut` ≥ 1.
 *   (The Backup workflow catches a VM's failure so the others go on; those show up as
 *   `VmsFailed` below, not as a failed execution.)
 * - **VMs failed**: per policy, Summarize's `VmsFailed` ≥ 1.
 * - **Past RPO**: per policy, Summarize's `OldestRecoveryPointAgeHours` (the oldest newest
 *   recovery point among the policy's VMs) above the policy's `rpoHours`; and **no report**:
 *   no Summarize datapoint for `rpoHours` (the schedule stopped, or runs die before
 *   Summarize), which the age alone could not show.
 * - **Mover group not polling** (in the group's site stack, `moverGroupNotPollingAlarm`): per Activity, tasks were scheduled in a 15-minute window
 *   and none started. A live mover long-polls and takes a task within seconds when it has
 *   a free slot, so this means no mover is polling (down, no network, bad credentials) or
 *   every slot is busy for that long (add movers). `ActivityScheduleTime` is not used: it
 *   is only emitted when a task starts, so it stays silent exactly when no mover polls.
 * - **Schedule dead letters**: a scheduled start that Scheduler could not deliver.
 * - **DR past RPO**: per replicating policy, ReportReplication's `DrRecoveryPointAgeHours`
 *   (the oldest newest verified DR copy among the policy's VMs) above the policy's
 *   `drRpoHours` (default twice `rpoHours`). It is published after every Backup run and
 *   every ReplicatePolicy, so it keeps coming while replication fails; a run that stops
 *   coming is the no-report alarm's.
 * - **Replication not started**: per replicating policy, a Backup run committed backups but
 *   could not start their replication (`ReplicationStartFailed` ≥ 1; the run itself succeeds).
 * - **Restore test failed**: RecordRestoreTest's `RestoreTestsFailed` ≥ 1 (a deep
 *   verification's restore test showed no sign of life, or could not run to its end; the
 *   verification itself succeeds). The event `Lifeboat Restore Test Failed` names the test.
 * - **Host configuration backup failed**: SummarizeHostConfigBackup's
 *   `HostConfigBackupHostsFailed` ≥ 1 (the execution succeeds with the other hosts).
 * - **Backup damaged**: an EventBridge rule sends each `Lifeboat Backup Damaged` event
 *   (DeepVerify found damage; the execution itself succeeds) to the topic, its message
 *   naming the backup, the first damaged object and why.
 */
import * as events from 'aws-cdk-lib/aws-events';
import * as eventTargets from 'aws-cdk-lib/aws-events-targets';
import { BACKUP_DAMAGED_EVENT } from './deep-verify-workflow.ts';
import { Duration, Stack } from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as actions from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kms from 'aws-cdk-lib/aws-kms';
import type * as lambda from 'aws-cdk-lib/aws-lambda';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as subs from 'aws-cdk-lib/aws-sns-subscriptions';
import type * as sqs from 'aws-cdk-lib/aws-sqs';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import type { LifeboatConfig } from '../../core/config.ts';
import { drRpoHoursOf } from '../../core/config.ts';
import { hostConfigMetrics, replicationMetrics, restoreTestMetrics, summaryMetrics } from '../../contracts/metric-names.ts';
import { observeStateMachine, stateMachinesIn } from './observability.ts';

export interface MonitoringProps {
  config: LifeboatConfig;
  /** Powertools metrics namespace and service name the functions publish under. */
  metricsNamespace: string;
  serviceName: string;
  functions: Record<string, lambda.IFunction>;
  deadLetterQueue?: sqs.IQueue;
}

/** CloudWatch keeps an alarm's evaluation range within 7 days. */
const MAX_EVALUATION_HOURS = 7 * 24;

/** One line per mover group of `stackName` (activities `<stackName>-mover-<group>`): a metric SEARCH over their ActivityArn. */
function moverGroupsSearch(stackName: string, metricName: string, statistic: string): cloudwatch.SearchExpression {
  // A quoted term matches the ARN's tokens in sequence (`<stack>-mover`), not a substring of another stack's name.
  return new cloudwatch.SearchExpression({
    expression: `SEARCH('{AWS/States,ActivityArn} MetricName="${metricName}" ActivityArn="${stackName}-mover"', '${statistic}', 300)`,
    label: metricName,
    period: Duration.minutes(5),
  });
}

/**
 * A mover group's "not polling" alarm, in the stack of the group's site: tasks were scheduled
 * in a 15-minute window and none started (see this file's header).
 */
export function moverGroupNotPollingAlarm(scope: Construct, g: string, activity: sfn.Activity, topic: sns.ITopic): cloudwatch.Alarm {
  const waiting = new cloudwatch.MathExpression({
    expression: 'IF(FILL(scheduled, 0) > 0 AND FILL(started, 0) == 0, 1, 0)',
    usingMetrics: { scheduled: activity.metricScheduled({ statistic: 'Sum' }), started: activity.metricStarted({ statistic: 'Sum' }) },
    period: Duration.minutes(15),
    label: `${g}: tasks scheduled, none started`,
  });
  const alarm = new cloudwatch.Alarm(scope, `MoverGroupNotPolling-${g}`, {
    alarmDescription: `Tasks for mover group '${g}' waited 15 minutes and no mover took one: its movers are down, cannot reach Step Functions, or every task slot is busy. Check 'systemctl status lifeboat-mover' on the group's appliances.`,
    metric: waiting,
    threshold: 1,
    evaluationPeriods: 1,
    comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
  });
  alarm.addAlarmAction(new actions.SnsAction(topic));
  return alarm;
}

export class Monitoring extends Construct {
  readonly topic: sns.Topic;
  readonly dashboard: cloudwatch.Dashboard;
  readonly alarms: Record<string, cloudwatch.Alarm> = {};
  private readonly props: MonitoringProps;

  constructor(scope: Construct, id: string, props: MonitoringProps) {
    super(scope, id);
    this.props = props;
    const stack = Stack.of(this);

    const key = new kms.Key(this, 'TopicKey', { description: 'Lifeboat alarm notifications (SNS encryption)', enableKeyRotation: true });
    key.addToResourcePolicy(
      new iam.PolicyStatement({
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
        resources: ['*'], // in a key policy, "*" is this key
        conditions: { StringEquals: { 'aws:SourceAccount': stack.account } },
      }),
    );
    this.topic = new sns.Topic(this, 'Alarms', { displayName: 'Lifeboat alarms', masterKey: key, enforceSSL: true });
    for (const email of props.config.notifications?.emails ?? []) this.topic.addSubscription(new subs.EmailSubscription(email));
    // Damage a deep verification found is an event, not a metric: a rule sends it to the topic as it is put.
    key.addToResourcePolicy(
      new iam.PolicyStatement({
        actions: ['kms:Decrypt', 'kms:GenerateDataKey*'],
        principals: [new iam.ServicePrincipal('events.amazonaws.com')],
        resources: ['*'],
        conditions: { StringEquals: { 'aws:SourceAccount': stack.account } },
      }),
    );
    new events.Rule(this, 'BackupDamaged', {
      description: 'Lifeboat: a deep verification found a backup damaged; notify the alarm topic',
      eventPattern: { source: [BACKUP_DAMAGED_EVENT.source], detailType: [BACKUP_DAMAGED_EVENT.detailType] },
      targets: [new eventTargets.SnsTopic(this.topic, { message: events.RuleTargetInput.fromEventPath('$.detail.message') })],
    });
    const action = new actions.SnsAction(this.topic);
    const alarm = (name: string, a: cloudwatch.AlarmProps) => {
      const created = new cloudwatch.Alarm(this, name, a);
      created.addAlarmAction(action);
      this.alarms[name] = created;
      return created;
    };
    /** An alarm that fires when the metric's sum in a period is at least one (a count of failures); no data is OK. */
    const alarmOnAny = (name: string, metric: cloudwatch.IMetric, alarmDescription: string) =>
      alarm(name, {
        alarmDescription,
        metric,
        threshold: 1,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });

    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', { dashboardName: `${stack.stackName}-control-plane` });

    // --- workflows -----------------------------------------------------------------
    const machines = stateMachinesIn(stack);
    const covered = new Set(machines);
    const workflowWidgets: cloudwatch.IWidget[] = [];
    for (const sm of machines) {
      observeStateMachine(this, sm);
      const name = sm.node.scope?.node.id ?? sm.node.id;
      const failed = new cloudwatch.MathExpression({
        expression: 'FILL(failed, 0) + FILL(timedOut, 0)',
        usingMetrics: { failed: sm.metricFailed({ statistic: 'Sum' }), timedOut: sm.metricTimedOut({ statistic: 'Sum' }) },
        period: Duration.minutes(5),
        label: `${name} failed or timed out`,
      });
      alarmOnAny(
        `WorkflowFailed-${name}`,
        failed,
        `A ${name} execution failed or timed out. Open the execution in the Step Functions console: the failed state and its error name say what went wrong.`,
      );
      workflowWidgets.push(
        new cloudwatch.GraphWidget({
          title: `${name} executions`,
          width: 8,
          left: [
            sm.metricStarted({ statistic: 'Sum' }),
            sm.metricSucceeded({ statistic: 'Sum' }),
            sm.metricFailed({ statistic: 'Sum' }),
            sm.metricTimedOut({ statistic: 'Sum' }),
          ],
        }),
      );
    }
    // A state machine created after this construct would be neither logged nor alarmed.
    this.node.addValidation({
      validate: () =>
        stateMachinesIn(stack)
          .filter((sm) => !covered.has(sm))
          .map(
            (sm) =>
              `state machine ${sm.node.path} was created after ${this.node.path}: create every workflow before Monitoring in lifeboat-stack.ts, so it gets logs, X-Ray and alarms`,
          ),
    });

    // --- policies: failed VMs and RPO ---------------------------------------------------
    const policyWidgets: cloudwatch.IWidget[] = [];
    for (const p of props.config.policies) {
      const age = this.policyMetric(summaryMetrics.oldestRecoveryPointAgeHours, p.id, 'Maximum', Duration.hours(1));
      alarm(`PastRpo-${p.id}`, {
        alarmDescription: `A VM of policy '${p.id}' has no recovery point newer than ${p.rpoHours} h (its RPO). Check the policy's last Backup executions and the catalog's failed backups.`,
        metric: age,
        threshold: p.rpoHours,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      const hours = Math.min(Math.ceil(p.rpoHours), MAX_EVALUATION_HOURS);
      alarm(`NoBackupReport-${p.id}`, {
        alarmDescription: `No Backup run of policy '${p.id}' finished in ${hours} h, so no VM of it can be shown within its ${p.rpoHours} h RPO. Check its schedule, the schedules' dead-letter queue and failed Backup executions.`,
        metric: this.policyMetric(summaryMetrics.oldestRecoveryPointAgeHours, p.id, 'SampleCount', Duration.hours(1)),
        threshold: 1,
        evaluationPeriods: hours,
        datapointsToAlarm: hours,
        comparisonOperator: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.BREACHING,
      });
      const vmsFailed = this.policyMetric(summaryMetrics.vmsFailed, p.id, 'Sum', Duration.minutes(5));
      alarmOnAny(
        `VmsFailed-${p.id}`,
        vmsFailed,
        `A Backup run of policy '${p.id}' could not back up some VMs. The run record in the catalog and the execution's RecordFailure steps name each VM and its error.`,
      );
      policyWidgets.push(
        new cloudwatch.GraphWidget({
          title: `Policy ${p.id}: recovery point age (h), RPO ${p.rpoHours} h`,
          width: 8,
          left: [age],
          leftAnnotations: [{ value: p.rpoHours, label: 'RPO', color: cloudwatch.Color.RED }],
          right: [
            this.policyMetric(summaryMetrics.vmsCommitted, p.id, 'Sum', Duration.hours(1)),
            this.policyMetric(summaryMetrics.vmsFailed, p.id, 'Sum', Duration.hours(1)),
          ],
        }),
      );
      if (p.replicateTo !== undefined) policyWidgets.push(this.drMonitoring(p.id, p.replicateTo, drRpoHoursOf(p), alarm));
    }

    // --- restore tests and host configuration backups (dimension service only) ----------
    const restoreTestsFailed = this.serviceMetric(restoreTestMetrics.failed, 'Sum', Duration.minutes(5));
    alarmOnAny(
      'RestoreTestFailed',
      restoreTestsFailed,
      "A restore test of a deep verification failed: the test VM showed no sign of life in time, or the test could not run to its end. The EventBridge event 'Lifeboat Restore Test Failed' and the verification's output (restoreTest.reason) name the VM, the backup and the reason.",
    );
    const hostConfigHostsFailed = this.serviceMetric(hostConfigMetrics.hostsFailed, 'Sum', Duration.minutes(5));
    alarmOnAny(
      'HostConfigBackupHostsFailed',
      hostConfigHostsFailed,
      'A HostConfigBackup execution could not back up the configuration of some hosts. Its output (failedHosts) names each host and its error; an unreachable host is tried again at the next run.',
    );
    const checkWidgets: cloudwatch.IWidget[] = [
      new cloudwatch.GraphWidget({
        title: 'Restore tests and host configuration backups',
        width: 8,
        left: [
          this.serviceMetric(restoreTestMetrics.passed, 'Sum', Duration.hours(1)),
          this.serviceMetric(restoreTestMetrics.failed, 'Sum', Duration.hours(1)),
        ],
        right: [this.serviceMetric(hostConfigMetrics.hostsFailed, 'Sum', Duration.hours(1))],
      }),
    ];

    // --- mover groups --------------------------------------------------------------------
    // Each group's "not polling" alarm lives in its site's stack (mover-site-stack.ts). The
    // dashboard shows every group of this stack in a few widgets, one line per group found by
    // a metric SEARCH over the activities named `<stack>-mover-<group>`: its body stays the
    // same size whatever the number of groups.
    const moverWidgets = [
      { title: 'Mover groups: activity tasks scheduled and started', metrics: ['ActivitiesScheduled', 'ActivitiesStarted'], stat: 'Sum' },
      {
        title: 'Mover groups: activity tasks failed and timed out',
        metrics: ['ActivitiesFailed', 'ActivitiesTimedOut', 'ActivitiesHeartbeatTimedOut'],
        stat: 'Sum',
      },
      { title: 'Mover groups: longest wait for a mover (ms)', metrics: ['ActivityScheduleTime'], stat: 'Maximum' },
    ].map(
      (w) =>
        new cloudwatch.GraphWidget({
          title: w.title,
          width: 8,
          left: w.metrics.map((m) => moverGroupsSearch(stack.stackName, m, w.stat)),
        }),
    );

    if (props.deadLetterQueue) {
      alarm('ScheduleDeadLetters', {
        alarmDescription: "A scheduled backup could not be started (see the message in the schedules' dead-letter queue for the error).",
        metric: props.deadLetterQueue.metricApproximateNumberOfMessagesVisible({ statistic: 'Maximum', period: Duration.minutes(5) }),
        threshold: 1,
        evaluationPeriods: 1,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
    }

    const fnWidgets = Object.entries(props.functions).map(
      ([fid, f]) =>
        new cloudwatch.GraphWidget({
          title: `λ ${fid}`,
          width: 6,
          left: [f.metricErrors({ statistic: 'Sum' }), f.metricThrottles({ statistic: 'Sum' })],
          right: [f.metricDuration({ statistic: 'p95' })],
        }),
    );

    this.dashboard.addWidgets(
      new cloudwatch.TextWidget({
        markdown: `# Lifeboat ${stack.stackName}\nWorkflows, policies (RPO), restore tests and host configuration backups, mover groups, functions. Alarms notify the SNS topic ${'`'}Alarms${'`'}.`,
        width: 24,
        height: 2,
      }),
    );
    this.dashboard.addWidgets(new cloudwatch.AlarmStatusWidget({ title: 'Alarms', alarms: Object.values(this.alarms), width: 24 }));
    for (const widgets of [workflowWidgets, policyWidgets, checkWidgets, moverWidgets, fnWidgets]) if (widgets.length) this.dashboard.addWidgets(...widgets);
  }

  /** The DR alarms of a replicating policy (DR recovery point past its RPO, replication not started) and its dashboard widget. */
  private drMonitoring(
    policyId: string,
    dr: string,
    drRpoHours: number,
    alarm: (name: string, a: cloudwatch.AlarmProps) => cloudwatch.Alarm,
  ): cloudwatch.IWidget {
    const drAge = this.policyMetric(replicationMetrics.drRecoveryPointAgeHours, policyId, 'Maximum', Duration.hours(1));
    alarm(`DrPastRpo-${policyId}`, {
      alarmDescription: `A VM of policy '${policyId}' has no verified copy in DR repository '${dr}' newer than ${drRpoHours} h (its DR RPO). Check the policy's ReplicatePolicy executions, the DR mover group and the DR endpoint.`,
      metric: drAge,
      threshold: drRpoHours,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    const notStarted = this.policyMetric(replicationMetrics.replicationStartFailed, policyId, 'Sum', Duration.hours(1));
    alarm(`ReplicationNotStarted-${policyId}`, {
      alarmDescription: `A Backup run of policy '${policyId}' committed backups but could not start their replication to '${dr}' (the run's output 'replication.error' says why). Start ReplicatePolicy by hand once fixed.`,
      metric: notStarted,
      threshold: 1,
      evaluationPeriods: 1,
      comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
      treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
    });
    return new cloudwatch.GraphWidget({
      title: `Policy ${policyId}: DR recovery point age (h) in '${dr}', DR RPO ${drRpoHours} h`,
      width: 8,
      left: [drAge],
      leftAnnotations: [{ value: drRpoHours, label: 'DR RPO', color: cloudwatch.Color.RED }],
      right: [notStarted],
    });
  }

  /** A metric published with the dimension `service` only (restore tests, host configuration backups). */
  serviceMetric(name: string, statistic: string, period: Duration): cloudwatch.Metric {
    return new cloudwatch.Metric({
      namespace: this.props.metricsNamespace,
      metricName: name,
      dimensionsMap: { service: this.props.serviceName },
      statistic,
      period,
      label: name,
    });
  }

  /** A Summarize metric of one policy, with the dimensions Powertools writes (service, policyId). */
  policyMetric(name: string, policyId: string, statistic: string, period: Duration): cloudwatch.Metric {
    return new cloudwatch.Metric({
      namespace: this.props.metricsNamespace,
      metricName: name,
      dimensionsMap: { service: this.props.serviceName, policyId },
      statistic,
      period,
      label: `${policyId} ${name}`,
    });
  }
}
