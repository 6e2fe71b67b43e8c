/**
 * One EventBridge Scheduler schedule per protection policy: the policy's cron/rate/at
 * expression in its time zone starts the Backup workflow with `{ "policyId": ... }`; and
 * the Discover workflow's and the HostConfigBackup workflow's (every libvirt host, `{}`), when they are scheduled.
 * Scheduler retries a start that fails (throttling, a disabled state machine) and puts
 * what it could not deliver in an encrypted dead-letter queue, which has an alarm.
 */
import { Duration, TimeZone } from 'aws-cdk-lib';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import * as targets from 'aws-cdk-lib/aws-scheduler-targets';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { acknowledge } from './nag.ts';
import { Construct } from 'constructs';
import type { PolicyConfig, ScheduleConfig } from '../../core/config.ts';

export interface PolicySchedulesProps {
  policies: PolicyConfig[];
  backup: sfn.IStateMachine;
  /** The Discover workflow and when it runs (core/config.ts discoverySchedule); none: no discovery schedule. */
  discovery?: { stateMachine: sfn.IStateMachine; schedule: ScheduleConfig };
  /** The HostConfigBackup workflow and when it runs (core/config.ts hostConfigBackupSettings); none: no schedule. */
  hostConfigBackup?: { stateMachine: sfn.IStateMachine; schedule: ScheduleConfig };
  /** Attempts after the first failed start (0–185). */
  retryAttempts?: number;
  /** Give up on a start that could not be delivered for this long (60 s – 24 h). */
  maxEventAge?: Duration;
}

export class PolicySchedules extends Construct {
  readonly deadLetterQueue: sqs.Queue;
  readonly schedules: Record<string, scheduler.Schedule> = {};
  /** The Discover workflow's schedule, when there is one. */
  readonly discovery: scheduler.Schedule | undefined;
  /** The HostConfigBackup workflow's schedule, when there is one. */
  readonly hostConfigBackup: scheduler.Schedule | undefined;

  constructor(scope: Construct, id: string, props: PolicySchedulesProps) {
    super(scope, id);
    this.deadLetterQueue = new sqs.Queue(this, 'DeadLetters', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    acknowledge(this.deadLetterQueue, 'This queue is itself the dead-letter queue of the backup schedules; an alarm watches its depth.', 'AwsSolutions-SQS3');

    for (const p of props.policies) {
      this.schedules[p.id] = new scheduler.Schedule(this, `Policy-${p.id}`, {
        description: `Lifeboat: start the Backup workflow for policy '${p.id}'`,
        schedule: scheduler.ScheduleExpression.expression(p.schedule.expression, TimeZone.of(p.schedule.timeZone)),
        target: new targets.StepFunctionsStartExecution(props.backup, {
          input: scheduler.ScheduleTargetInput.fromObject({ policyId: p.id }),
          deadLetterQueue: this.deadLetterQueue,
          retryAttempts: props.retryAttempts ?? 5,
          maxEventAge: props.maxEventAge ?? Duration.hours(2),
        }),
      });
    }
    const everyHost = (id: string, description: string, w: { stateMachine: sfn.IStateMachine; schedule: ScheduleConfig }) =>
      new scheduler.Schedule(this, id, {
        description,
        schedule: scheduler.ScheduleExpression.expression(w.schedule.expression, TimeZone.of(w.schedule.timeZone)),
        target: new targets.StepFunctionsStartExecution(w.stateMachine, {
          input: scheduler.ScheduleTargetInput.fromObject({}),
          deadLetterQueue: this.deadLetterQueue,
          retryAttempts: props.retryAttempts ?? 5,
          maxEventAge: props.maxEventAge ?? Duration.hours(2),
        }),
      });
    this.discovery = props.discovery && everyHost('Discovery', 'Lifeboat: inventory the libvirt hosts (Discover workflow)', props.discovery);
    this.hostConfigBackup =
      props.hostConfigBackup &&
      everyHost(
        'HostConfigBackup',
        "Lifeboat: back up the libvirt hosts' networks, pools and domain definitions (HostConfigBackup workflow)",
        props.hostConfigBackup,
      );
  }
}
