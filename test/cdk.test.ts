import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, type CfnElement } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LifeboatStack } from '../cdk/lib/lifeboat-stack.ts';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import { errorClasses, SlotMustQueue, VerifyMustSplit, type LifeboatError } from '../contracts/errors.ts';
import { lambdaFunctions } from '../contracts/functions.ts';
import { resolveTemplate, type CfnTemplate, type ResolvedTemplate } from '../local/asl.ts';

type State = {
  Type: string;
  Next?: string;
  End?: boolean;
  Resource?: string;
  TimeoutSeconds?: number;
  HeartbeatSeconds?: number;
  Retry?: { ErrorEquals: string[] }[];
  Catch?: { ErrorEquals: string[]; Next: string }[];
  ItemProcessor?: { StartAt: string; States: Record<string, State> };
};
type Definition = { StartAt: string; States: Record<string, State> };

const outdirs: string[] = [];
/** The example configuration with one mover group serving every host: state names carry no group suffix. */
const example = loadConfig();
const oneGroup: LifeboatConfig = {
  ...example,
  moverGroups: [{ id: 'site-a', site: example.sites[0]!.id, hosts: example.hosts.map((h) => h.id) }],
};

function synth(config: LifeboatConfig) {
  const outdir = mkdtempSync(join(tmpdir(), 'lifeboat-cdk-'));
  outdirs.push(outdir);
  // Listing no stacks for bundling skips esbuild: nothing is built and nothing lands in the repo.
  const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new LifeboatStack(app, 'Lifeboat', { config });
  return { stack, template: Template.fromStack(stack) };
}

/** Every state at every nesting level (Map item processors included), by name. */
function allStates(states: Record<string, State>): Record<string, State> {
  const out: Record<string, State> = {};
  for (const [name, s] of Object.entries(states)) {
    out[name] = s;
    if (s.ItemProcessor) Object.assign(out, allStates(s.ItemProcessor.States));
  }
  return out;
}

/** The names visited by following `Next` from `start` until a state ends. */
function followNext(states: Record<string, State>, start: string): string[] {
  const path = [start];
  for (let s = states[start]; s?.Next; s = states[s.Next]) {
    if (path.includes(s.Next)) throw new Error(`Next loops back to ${s.Next}`);
    path.push(s.Next);
  }
  return path;
}

let stack: LifeboatStack;
let template: Template;
let resolved: ResolvedTemplate;
let definition: Definition;
let states: Record<string, State>;
const logicalId = (c: { node: { defaultChild?: unknown } }) => stack.getLogicalId(c.node.defaultChild as CfnElement);

beforeAll(() => {
  ({ stack, template } = synth(oneGroup));
  resolved = resolveTemplate(template.toJSON() as CfnTemplate);
  const backup = Object.values(resolved.stateMachines).filter((m) => m.logicalId.startsWith('Backup'));
  expect(backup).toHaveLength(1);
  definition = backup[0]!.definition as Definition;
  states = allStates(definition.States);
}, 300_000); // synth of the app: minutes on a loaded machine
afterAll(() => {
  for (const d of outdirs) rmSync(d, { recursive: true, force: true });
});

/** The per-host Map, inside BackupHosts's item processor, whose item processor holds one VM's states. */
const backupVms = () => definition.States.BackupHosts!.ItemProcessor!.States.BackupVms!;

describe('Backup state machine graph', () => {
  it("takes the policy's run lease, runs Plan, then the BackupHosts map, gives the lease back, then Summarize, then decides whether replication is due", () => {
    expect(definition.StartAt).toBe('AcquireRunLease');
    expect(followNext(definition.States, 'AcquireRunLease')).toEqual([
      'AcquireRunLease',
      'Plan',
      'BackupHosts',
      'ReleaseRunLease',
      'Summarize',
      'ReplicationDue',
    ]);
    // A second run is refused, not retried; a failing Plan or map gives the lease back first, also on a payload over
    // the quota (States.DataLimitExceeded, which States.ALL does not match).
    expect((definition.States.AcquireRunLease as { Catch?: unknown }).Catch).toBeUndefined();
    for (const s of ['Plan', 'BackupHosts']) {
      expect((definition.States[s] as { Catch?: { ErrorEquals: string[]; Next: string }[] }).Catch, s).toEqual([
        expect.objectContaining({ ErrorEquals: ['States.DataLimitExceeded'], Next: 'ReleaseRunLeaseAfterFailure' }),
        expect.objectContaining({ ErrorEquals: ['States.ALL'], Next: 'ReleaseRunLeaseAfterFailure' }),
      ]);
    }
    // Admission by host: one child execution per host, as many hosts at once as Plan says, read from the hosts' list in S3;
    // in each, one child execution per VM of the host's list, at most the host's slots at once; results written to S3.
    expect(definition.States.BackupHosts).toMatchObject({
      Type: 'Map',
      ItemProcessor: { ProcessorConfig: { Mode: 'DISTRIBUTED', ExecutionType: 'STANDARD' }, StartAt: 'BackupVms' },
      ItemReader: { ReaderConfig: { InputType: 'JSON' }, Parameters: { 'Key.$': '$.hostList.key' } },
      MaxConcurrencyPath: '$.hostList.concurrency',
      ResultWriter: {},
      ResultPath: null,
      ToleratedFailurePercentage: 100,
    });
    expect(backupVms()).toMatchObject({
      Type: 'Map',
      ItemProcessor: { ProcessorConfig: { Mode: 'DISTRIBUTED', ExecutionType: 'STANDARD' }, StartAt: 'AcquireSlot' },
      ItemReader: { ReaderConfig: { InputType: 'JSON' }, Parameters: { 'Key.$': '$.vmList.key' } },
      MaxConcurrencyPath: '$.slots',
      ResultWriter: {},
      ResultPath: null,
      ToleratedFailurePercentage: 100,
    });
    expect(definition.States.ReplicationDue?.Type).toBe('Choice');
    expect(followNext(definition.States, 'StartReplication')).toEqual(['StartReplication', 'ReportReplication', 'RunSummarized']);
    // Started or not, the run reports it (ReplicationStartFailed) and the DR recovery point; a failing report never fails the run.
    for (const s of ['ReplicationAlreadyStarted', 'ReplicationNotStarted'])
      expect(followNext(definition.States, s), s).toEqual([s, 'ReportReplication', 'RunSummarized']);
    expect((definition.States.ReportReplication as { Catch?: { ErrorEquals: string[]; Next: string }[] }).Catch).toEqual([
      expect.objectContaining({ ErrorEquals: ['States.ALL'], Next: 'RunSummarized' }),
    ]);
    expect(definition.States.RunSummarized?.End).toBe(true);
  });

  it("holds the per-VM states inside BackupVms's item processor, with DispatchDisk inside the Dispatch map", () => {
    const perVm = backupVms().ItemProcessor!;
    expect(Object.keys(perVm.States)).toEqual(
      expect.arrayContaining([
        'AcquireSlot',
        'WaitForSlot',
        'Snapshot',
        'Dispatch',
        'ReleaseSnapshot',
        'Verify',
        'Commit',
        'ReleaseSlot',
        'RecordFailure',
        'ReleaseSnapshotAfterFailure',
        'ReleaseSlotAfterFailure',
      ]),
    );
    const dispatch = perVm.States.Dispatch!;
    expect(dispatch.Type).toBe('Map');
    expect(dispatch.ItemProcessor?.StartAt).toBe('DispatchDisk');
    expect(Object.keys(dispatch.ItemProcessor!.States)).toContain('DispatchDisk');
  });

  it('takes a free slot on the fast path without a task token, and waits in line on one only when AcquireSlot says it must queue', () => {
    const perVm = backupVms().ItemProcessor!;
    const acquire = perVm.States.AcquireSlot as unknown as {
      Resource: string;
      Parameters: Record<string, unknown>;
      Catch: { ErrorEquals: string[]; Next: string }[];
    };
    expect(resolved.functions[acquire.Resource]).toBe('AcquireSlot'); // a plain invoke: no token, no callback
    expect(acquire.Parameters).toEqual({ 'job.$': '$' });
    expect(acquire.Catch[0]).toMatchObject({ ErrorEquals: ['Slot.MustQueue'], Next: 'WaitForSlot' });
    expect(acquire.Catch.at(-1)).toMatchObject({ ErrorEquals: ['States.ALL'], Next: 'RecordFailure' });
    const wait = perVm.States.WaitForSlot as { Next: string };
    expect(wait.Next).toBe('Snapshot');
  });

  it('follows the happy path of one VM from AcquireSlot to the end in order', () => {
    const perVm = backupVms().ItemProcessor!;
    expect(perVm.StartAt).toBe('AcquireSlot');
    const path = followNext(perVm.States, 'AcquireSlot');
    expect(path.slice(0, 9)).toEqual([
      'AcquireSlot',
      'Snapshot',
      'PlanDispatch',
      'Dispatch',
      'JoinSegments',
      'ReleaseSnapshot',
      'Verify',
      'Commit',
      'ReleaseSlot',
    ]);
    // ReleaseSlot ends the VM's execution (no shaping state to pay for); its output is Commit's answer.
    expect(path).toHaveLength(9);
    expect(perVm.States.ReleaseSlot).toMatchObject({ End: true, ResultPath: null, OutputPath: '$.commit' });
    const catches = (perVm.States.ReleaseSlot as { Catch?: { Next: string }[] }).Catch ?? [];
    expect(catches.length).toBeGreaterThan(0);
    for (const c of catches) expect(c.Next).toBe('VmCommitted');
  });

  it('runs Snapshot, DispatchDisk and both ReleaseSnapshot steps on the mover activity with timeouts and heartbeats', () => {
    const activityArn = resolved.activities['Lifeboat-mover-site-a'];
    expect(activityArn).toContain(':activity:');
    for (const name of ['Snapshot', 'DispatchDisk', 'ReleaseSnapshot', 'ReleaseSnapshotAfterFailure']) {
      const s = states[name]!;
      expect(s.Type, name).toBe('Task');
      expect(s.Resource, name).toBe(activityArn);
      expect(s.TimeoutSeconds, name).toBeGreaterThan(0);
      expect(s.HeartbeatSeconds, name).toBeGreaterThan(0);
      expect(s.HeartbeatSeconds!, name).toBeLessThan(s.TimeoutSeconds!);
    }
  });

  it('runs Plan, AcquireSlot, Verify, Commit, ReleaseSlot, RecordFailure and Summarize on their own Lambda functions', () => {
    const expected = {
      Plan: 'Plan',
      PlanDispatch: 'PlanDispatch',
      JoinSegments: 'JoinSegments',
      Verify: 'Verify',
      Commit: 'Commit',
      ReleaseSlot: 'ReleaseSlot',
      RecordFailure: 'RecordFailure',
      Summarize: 'Summarize',
      ReleaseSlotAfterFailure: 'ReleaseSlot',
    };
    for (const [name, fid] of Object.entries(expected)) {
      const s = states[name]!;
      expect(s.Type, name).toBe('Task');
      expect(s.Resource, name).toMatch(/^arn:aws:lambda:.*:function:/);
      expect(resolved.functions[s.Resource!], name).toBe(fid);
    }
  });

  it('waits in the slot queue on a task token: WaitForSlot invokes AcquireSlot with the token and times out to queue again', () => {
    const s = states.WaitForSlot! as typeof states.WaitForSlot & { Parameters: { FunctionName: string; Payload: Record<string, string> } };
    expect(s.Resource).toBe('arn:aws:states:::lambda:invoke.waitForTaskToken');
    expect(resolved.functions[s.Parameters.FunctionName]).toBe('AcquireSlot');
    expect(s.Parameters.Payload).toEqual({ 'job.$': '$', 'taskToken.$': '$$.Task.Token' });
    expect(s.TimeoutSeconds).toBeGreaterThan(0);
    expect((s.Retry?.find((r) => r.ErrorEquals.includes('States.Timeout')) as { MaxAttempts?: number } | undefined)?.MaxAttempts).toBeGreaterThan(1);
  });
});

describe('Backup state machine failure handling', () => {
  it('catches every error in Snapshot, Dispatch, ReleaseSnapshot, Verify and Commit', () => {
    for (const name of ['Snapshot', 'Dispatch', 'ReleaseSnapshot', 'Verify', 'Commit']) {
      const catchers = states[name]!.Catch ?? [];
      expect(
        catchers.some((c) => c.ErrorEquals.includes('States.ALL')),
        name,
      ).toBe(true);
    }
  });

  it('releases the snapshot when Snapshot, PlanDispatch, Dispatch or JoinSegments fails', () => {
    for (const name of ['Snapshot', 'PlanDispatch', 'Dispatch', 'JoinSegments']) {
      const all = states[name]!.Catch!.find((c) => c.ErrorEquals.includes('States.ALL'))!;
      expect(all.Next, name).toBe('ReleaseSnapshotAfterFailure');
    }
  });

  it('reaches ReleaseSlotAfterFailure from every catch taken before the slot is released', () => {
    const perVm = backupVms().ItemProcessor!.States;
    const targets = new Set<string>();
    for (const [name, s] of Object.entries(perVm)) {
      if (name === 'ReleaseSlot' || name === 'ReleaseSlotAfterFailure') continue; // the slot is already being released
      // Not failures: the VM queues for a slot; the backup is verified by range.
      for (const c of s.Catch ?? []) if (![SlotMustQueue.code, VerifyMustSplit.code].some((e) => c.ErrorEquals.includes(e))) targets.add(c.Next);
    }
    expect([...targets].sort()).toEqual(['RecordFailure', 'ReleaseSnapshotAfterFailure']);
    for (const t of targets) expect(followNext(perVm, t), `from ${t}`).toContain('ReleaseSlotAfterFailure');
    expect(followNext(perVm, 'ReleaseSnapshotAfterFailure').slice(0, 3)).toEqual(['ReleaseSnapshotAfterFailure', 'RecordFailure', 'ReleaseSlotAfterFailure']);
  });

  it('verifies a backup past one range by range: Verify.MustSplit caught into PlanVerifyRanges, VerifyRanges, JoinVerifyRanges, then Commit', () => {
    const perVm = backupVms().ItemProcessor!.States;
    const split = perVm.Verify!.Catch!.find((c) => c.ErrorEquals.includes(VerifyMustSplit.code))!;
    expect(perVm.Verify!.Catch![0], 'caught before States.ALL').toBe(split);
    expect(followNext(perVm, split.Next)).toEqual(['PlanVerifyRanges', 'VerifyRanges', 'JoinVerifyRanges', 'Commit', 'ReleaseSlot']);
    expect(perVm.Verify!.Next).toBe('Commit');
    // The ranges are read from S3 and their results written there: neither list is in a payload.
    const map = perVm.VerifyRanges as State & { ItemReader?: { Parameters?: Record<string, unknown> }; ResultWriter?: unknown; ItemsPath?: string };
    expect(map.ItemReader?.Parameters?.['Key.$']).toBe('$.verifyRanges.key');
    expect(map.ResultWriter).toBeDefined();
    expect(map.ItemsPath).toBeUndefined();
    expect(Object.keys(map.ItemProcessor!.States)).toEqual(['VerifyRange']);
    for (const name of ['PlanVerifyRanges', 'VerifyRanges', 'JoinVerifyRanges'])
      expect(perVm[name]!.Catch!.find((c) => c.ErrorEquals.includes('States.ALL'))!.Next, name).toBe('RecordFailure');
  });

  it('matches only States.*, AWS service integration errors (Lambda.*, StepFunctions.*) or Lifeboat error codes in Retry and Catch', () => {
    const names = new Set<string>();
    for (const s of Object.values(states)) for (const r of [...(s.Retry ?? []), ...(s.Catch ?? [])]) r.ErrorEquals.forEach((e) => names.add(e));
    expect(names.size).toBeGreaterThan(0);
    const unknown = [...names].filter(
      (e) => !e.startsWith('States.') && !e.startsWith('Lambda.') && !e.startsWith('StepFunctions.') && !Object.hasOwn(errorClasses, e),
    );
    expect(unknown).toEqual([]);
  });

  it('retries every retryable Lifeboat error class somewhere', () => {
    const retried = new Set<string>();
    for (const s of Object.values(states)) for (const r of s.Retry ?? []) r.ErrorEquals.forEach((e) => retried.add(e));
    const retryable: string[] = [];
    for (const [code, cls] of Object.entries(errorClasses)) {
      // Every constructor takes at most two arguments (message/cause, policyId, host/limit).
      const instance = new (cls as unknown as new (a: string, b: number) => LifeboatError)('probe', 1);
      expect(instance.name, code).toBe(code);
      expect(code.startsWith('States.'), code).toBe(false);
      if (instance.retryable) retryable.push(code);
    }
    expect(retryable.length).toBeGreaterThan(0);
    expect(retryable.filter((code) => !retried.has(code))).toEqual([]);
  });
});

describe('stateful resources', () => {
  it('keeps the catalog in a pay-per-request pk/sk table with point-in-time recovery and deletion protection', () => {
    template.hasResourceProperties('AWS::DynamoDB::GlobalTable', {
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
      AttributeDefinitions: Match.arrayWith([
        { AttributeName: 'pk', AttributeType: 'S' },
        { AttributeName: 'sk', AttributeType: 'S' },
      ]),
      BillingMode: 'PAY_PER_REQUEST',
    });
    const table = template.findResources('AWS::DynamoDB::GlobalTable')[logicalId(stack.table)]!;
    const replicas = table.Properties.Replicas as Record<string, unknown>[];
    expect(replicas.length).toBeGreaterThan(0);
    for (const r of replicas) {
      expect(r).toMatchObject({ DeletionProtectionEnabled: true, PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true } });
    }
  });

  it('blocks public access, encrypts and versions the repository bucket', () => {
    template.hasResourceProperties('AWS::S3::Bucket', {
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true },
      BucketEncryption: {
        ServerSideEncryptionConfiguration: Match.arrayWith([Match.objectLike({ ServerSideEncryptionByDefault: { SSEAlgorithm: Match.anyValue() } })]),
      },
      VersioningConfiguration: { Status: 'Enabled' },
    });
  });

  it('denies requests to the bucket and its objects that do not use TLS', () => {
    const bucketId = logicalId(stack.bucket);
    template.hasResourceProperties('AWS::S3::BucketPolicy', {
      Bucket: { Ref: bucketId },
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Effect: 'Deny',
            Action: 's3:*',
            Principal: { AWS: '*' },
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
            Resource: Match.arrayWith([{ 'Fn::GetAtt': [bucketId, 'Arn'] }, { 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, '/*']] }]),
          }),
        ]),
      },
    });
  });

  it("creates one activity per mover group and routes each VM's mover tasks to the group serving its host", () => {
    expect(Object.keys(resolved.activities)).toEqual(['Lifeboat-mover-site-a']);
    const three = synth(example); // site-a and site-b serve hosts; dr serves none
    // The activities are in the site stacks (cdk/lib/mover-site-stack.ts), none in the control plane's.
    expect(three.template.findResources('AWS::StepFunctions::Activity')).toEqual({});
    const names = Object.values(three.stack.sites).flatMap((site) =>
      Object.values(Template.fromStack(site).findResources('AWS::StepFunctions::Activity')).map((r) => r.Properties.Name as string),
    );
    expect(names.sort()).toEqual(['Lifeboat-mover-dr', 'Lifeboat-mover-site-a', 'Lifeboat-mover-site-b']);
    const r = resolveTemplate(three.template.toJSON() as CfnTemplate);
    const backup = Object.values(r.stateMachines).find((m) => m.logicalId.startsWith('Backup'))!;
    const s = allStates((backup.definition as Definition).States);
    for (const [task, groupPath] of [
      ['Snapshot', '$.moverGroup'],
      ['DispatchDisk', '$.job.moverGroup'],
      ['ReleaseSnapshot', '$.moverGroup'],
      ['ReleaseSnapshotAfterFailure', '$.moverGroup'],
    ] as const) {
      const choice = s[`${task}OnMoverGroup`] as State & { Choices: { Variable: string; StringEquals: string; Next: string }[]; Default: string };
      expect(choice.Type, task).toBe('Choice');
      expect(
        choice.Choices.map((c) => [c.Variable, c.StringEquals, c.Next]),
        task,
      ).toEqual([
        [groupPath, 'site-a', `${task} (site-a)`],
        [groupPath, 'site-b', `${task} (site-b)`],
      ]);
      expect(s[`${task} (site-a)`]?.Resource, task).toBe(r.activities['Lifeboat-mover-site-a']);
      expect(s[`${task} (site-b)`]?.Resource, task).toBe(r.activities['Lifeboat-mover-site-b']);
      expect(s[choice.Default]?.Type, task).toBe('Fail');
    }
  });
});

describe('Lambda functions', () => {
  it('deploys every registered function', () => {
    expect(Object.values(resolved.functions).sort()).toEqual(Object.keys(lambdaFunctions).sort());
  });

  it('runs every registered function on nodejs24.x, arm64, with the catalog table, the KMS key and the Powertools settings', () => {
    const registered = Object.values(template.findResources('AWS::Lambda::Function')).filter(
      (f) => (f.Properties.Environment?.Variables as Record<string, unknown> | undefined)?.LIFEBOAT_FUNCTION,
    );
    expect(registered.length).toBe(Object.keys(lambdaFunctions).length);
    for (const f of registered) {
      expect(f.Properties).toMatchObject({
        Runtime: 'nodejs24.x',
        Architectures: ['arm64'],
        TracingConfig: { Mode: 'Active' },
        Environment: {
          Variables: {
            CATALOG_TABLE: { Ref: logicalId(stack.table) },
            REPOSITORY_KMS_KEY_ID: { 'Fn::GetAtt': [logicalId(stack.repositoryKey), 'Arn'] },
            POWERTOOLS_SERVICE_NAME: 'lifeboat',
            POWERTOOLS_METRICS_NAMESPACE: 'Lifeboat/Lifeboat',
          },
        },
      });
    }
  });
});
