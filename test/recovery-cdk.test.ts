/** The synthesized Restore, DeepVerify and Prune workflows: graph, routing, grants, schedules. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, Stack } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GcWorkflow } from '../cdk/lib/gc-workflow.ts';
import { LifeboatStack } from '../cdk/lib/lifeboat-stack.ts';
import type { LambdaFunctionId } from '../contracts/functions.ts';
import { loadConfig } from '../core/config.ts';
import { errorClasses } from '../contracts/errors.ts';
import { recoveryErrorClasses } from '../contracts/recovery-errors.ts';
import { functionAccess } from '../cdk/lib/function-access.ts';
import { GC_DEFER_MAX_SECONDS, GC_INVOCATION_MS, GC_LEASE_MS } from '../core/gc-timing.ts';
import { gcRequest } from '../functions/gc/gc-request.ts';
import { resolveTemplate, type CfnTemplate, type ResolvedTemplate } from '../local/asl.ts';

type State = {
  Type: string;
  Next?: string;
  End?: boolean;
  Resource?: string;
  TimeoutSeconds?: number;
  HeartbeatSeconds?: number;
  Default?: string;
  Choices?: { Variable: string; StringEquals?: string; Next: string }[];
  Retry?: { ErrorEquals: string[] }[];
  Catch?: { ErrorEquals: string[]; Next: string }[];
  ItemProcessor?: { StartAt: string; States: Record<string, State> };
  Error?: string;
  ErrorPath?: string;
};
type Definition = { StartAt: string; States: Record<string, State> };

const config = loadConfig(); // the example: groups site-a, site-b and dr
let outdir: string;
let template: Template;
let resolved: ResolvedTemplate;

function machine(prefix: string): { def: Definition; all: Record<string, State> } {
  const m = Object.values(resolved.stateMachines).find((x) => x.logicalId.startsWith(`${prefix}StateMachine`));
  if (!m) throw new Error(`no ${prefix} state machine`);
  const def = m.definition as Definition;
  const all: Record<string, State> = {};
  const walk = (states: Record<string, State>) => {
    for (const [n, s] of Object.entries(states)) {
      all[n] = s;
      if (s.ItemProcessor) walk(s.ItemProcessor.States);
    }
  };
  walk(def.States);
  return { def, all };
}

beforeAll(() => {
  outdir = mkdtempSync(join(tmpdir(), 'lifeboat-cdk-recovery-'));
  const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new LifeboatStack(app, 'Lifeboat', { config });
  template = Template.fromStack(stack);
  resolved = resolveTemplate(template.toJSON() as CfnTemplate);
});
afterAll(() => rmSync(outdir, { recursive: true, force: true }));

describe('Restore workflow', () => {
  it('plans, restores disks in a Map, writes the VM config only for a whole VM, and records', () => {
    const { def, all } = machine('Restore');
    expect(def.StartAt).toBe('PlanRestore');
    expect(def.States.PlanRestore!.Next).toBe('InstantOrCopy');
    const mode = def.States.InstantOrCopy! as State & { Choices: { Variable: string; IsPresent?: boolean; Next: string }[] };
    expect(mode.Choices[0]).toMatchObject({ Variable: '$.instant', IsPresent: true, Next: 'InstantRecoverOnMoverGroup' });
    expect(mode.Default).toBe('RestoreDisks');
    expect(def.States.RestoreDisks!.Type).toBe('Map');
    expect(def.States.RestoreDisks!.Next).toBe('WholeVm');
    expect(def.States.RestoreDisks!.Catch![0]!.Next).toBe('PoolVolumesToDiscard');
    expect(all.RecordRestoreFailure!.Next).toBe('RestoreFailed');
    expect(all.RestoreFailed).toMatchObject({ Type: 'Fail', ErrorPath: '$.error.Error' });
  });

  it('runs an instant recovery as one task on the group the input names, retried when its mover dies, its failure recorded, its outcome recorded', () => {
    const { all } = machine('Restore');
    const route = all.InstantRecoverOnMoverGroup!;
    expect(route.Choices!.map((c) => c.Variable)).toEqual(config.moverGroups.map(() => '$.moverGroup'));
    for (const c of route.Choices!) {
      const task = all[c.Next]! as State & { Parameters?: Record<string, unknown>; ResultPath?: string; HeartbeatSeconds?: number };
      expect(task.Resource).toBe(resolved.activities[`Lifeboat-mover-${c.StringEquals}`]);
      expect(task.Parameters).toMatchObject({ task: 'instantRecover', 'restore.$': '$' });
      expect(task.ResultPath).toBe('$.instantResult');
      expect(task.HeartbeatSeconds).toBe(60);
      expect(task.Retry![0]!.ErrorEquals).toContain('States.Timeout');
      expect(task.Catch![0]!.Next).toBe('RecordRestoreFailure');
      expect(task.Next).toBe('RecordRestore');
    }
  });

  it('deletes the volumes a failed restore into a storage pool created, on the restoring group, before recording the failure', () => {
    const { all } = machine('Restore');
    const configCatches = Object.entries(all)
      .filter(([n]) => n.startsWith('RestoreVmConfig') && all[n]!.Type === 'Task')
      .map(([, s]) => s.Catch![0]!.Next);
    expect(new Set(configCatches)).toEqual(new Set(['PoolVolumesToDiscard']));
    const choice = all.PoolVolumesToDiscard! as State & { Choices: { Variable: string; IsPresent?: boolean; Next: string }[] };
    expect(choice.Choices[0]).toMatchObject({ Variable: '$.define.pool', IsPresent: true, Next: 'DiscardRestoreVolumesOnMoverGroup' });
    expect(choice.Default).toBe('RecordRestoreFailure');
    const route = all.DiscardRestoreVolumesOnMoverGroup!;
    expect(route.Choices!.map((c) => c.Variable)).toEqual(config.moverGroups.map(() => '$.moverGroup'));
    for (const c of route.Choices!) {
      const task = all[c.Next]! as State & { Parameters?: Record<string, unknown>; ResultPath?: string };
      expect(task.Resource).toBe(resolved.activities[`Lifeboat-mover-${c.StringEquals}`]);
      expect(task.Parameters).toMatchObject({ task: 'discardPoolVolumes', 'restore.$': '$' });
      expect(task.ResultPath).toBe('$.discardedVolumes'); // the restore's own error stays in $.error for the record
      expect(task.Next).toBe('RecordRestoreFailure');
      expect(task.Catch![0]!.Next).toBe('RecordRestoreFailure');
    }
  });

  it('routes each disk to the activity of the group the input names, with timeouts and heartbeats', () => {
    const { all } = machine('Restore');
    const choice = all.RestoreDiskOnMoverGroup!;
    expect(choice.Type).toBe('Choice');
    const groups = config.moverGroups.map((g) => g.id);
    expect(choice.Choices!.map((c) => [c.Variable, c.StringEquals])).toEqual(groups.map((g) => ['$.restore.moverGroup', g]));
    for (const c of choice.Choices!) {
      const task = all[c.Next]!;
      expect(task.Resource).toBe(resolved.activities[`Lifeboat-mover-${c.StringEquals}`]);
      expect(task.HeartbeatSeconds).toBeGreaterThan(0);
      expect(task.HeartbeatSeconds!).toBeLessThan(task.TimeoutSeconds!);
      expect(task.Retry!.some((r) => r.ErrorEquals.includes('States.Timeout'))).toBe(true);
    }
    expect(all[choice.Default!]).toMatchObject({ Type: 'Fail', Error: 'Lifeboat.UnknownMoverGroup' });
  });
});

describe('Deep verify workflow', () => {
  it('moves damaged chunks aside, then emits an EventBridge event, only when damage was found', () => {
    const { def, all } = machine('DeepVerify');
    expect(def.StartAt).toBe('PlanDeepVerify');
    const damaged = all.Damaged!;
    expect(damaged.Type).toBe('Choice');
    expect(damaged.Choices![0]).toMatchObject({ Variable: '$.damaged', BooleanEquals: true, Next: 'QuarantineDamage' });
    const quarantine = all.QuarantineDamage!;
    expect(quarantine).toMatchObject({ Type: 'Task', ResultPath: '$.quarantine' });
    expect(quarantine.Retry!.some((r) => r.ErrorEquals.includes('Mover.StorageUnavailable'))).toBe(true);
    const emit = all[quarantine.Next!]!;
    expect(emit.Resource).toMatch(/^arn:aws:states:::events:putEvents$/);
    template.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: { Statement: Match.arrayWith([Match.objectLike({ Action: 'events:PutEvents', Effect: 'Allow' })]) },
    });
  });
});

describe('Restore test after a clean deep verification', () => {
  for (const name of ['DeepVerify', 'DeepVerifyPolicy']) {
    it(`${name}: only an intact verification with a restore test due goes to RestoreTest on the group of the VM's host, and every way out of it is recorded`, () => {
      const { all } = machine(name);
      const damaged = all.Damaged!;
      // Damage first: a damaged backup is never restore-tested.
      expect(damaged.Choices!.map((c) => c.Next)).toEqual(['QuarantineDamage', 'RestoreTestOnMoverGroup']);
      expect(damaged.Choices![1]).toMatchObject({ Variable: '$.restoreTestJob', IsPresent: true });
      expect(all[damaged.Default!]!.Type).toBe('Succeed');
      const choice = all.RestoreTestOnMoverGroup!;
      const groups = config.moverGroups.map((g) => g.id);
      expect(choice.Choices!.map((c) => [c.Variable, c.StringEquals])).toEqual(groups.map((g) => ['$.restoreTestJob.moverGroup', g]));
      for (const c of choice.Choices!) {
        const task = all[c.Next]! as State & { Parameters?: Record<string, unknown>; ResultPath?: string };
        expect(task.Resource).toBe(resolved.activities[`Lifeboat-mover-${c.StringEquals}`]);
        expect(task.Parameters).toEqual({ task: 'restoreTest', 'test.$': '$.restoreTestJob' });
        expect(task.ResultPath).toBe('$.restoreTestResult');
        expect(task.HeartbeatSeconds!).toBeLessThan(task.TimeoutSeconds!);
        expect(task.Retry!.some((r) => r.ErrorEquals.includes('States.Timeout') && r.ErrorEquals.includes('Mover.TaskStalled'))).toBe(true);
        // A test that fails as a task is a failed test: recorded, and the verification goes on.
        expect(task.Catch).toEqual([{ ErrorEquals: ['States.ALL'], ResultPath: '$.restoreTestError', Next: 'RecordRestoreTest' }]);
        expect(task.Next).toBe('RecordRestoreTest');
      }
      const record = all.RecordRestoreTest! as State & { Parameters?: { FunctionName?: string } };
      expect(record.Retry!.length).toBeGreaterThan(0);
      expect(record.Next).toBe('RestoreTestFailed');
    });

    it(`${name}: puts the event Lifeboat Restore Test Failed with RecordRestoreTest's detail only when the test failed`, () => {
      const { all } = machine(name);
      const failed = all.RestoreTestFailed! as State & { Choices: { Variable: string; IsPresent?: boolean; Next: string }[] };
      expect(failed.Type).toBe('Choice');
      expect(failed.Choices).toEqual([{ Variable: '$.restoreTestFailed', IsPresent: true, Next: 'EmitRestoreTestFailed' }]);
      expect(all[failed.Default!]!.Type).toBe('Succeed');
      const emit = all.EmitRestoreTestFailed! as State & { Parameters?: { Entries: Record<string, unknown>[] }; ResultPath?: unknown };
      expect(emit.Resource).toMatch(/^arn:aws:states:::events:putEvents$/);
      expect(emit.Parameters!.Entries).toEqual([
        { Source: 'lifeboat.deep-verify', DetailType: 'Lifeboat Restore Test Failed', 'Detail.$': '$.restoreTestFailed' },
      ]);
      // The verification's summary stays the output (DeepVerifyPolicy collects it per VM).
      expect(emit.ResultPath).toBeNull();
      expect(emit.Retry!.length).toBeGreaterThan(0);
      expect(emit.End).toBe(true);
    });
  }

  it('lets RecordRestoreTest update the backup and put the verification record, and nothing else', () => {
    expect(functionAccess.RecordRestoreTest).toEqual({ catalog: ['UpdateItem', 'PutItem'] });
    const role = Object.keys(template.findResources('AWS::IAM::Role')).find((id) => id.startsWith('RecordRestoreTestServiceRole'))!;
    const statements = Object.values(template.findResources('AWS::IAM::Policy'))
      .filter((p) => JSON.stringify(p.Properties.Roles) === JSON.stringify([{ Ref: role }]))
      .flatMap((p) => p.Properties.PolicyDocument.Statement as { Action: string | string[] }[]);
    const actions = statements.flatMap((st) => [st.Action].flat()).filter((a) => !a.startsWith('xray:'));
    expect(actions.sort()).toEqual(['dynamodb:PutItem', 'dynamodb:UpdateItem']);
  });
});

describe('Prune workflow', () => {
  it('stops after planning on a dry run', () => {
    const { all } = machine('Prune');
    const dry = all.DryRun!;
    expect(dry.Choices![0]).toMatchObject({ Variable: '$.dryRun', Next: 'DryRunListed' });
    expect(all.DryRunListed!.Type).toBe('Succeed');
    expect(dry.Default).toBe('PruneBackups');
  });

  it('schedules a prune per policy in its time zone, passing the zone on', () => {
    for (const p of config.policies) {
      template.hasResourceProperties('AWS::Scheduler::Schedule', {
        ScheduleExpressionTimezone: p.schedule.timeZone,
        Target: Match.objectLike({ Input: JSON.stringify({ policyId: p.id, timeZone: p.schedule.timeZone }) }),
      });
    }
  });

  it('schedules a weekly deep verification of each policy', () => {
    const dv = Object.values(resolved.stateMachines).find((m) => m.logicalId.startsWith('DeepVerifyPolicyStateMachine'))!;
    const schedules = Object.values(template.findResources('AWS::Scheduler::Schedule')).filter((r) =>
      JSON.stringify(r.Properties.Target.Arn).includes(dv.logicalId),
    );
    expect(schedules.map((s) => JSON.parse(s.Properties.Target.Input as string).policyId).sort()).toEqual(config.policies.map((p) => p.id).sort());
  });

  it('schedules garbage collection weekly for each repository, a DR repository on another endpoint with that endpoint', () => {
    const gc = Object.values(resolved.stateMachines).find((m) => m.logicalId.startsWith('GcStateMachine'))!;
    const schedules = Object.values(template.findResources('AWS::Scheduler::Schedule')).filter((r) =>
      JSON.stringify(r.Properties.Target.Arn).includes(gc.logicalId),
    );
    expect(schedules).toHaveLength(config.repositories.length);
    for (const s of schedules) expect(s.Properties.ScheduleExpression).toBe('cron(0 3 ? * SUN *)');
    const dr = config.repositories.find((r) => r.id === 'dr')!;
    // The stack's own buckets are references (an Fn::Join); the DR repository's input is plain JSON.
    const plain = schedules
      .map((s) => s.Properties.Target.Input)
      .filter((i): i is string => typeof i === 'string')
      .map((i) => JSON.parse(i) as unknown);
    expect(plain).toEqual([{ bucket: dr.bucket, endpoint: dr.endpoint }]);
  });

  it("lets only PruneBackup and CollectGarbage (failed backups' manifests) delete manifests, only CollectGarbage and QuarantineDamage delete chunk objects, only CollectGarbage packs and index objects, and only RecordHostConfig host configuration archives", () => {
    const policies = template.findResources('AWS::IAM::Policy');
    const deleters = Object.entries(policies).filter(([, r]) => JSON.stringify(r.Properties.PolicyDocument).includes('s3:DeleteObject'));
    const byFunction = Object.fromEntries(
      deleters.map(([id, r]) => {
        const stmt = (r.Properties.PolicyDocument.Statement as { Action: string | string[]; Resource: unknown }[]).find((s) =>
          [s.Action].flat().includes('s3:DeleteObject'),
        )!;
        const res = JSON.stringify(stmt.Resource);
        const under = (prefix: string) => res.includes(`/${prefix}*`);
        return [
          id.replace(/ServiceRole.*$/, ''),
          {
            manifests: under('manifests/'),
            chunks: under('chunks/'),
            packs: under('packs/'),
            index: under('index/'),
            keys: under('keys/'),
            hostConfig: under('host-config/'),
          },
        ];
      }),
    );
    expect(byFunction).toEqual({
      PruneBackup: { manifests: true, chunks: false, packs: false, index: false, keys: false, hostConfig: false },
      CollectGarbage: { manifests: true, chunks: true, packs: true, index: true, keys: false, hostConfig: false },
      QuarantineDamage: { manifests: false, chunks: true, packs: false, index: false, keys: false, hostConfig: false },
      // Retention of each host's configuration backups (keep N).
      RecordHostConfig: { manifests: false, chunks: false, packs: false, index: false, keys: false, hostConfig: true },
    });
  });
});

it('matches only States.*, AWS service integration errors (Lambda.*, StepFunctions.*) or Lifeboat error codes in Retry and Catch', () => {
  const known = { ...errorClasses, ...recoveryErrorClasses };
  for (const name of ['Restore', 'DeepVerify', 'Prune', 'Replicate', 'ReplicatePolicy', 'Failover', 'Backup']) {
    const { all } = machine(name);
    const used = Object.values(all).flatMap((s) => [...(s.Retry ?? []), ...(s.Catch ?? [])].flatMap((r) => r.ErrorEquals));
    expect(
      used.filter((e) => !e.startsWith('States.') && !e.startsWith('Lambda.') && !e.startsWith('StepFunctions.') && !Object.hasOwn(known, e)),
      name,
    ).toEqual([]);
  }
});

describe('Replication started by the Backup workflow', () => {
  type Task = State & {
    Parameters?: Record<string, unknown>;
    ResultPath?: string;
    OutputPath?: string;
    Retry?: { ErrorEquals: string[]; MaxAttempts?: number }[];
  };
  const replicatePolicyArn = () => Object.values(resolved.stateMachines).find((m) => m.logicalId.startsWith('ReplicatePolicyStateMachine'))!.arn;

  it('after Summarize, a Choice starts ReplicatePolicy only when the policy replicates and the run committed a backup', () => {
    const { def } = machine('Backup');
    expect(def.States.Summarize!.Next).toBe('ReplicationDue');
    const due = def.States.ReplicationDue! as State & { Choices: { And: Record<string, unknown>[]; Next: string }[] };
    expect(due.Choices).toEqual([
      {
        And: [
          { Variable: '$.replicateTo', IsString: true },
          { Variable: '$.summary.committed', NumericGreaterThan: 0 },
        ],
        Next: 'StartReplication',
      },
    ]);
    expect(due.Default).toBe('RunSummarized');
    // The run's output stays its summary (with the replication it started).
    expect(def.States.RunSummarized).toMatchObject({ Type: 'Pass', OutputPath: '$.summary', End: true });
  });

  it('starts ReplicatePolicy fire-and-forget with the run as input and a name derived from the run, and never starts it twice', () => {
    const start = machine('Backup').def.States.StartReplication! as Task;
    expect(start.Resource).toBe('arn:aws:states:::states:startExecution'); // request-response: the run does not wait for the copy
    expect(start.Parameters).toEqual({
      StateMachineArn: replicatePolicyArn(),
      Input: { 'policyId.$': '$.policyId', 'runId.$': '$.runId', 'AWS_STEP_FUNCTIONS_STARTED_BY_EXECUTION_ID.$': '$$.Execution.Id' },
      'Name.$': "States.Format('replicate-{}', States.Hash($$.Execution.Name, 'SHA-1'))",
    });
    expect(start.ResultPath).toBe('$.summary.replication');
    // A name already taken means this run's replication was started: not retried, not a failure.
    expect(start.Retry![0]).toMatchObject({ ErrorEquals: ['StepFunctions.ExecutionAlreadyExists'], MaxAttempts: 0 });
    expect(start.Catch!.map((c) => [c.ErrorEquals, c.Next])).toEqual([
      [['StepFunctions.ExecutionAlreadyExists'], 'ReplicationAlreadyStarted'],
      [['States.ALL'], 'ReplicationNotStarted'],
    ]);
  });

  it("grants the Backup workflow states:StartExecution on the ReplicatePolicy state machine and on itself (its Distributed Map's child executions), nothing else", () => {
    const backupRole = Object.entries(template.findResources('AWS::IAM::Role')).find(([id]) => id.startsWith('BackupStateMachineRole'))![0];
    const statements = Object.values(template.findResources('AWS::IAM::Policy'))
      .filter((p) => JSON.stringify(p.Properties.Roles) === JSON.stringify([{ Ref: backupRole }]))
      .flatMap((p) => p.Properties.PolicyDocument.Statement as { Action: string | string[]; Resource: unknown }[]);
    const starts = statements.filter((s) => [s.Action].flat().some((a) => a.startsWith('states:StartExecution')));
    const replicatePolicy = Object.values(resolved.stateMachines).find((m) => m.logicalId.startsWith('ReplicatePolicyStateMachine'))!.logicalId;
    const backup = Object.values(resolved.stateMachines).find((m) => m.logicalId.startsWith('BackupStateMachine'))!.logicalId;
    expect(starts).toHaveLength(2);
    expect(starts).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ Action: 'states:StartExecution', Resource: { Ref: replicatePolicy } }),
        expect.objectContaining({ Action: 'states:StartExecution', Resource: { Ref: backup } }),
      ]),
    );
  });
});

describe('Replicate workflow', () => {
  it('verifies the copy in the DR repository before recording it', () => {
    for (const name of ['Replicate', 'ReplicatePolicy']) {
      const { all } = machine(name);
      expect(all.ReplicateDisks!.Next, name).toBe('VerifyReplica');
      expect(all.VerifyReplica!.Next, name).toBe('RecordReplication');
    }
  });
});

describe('replica lease', () => {
  it("holds the VM's replica lease from before the copy until after the standby, and gives it back on every failure path", () => {
    for (const name of ['Replicate', 'ReplicatePolicy']) {
      const { all } = machine(name);
      expect(all.AcquireReplicaLease!.Next, name).toBe('ReplicateDisks');
      expect(
        all.AcquireReplicaLease!.Retry!.some((r) => r.ErrorEquals.includes('Replication.Busy')),
        name,
      ).toBe(true);
      expect(all.ReleaseReplicaLease!.Next, name).toBe('Replicated');
      // StandbyVmConfig is a mover task: one per group behind a Choice ('StandbyVmConfig (dr)', ...).
      const guarded = Object.keys(all).filter((n) =>
        /^(AcquireReplicaLease|ReplicateDisks|VerifyReplica|RecordReplication|UpdateStandby)$|^StandbyVmConfig \(/.test(n),
      );
      expect(guarded.length, name).toBeGreaterThanOrEqual(6);
      for (const s of guarded)
        expect(
          all[s]!.Catch!.map((c) => c.Next),
          `${name} ${s}`,
        ).toEqual(['ReleaseReplicaLeaseAfterFailure']);
    }
    expect(machine('Replicate').def.States.PlanReplicate!.Next).toBe('AcquireReplicaLease');
    const failover = machine('Failover').all;
    expect(failover.PlanFailover!.Next).toBe('AcquireReplicaLease');
    for (const [n, s] of Object.entries(failover).filter(([n]) => n.startsWith('StandbyVmConfig ('))) expect(s.Next, n).toBe('ReleaseReplicaLease');
    expect(failover.ReleaseReplicaLease!.Next).toBe('RecordFailover');
  });
});

describe('GC lease', () => {
  it("gives a failed collection's lease back before recording the failure, except after States.Timeout (the function may still run)", () => {
    const { all } = machine('Gc');
    expect(all.CollectGarbage!.Catch!.map((c) => [c.ErrorEquals, c.Next])).toEqual([
      [['States.Timeout'], 'RecordFailure'],
      [['States.ALL'], 'ReleaseGcLease'],
    ]);
    expect(all.ReleaseGcLease!.Next).toBe('RecordFailure');
    // The function's own timeout comes first: a killed function is a Lambda error, not States.Timeout.
    expect(all.CollectGarbage!.TimeoutSeconds).toBeGreaterThan(functionAccess.CollectGarbage!.timeoutSeconds!);
    expect(all.ReleaseGcLease!.Catch!.map((c) => c.Next)).toEqual(['RecordFailure']); // a failed release still records the failure
  });

  it('takes the lease for long enough to cover one invocation and the longest wait before the next, and no longer', () => {
    const { all } = machine('Gc');
    const collect = all.CollectGarbage!;
    const retries = collect.Retry as { ErrorEquals: string[]; IntervalSeconds: number; BackoffRate: number; MaxAttempts: number }[];
    expect(collect.TimeoutSeconds! * 1000).toBe(GC_INVOCATION_MS);
    // Between two invocations: a deferral (the workflow's wait, or the request's deferSeconds up to its schema's limit) or the retries of a failed one.
    const waits = Object.values(all)
      .filter((st) => st.Type === 'Wait')
      .map((st) => (st as State & { Seconds?: number }).Seconds ?? GC_DEFER_MAX_SECONDS);
    expect(Math.max(...waits)).toBeLessThanOrEqual(GC_DEFER_MAX_SECONDS);
    expect(gcRequest.safeParse({ bucket: 'b', deferSeconds: GC_DEFER_MAX_SECONDS + 1 }).success).toBe(false);
    const failedRetries = retries
      .filter((r) => !r.ErrorEquals.includes('Gc.Busy'))
      .map((r) => Array.from({ length: r.MaxAttempts }, (_, i) => r.IntervalSeconds * r.BackoffRate ** i).reduce((a, b) => a + b, 0));
    expect(GC_LEASE_MS).toBeGreaterThanOrEqual(GC_INVOCATION_MS + GC_DEFER_MAX_SECONDS * 1000 + Math.max(...failedRetries) * 1000);
    expect(GC_LEASE_MS).toBeLessThanOrEqual(2 * 3_600_000); // a dead collection holds the repository up for an hour or two, not for a whole workflow's 12 h
  });

  it('refuses a deferral wait longer than the lease covers', () => {
    const stack = new Stack(new App(), 'TooLongWait');
    const fn = lambda.Function.fromFunctionArn(stack, 'Fn', 'arn:aws:lambda:us-east-1:123456789012:function:f');
    const functions = new Proxy({}, { get: () => fn }) as Record<LambdaFunctionId, lambda.IFunction>;
    expect(() => new GcWorkflow(stack, 'Gc', { functions, deferSeconds: 7200 })).toThrow(/deferSeconds must be a whole number of seconds from 1 to 3600/);
    expect(() => new GcWorkflow(stack, 'GcOk', { functions, deferSeconds: 3600 })).not.toThrow();
  });
});

describe('Object Lock', () => {
  /** The function ids (LIFEBOAT_FUNCTION) whose roles an IAM policy statement allowing `action` is attached to; 'other' for any other role. */
  function grantedTo(action: string): Set<string> {
    const json = template.toJSON() as { Resources: Record<string, { Type: string; Properties: Record<string, unknown> }> };
    const functionOfRole = new Map<string, string>();
    for (const r of Object.values(json.Resources)) {
      if (r.Type !== 'AWS::Lambda::Function') continue;
      const role = (r.Properties.Role as { 'Fn::GetAtt'?: string[] })['Fn::GetAtt']?.[0];
      const id = (r.Properties.Environment as { Variables?: Record<string, string> } | undefined)?.Variables?.LIFEBOAT_FUNCTION;
      if (role && id) functionOfRole.set(role, id);
    }
    type Statement = { Effect: string; Action: string | string[] };
    const allows = (statements: Statement[]) =>
      statements.some((s) => s.Effect === 'Allow' && [s.Action].flat().some((a) => a === action || a === 's3:*' || a === '*'));
    const out = new Set<string>();
    for (const [id, r] of Object.entries(json.Resources)) {
      // Inline policies of a role, too.
      if (
        r.Type === 'AWS::IAM::Role' &&
        ((r.Properties.Policies as { PolicyDocument: { Statement: Statement[] } }[] | undefined) ?? []).some((p) => allows(p.PolicyDocument.Statement))
      )
        out.add(functionOfRole.get(id) ?? `other: ${id}`);
      if (r.Type !== 'AWS::IAM::Policy' && r.Type !== 'AWS::IAM::ManagedPolicy') continue;
      if (!allows((r.Properties.PolicyDocument as { Statement: Statement[] }).Statement)) continue;
      for (const role of (r.Properties.Roles as { Ref: string }[] | undefined) ?? [{ Ref: '(no role)' }])
        out.add(functionOfRole.get(role.Ref) ?? `other: ${role.Ref}`);
    }
    return out;
  }

  it('grants s3:PutObjectRetention to the ExtendLocks function alone, and s3:BypassGovernanceRetention to nobody', () => {
    expect([...grantedTo('s3:PutObjectRetention')]).toEqual(['ExtendLocks']);
    expect([...grantedTo('s3:BypassGovernanceRetention')]).toEqual([]);
    // GC reads the retain-until it must wait for.
    expect(grantedTo('s3:GetObjectRetention')).toEqual(new Set(['ExtendLocks', 'CollectGarbage']));
  });

  it('extends locks before garbage collection, again while there is more, and not on a dry run', () => {
    const { def, all } = machine('Gc');
    const dryRun = all[def.States[def.StartAt]!.Next!]! as State & { Choices: { Next: string }[]; Default: string };
    expect(dryRun.Choices.map((c) => c.Next)).toEqual(['CollectGarbage']);
    expect(dryRun.Default).toBe('ExtendLocks');
    expect(all.ExtendLocks!.Next).toBe('LocksExtended');
    const after = all.LocksExtended! as State & { Choices: { Next: string }[]; Default: string };
    expect(after.Choices.map((c) => c.Next)).toEqual(['ExtendLocks']);
    expect(after.Default).toBe('CollectGarbage');
    expect(all.ExtendLocks!.Catch!.map((c) => c.Next)).toEqual(['RecordFailure']);
  });
});
