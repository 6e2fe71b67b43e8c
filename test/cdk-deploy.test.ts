/**
 * The deployable control plane: configuration at synth, storage, least privilege (mover
 * roles and each function), schedules, alarms, dashboard, logging/tracing of every state
 * machine, ASL validity, the error contract over every state machine, and cdk-nag.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App, Stack, Validations, type CfnElement } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import aslValidator from 'asl-validator';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { functionAccess } from '../cdk/lib/function-access.ts';
import { LifeboatStack } from '../cdk/lib/lifeboat-stack.ts';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import { errorClasses, type LifeboatError } from '../contracts/errors.ts';
import { recoveryErrorClasses } from '../contracts/recovery-errors.ts';
import { hostConfigMetrics, replicationMetrics, restoreTestMetrics, summaryMetrics } from '../contracts/metric-names.ts';
import { lambdaFunctions, type LambdaFunctionId } from '../contracts/functions.ts';
import { resolveTemplate, type CfnTemplate, type ResolvedTemplate } from '../local/asl.ts';

type Statement = { Effect: string; Action: string | string[]; Resource: unknown; Condition?: Record<string, unknown>; Principal?: unknown };
type Resource = { Type: string; Properties: Record<string, any> };
type State = {
  Type: string;
  Retry?: { ErrorEquals: string[] }[];
  Catch?: { ErrorEquals: string[] }[];
  ItemProcessor?: { States: Record<string, State> };
  Iterator?: { States: Record<string, State> };
  Branches?: { States: Record<string, State> }[];
};

const TRUST_ANCHOR = 'arn:aws:rolesanywhere:eu-central-1:111122223333:trust-anchor/0123abcd-0123-4567-89ab-0123456789ab';
const SITE_ROLE = 'arn:aws:iam::111122223333:role/site-b-appliances';
const example = loadConfig();
/**
 * The example (its DR repository is on another endpoint), with Object Lock on the primary
 * repository, a second repository of the stack's own (`copy`), and both kinds of mover trust.
 */
const config: LifeboatConfig = {
  ...example,
  repositories: [
    ...example.repositories.map((r, i) => (i === 0 ? { ...r, objectLock: { mode: 'COMPLIANCE' as const, days: 30 } } : r)),
    { id: 'copy', chunkSizeMiB: 1 },
  ],
  moverGroups: example.moverGroups.map((g, i) =>
    i === 0 ? { ...g, principal: { rolesAnywhereTrustAnchorArn: TRUST_ANCHOR } } : i === 1 ? { ...g, principal: { awsPrincipalArn: SITE_ROLE } } : g,
  ),
};

const dirs: string[] = [];
function synth(c: LifeboatConfig) {
  const outdir = mkdtempSync(join(tmpdir(), 'lifeboat-cdk-'));
  dirs.push(outdir);
  const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new LifeboatStack(app, 'Lifeboat', { config: c });
  return { app, stack, template: Template.fromStack(stack) };
}

let app: App;
let stack: LifeboatStack;
let template: Template;
let resources: Record<string, Resource>;
let resolved: ResolvedTemplate;
const lid = (c: IConstruct) => stack.getLogicalId((c.node.defaultChild ?? c) as CfnElement);
const actionsOf = (s: Statement) => (Array.isArray(s.Action) ? s.Action : [s.Action]);
const ofType = (type: string) => Object.entries(resources).filter(([, r]) => r.Type === type);

/** The resources of every site stack (mover groups), merged. */
let siteResources: Record<string, Resource>;
/** A logical id in its own stack (the control plane's or a site's). */
const lidIn = (c: IConstruct) => Stack.of(c).getLogicalId((c.node.defaultChild ?? c) as CfnElement);
/** What a site stack's template holds for a value of the control plane's stack: the import of its export. */
function imported(value: unknown): { 'Fn::ImportValue': unknown } {
  const outputs = template.toJSON().Outputs as Record<string, { Value: unknown; Export?: { Name: unknown } }>;
  const o = Object.values(outputs).find((x) => x.Export && JSON.stringify(x.Value) === JSON.stringify(value));
  if (!o) throw new Error(`the control plane's stack exports no ${JSON.stringify(value)}`);
  return { 'Fn::ImportValue': o.Export!.Name };
}

/** Every Allow/Deny statement of the IAM policies attached to a role (by logical id), in the control plane's or the site stacks. */
function roleStatements(roleLid: string, within: Record<string, Resource> = resources): Statement[] {
  return Object.entries(within)
    .filter(([, r]) => r.Type === 'AWS::IAM::Policy')
    .filter(([, p]) => (p.Properties.Roles as unknown[]).some((r) => JSON.stringify(r) === JSON.stringify({ Ref: roleLid })))
    .flatMap(([, p]) => p.Properties.PolicyDocument.Statement as Statement[]);
}

function allStates(states: Record<string, State>): State[] {
  return Object.values(states).flatMap((s) => [
    s,
    ...(s.ItemProcessor ? allStates(s.ItemProcessor.States) : []),
    ...(s.Iterator ? allStates(s.Iterator.States) : []),
    ...(s.Branches ?? []).flatMap((b) => allStates(b.States)),
  ]);
}

beforeAll(() => {
  ({ app, stack, template } = synth(config));
  resources = template.toJSON().Resources as Record<string, Resource>;
  resolved = resolveTemplate(template.toJSON() as CfnTemplate);
  const assembly = app.synth();
  siteResources = Object.assign(
    {},
    ...Object.values(stack.sites).map((s) => assembly.getStackByName(s.stackName).template.Resources as Record<string, Resource>),
  );
}, 300_000);
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('configuration at synth', () => {
  it('fails `cdk synth` of a bad configuration with a message naming the key and the value', () => {
    const dir = mkdtempSync(join(tmpdir(), 'lifeboat-badconfig-'));
    dirs.push(dir);
    const bad = join(dir, 'bad.json');
    writeFileSync(
      bad,
      JSON.stringify({
        ...example,
        policies: [{ ...example.policies[0]!, rpoHours: -5, schedule: { expression: 'cron(0 1 * * *)', timeZone: 'Mars/Olympus' } }],
      }),
    );
    const run = spawnSync(process.execPath, ['cdk/bin/app.ts'], {
      env: { ...process.env, LIFEBOAT_CONFIG: bad, CDK_OUTDIR: join(dir, 'out') },
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(run.status).not.toBe(0);
    expect(run.stderr).toContain(bad);
    expect(run.stderr).toContain('policies[0].rpoHours = -5');
    expect(run.stderr).toContain('policies[0].schedule.expression = "cron(0 1 * * *)"');
    expect(run.stderr).toContain('policies[0].schedule.timeZone = "Mars/Olympus"');
    expect(run.stderr).not.toMatch(/^\s+at /m); // a message for the operator, not a stack trace
  });

  it("rejects an external endpoint on the first repository, which is the stack's own bucket", () => {
    const c = { ...example, repositories: [{ ...example.repositories[0]!, endpoint: { url: 'https://minio.example.com' } }, ...example.repositories.slice(1)] };
    expect(() => synth(c)).toThrow(/repositories\[0\]\.endpoint = \{"url":"https:\/\/minio\.example\.com"\}/);
  });
});

describe('repository storage', () => {
  it('encrypts the repository with its own rotating KMS key (SSE-KMS, bucket key)', () => {
    const bucket = resources[lid(stack.bucket)]!.Properties;
    expect(bucket.BucketEncryption.ServerSideEncryptionConfiguration).toEqual([
      {
        BucketKeyEnabled: true,
        ServerSideEncryptionByDefault: { SSEAlgorithm: 'aws:kms', KMSMasterKeyID: { 'Fn::GetAtt': [lid(stack.repositoryKey), 'Arn'] } },
      },
    ]);
    expect(resources[lid(stack.repositoryKey)]!.Properties.EnableKeyRotation).toBe(true);
  });

  it('versions, blocks public access, aborts incomplete uploads and logs access', () => {
    const bucket = resources[lid(stack.bucket)]!.Properties;
    expect(bucket.VersioningConfiguration).toEqual({ Status: 'Enabled' });
    expect(bucket.PublicAccessBlockConfiguration).toEqual({
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    expect(bucket.LifecycleConfiguration.Rules).toEqual(
      expect.arrayContaining([expect.objectContaining({ AbortIncompleteMultipartUpload: { DaysAfterInitiation: 7 }, Status: 'Enabled' })]),
    );
    expect(bucket.LoggingConfiguration.DestinationBucketName).toEqual({ Ref: lid(stack.repositories[config.repositories[0]!.id]!.accessLogs) });
  });

  it('turns on Object Lock with the configured default retention only when the repository asks for it', () => {
    expect(resources[lid(stack.bucket)]!.Properties).toMatchObject({
      ObjectLockEnabled: true,
      ObjectLockConfiguration: { ObjectLockEnabled: 'Enabled', Rule: { DefaultRetention: { Mode: 'COMPLIANCE', Days: 30 } } },
    });
    const copy = resources[lid(stack.repositories.copy!.bucket)]!.Properties;
    expect(copy.ObjectLockEnabled).toBeUndefined();
    expect(copy.ObjectLockConfiguration).toBeUndefined();
  });

  it("creates no bucket, key or grant for a repository on another endpoint: that storage is the operator's", () => {
    expect(Object.keys(stack.repositories).sort()).toEqual(['copy', 'primary']);
    expect(ofType('AWS::S3::Bucket').filter(([, b]) => JSON.stringify(b.Properties ?? {}).includes('lifeboat-dr'))).toEqual([]);
    expect(JSON.stringify(ofType('AWS::IAM::Policy'))).not.toContain('lifeboat-dr');
  });

  it('denies every non-TLS request on every bucket of the stack', () => {
    const policies = ofType('AWS::S3::BucketPolicy');
    const buckets = ofType('AWS::S3::Bucket').map(([id]) => id);
    expect(policies.map(([, p]) => p.Properties.Bucket.Ref).sort()).toEqual(buckets.sort());
    for (const [, p] of policies) {
      expect(p.Properties.PolicyDocument.Statement).toEqual(
        expect.arrayContaining([
          expect.objectContaining({
            Effect: 'Deny',
            Action: 's3:*',
            Principal: { AWS: '*' },
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
          }),
        ]),
      );
    }
  });

  it('keeps the catalog on demand, with point-in-time recovery and deletion protection', () => {
    const table = resources[lid(stack.table)]!.Properties;
    expect(table.BillingMode).toBe('PAY_PER_REQUEST');
    for (const r of table.Replicas)
      expect(r).toMatchObject({ DeletionProtectionEnabled: true, PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true } });
  });
});

describe('mover identity', () => {
  const groups = () =>
    config.moverGroups.map((g) => ({ g, role: stack.moverRoles[g.id]!.role, activity: stack.sites[g.site]!.activities[g.id]!, site: stack.sites[g.site]! }));

  it("puts each group's Activity, role and alarm in its site's stack, and nothing per group in the control plane's", () => {
    expect(Object.keys(stack.sites).sort()).toEqual([...new Set(config.moverGroups.map((g) => g.site))].sort());
    for (const { g, role, activity, site } of groups()) {
      expect(Stack.of(role), g.id).toBe(site);
      expect(siteResources[lidIn(activity)]?.Properties.Name, g.id).toBe(`Lifeboat-mover-${g.id}`);
      expect(stack.activities[g.id]!.activityName, g.id).toBe(`Lifeboat-mover-${g.id}`);
    }
    expect(ofType('AWS::StepFunctions::Activity')).toEqual([]);
    expect(
      app
        .synth()
        .getStackByName(stack.stackName)
        .dependencies.map((d) => d.id)
        .filter((d) => !d.endsWith('.assets')),
    ).toEqual([]);
  });

  it('gives every mover group its own role, trusted by the configured principal or Roles Anywhere anchor', () => {
    const trust = (g: string) => siteResources[lidIn(stack.moverRoles[g]!.role)]!.Properties.AssumeRolePolicyDocument.Statement as Statement[];
    const ra = trust('site-a');
    expect(ra).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          Action: 'sts:AssumeRole',
          Principal: { Service: 'rolesanywhere.amazonaws.com' },
          Condition: { ArnEquals: { 'aws:SourceArn': TRUST_ANCHOR } },
        }),
        expect.objectContaining({
          Action: ['sts:TagSession', 'sts:SetSourceIdentity'],
          Principal: { Service: 'rolesanywhere.amazonaws.com' },
          Condition: { ArnEquals: { 'aws:SourceArn': TRUST_ANCHOR } },
        }),
      ]),
    );
    expect(trust('site-b')).toEqual([expect.objectContaining({ Action: 'sts:AssumeRole', Principal: { AWS: SITE_ROLE } })]);
    expect(JSON.stringify(trust('dr'))).toContain(':root');
  });

  it('allows no delete of any kind, no catalog access and no wildcard action', () => {
    for (const { g, role } of groups()) {
      const actions = roleStatements(lidIn(role), siteResources).flatMap(actionsOf);
      expect(actions.length, g.id).toBeGreaterThan(0);
      expect(
        actions.filter((a) => /^s3:Delete/i.test(a) || /^dynamodb:/i.test(a) || a.includes('*')),
        g.id,
      ).toEqual([]);
      expect(siteResources[lidIn(role)]!.Properties.ManagedPolicyArns, g.id).toBeUndefined();
    }
  });

  it('lets a group take and answer tasks of its own Activity only', () => {
    for (const { g, role, activity } of groups()) {
      const states = roleStatements(lidIn(role), siteResources).filter((s) => actionsOf(s).some((a) => a.startsWith('states:')));
      expect(states.flatMap(actionsOf).sort(), g.id).toEqual([
        'states:GetActivityTask',
        'states:SendTaskFailure',
        'states:SendTaskHeartbeat',
        'states:SendTaskSuccess',
      ]);
      for (const s of states) expect(s.Resource, g.id).toEqual({ Ref: lidIn(activity) });
    }
  });

  it('reads and writes only the data prefixes of the repositories, and lists only their buckets', () => {
    const buckets = Object.values(stack.repositories).map((r) => lid(r.bucket));
    const objectArn = (b: string, prefix: string) => ({ 'Fn::Join': ['', [imported({ 'Fn::GetAtt': [b, 'Arn'] }), `/${prefix}*`]] });
    for (const { g, role } of groups()) {
      const s3 = roleStatements(lidIn(role), siteResources).filter((s) => actionsOf(s).some((a) => a.startsWith('s3:')));
      const by = (action: string) => s3.filter((s) => actionsOf(s).includes(action)).flatMap((s) => [s.Resource].flat());
      // Not keys/ (the repository key is written at deploy) nor releases/ (only the publisher writes releases);
      // chunks/ only for replicating format-1 backups (backups write packs); host-config/ is written, never read back, by movers.
      expect(by('s3:PutObject'), g.id).toEqual(
        buckets.flatMap((b) => ['packs/', 'index/', 'manifests/', 'movers/', 'chunks/', 'host-config/', 'progress/', 'exports/'].map((p) => objectArn(b, p))),
      );
      expect(by('s3:GetObject'), g.id).toEqual(
        buckets.flatMap((b) => ['chunks/', 'packs/', 'index/', 'manifests/', 'movers/', 'keys/', 'releases/'].map((p) => objectArn(b, p))),
      );
      // The whole bucket, no s3:prefix condition: a missing object must be a 404, not a 403 (cdk/lib/mover-identity.ts).
      expect(by('s3:ListBucket'), g.id).toEqual(buckets.map((b) => imported({ 'Fn::GetAtt': [b, 'Arn'] })));
      expect(new Set(s3.flatMap(actionsOf)), g.id).toEqual(new Set(['s3:PutObject', 's3:GetObject', 's3:ListBucket']));
    }
  });

  it('uses the KMS keys only through S3 and to unwrap the repository key', () => {
    for (const { g, role } of groups()) {
      const kms = roleStatements(lidIn(role), siteResources).filter((s) => actionsOf(s).some((a) => a.startsWith('kms:')));
      expect(new Set(kms.flatMap(actionsOf)), g.id).toEqual(new Set(['kms:Decrypt', 'kms:GenerateDataKey']));
      for (const s of kms) {
        expect(s.Condition, g.id).toBeDefined();
        const condition = JSON.stringify(s.Condition);
        expect(condition.includes('kms:ViaService') || condition.includes('kms:EncryptionContext:lifeboat:purpose'), g.id).toBe(true);
        if (actionsOf(s).includes('kms:GenerateDataKey')) expect(condition, g.id).toContain('kms:ViaService');
      }
    }
  });
});

describe('Lambda functions', () => {
  it('declares the access of every registered function', () => {
    expect(Object.keys(lambdaFunctions).filter((id) => !Object.hasOwn(functionAccess, id))).toEqual([]);
  });

  it('grants each function exactly the actions its access declaration lists, on the catalog table, data prefixes and keys', () => {
    for (const fid of Object.keys(lambdaFunctions) as LambdaFunctionId[]) {
      const access = functionAccess[fid] ?? {};
      const expected = new Set([
        'xray:PutTraceSegments',
        'xray:PutTelemetryRecords',
        ...(access.catalog ?? []).map((a) => `dynamodb:${a}`),
        ...(access.repository?.read?.length ? ['s3:GetObject', 'kms:Decrypt'] : []),
        ...(access.repository?.write?.length ? ['s3:PutObject', 'kms:GenerateDataKey'] : []),
        ...(access.repository?.delete?.length ? ['s3:DeleteObject'] : []),
        ...(access.repository?.list ? ['s3:ListBucket'] : []),
        ...(access.repository?.retention?.read?.length ? ['s3:GetObjectRetention', 's3:GetBucketObjectLockConfiguration'] : []),
        ...(access.repository?.retention?.extend?.length ? ['s3:PutObjectRetention'] : []),
        ...(access.repositoryKey?.includes('unwrap') ? ['kms:Decrypt'] : []),
        ...(access.repositoryKey?.includes('wrap') ? ['kms:Encrypt'] : []),
        ...(access.backupExecutions ?? []).map((a) => `states:${a}`),
        ...(access.taskResponses ? ['states:SendTaskSuccess'] : []),
      ]);
      const f = stack.functions[fid] as unknown as { role: IConstruct };
      const statements = roleStatements(lid(f.role));
      expect(new Set(statements.flatMap(actionsOf)), fid).toEqual(expected);
      for (const s of statements.filter((st) => actionsOf(st).some((a) => a.startsWith('dynamodb:')))) {
        expect([s.Resource].flat()[0], fid).toEqual({ 'Fn::GetAtt': [lid(stack.table), 'Arn'] });
      }
    }
  });

  it('gives Verify no catalog access and the backup functions no repository delete', () => {
    const actions = (fid: LambdaFunctionId) => roleStatements(lid((stack.functions[fid] as unknown as { role: IConstruct }).role)).flatMap(actionsOf);
    expect(actions('Verify').filter((a) => a.startsWith('dynamodb:'))).toEqual([]);
    for (const fid of ['Plan', 'AcquireSlot', 'ReleaseSlot', 'Verify', 'Commit', 'RecordFailure', 'Summarize', 'OnDeploy'] as LambdaFunctionId[]) {
      expect(
        actions(fid).filter((a) => /^s3:Delete/.test(a)),
        fid,
      ).toEqual([]);
    }
  });
});

describe('workflows', () => {
  it('logs every state machine to CloudWatch Logs at level ALL without execution data, with X-Ray tracing', () => {
    const machines = ofType('AWS::StepFunctions::StateMachine');
    expect(machines.map(([id]) => id)).toEqual(expect.arrayContaining([lid(stack.backup.stateMachine)]));
    for (const [id, m] of machines) {
      expect(m.Properties.LoggingConfiguration, id).toMatchObject({
        Level: 'ALL',
        IncludeExecutionData: false,
        Destinations: [{ CloudWatchLogsLogGroup: { LogGroupArn: expect.anything() } }],
      });
      expect(m.Properties.TracingConfiguration, id).toEqual({ Enabled: true });
    }
  });

  it('refuses to synthesize a state machine created after Monitoring, which would miss logs, X-Ray and alarms', () => {
    const outdir = mkdtempSync(join(tmpdir(), 'lifeboat-cdk-'));
    dirs.push(outdir);
    const late = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
    const s = new LifeboatStack(late, 'Lifeboat', { config: example });
    new sfn.StateMachine(s, 'Late', { definitionBody: sfn.DefinitionBody.fromChainable(new sfn.Pass(s, 'Nothing')) });
    expect(() => late.synth()).toThrow(/state machine Lifeboat\/Late was created after Lifeboat\/Monitoring/);
  });

  it('passes asl-validator for every state machine', () => {
    expect(Object.keys(resolved.stateMachines).length).toBeGreaterThan(0);
    for (const [id, m] of Object.entries(resolved.stateMachines)) {
      const result = aslValidator(m.definition);
      expect(result.isValid ? '' : result.errorsText('\n'), id).toBe('');
    }
  });

  it('matches only States.*, AWS service integration errors (Lambda.*, StepFunctions.*) or Lifeboat error classes in the Retry and Catch of every state machine', () => {
    const known = { ...errorClasses, ...recoveryErrorClasses };
    for (const [id, m] of Object.entries(resolved.stateMachines)) {
      const names = allStates((m.definition as { States: Record<string, State> }).States)
        .flatMap((s) => [...(s.Retry ?? []), ...(s.Catch ?? [])])
        .flatMap((r) => r.ErrorEquals);
      expect(
        names.filter((e) => !e.startsWith('States.') && !e.startsWith('Lambda.') && !e.startsWith('StepFunctions.') && !Object.hasOwn(known, e)),
        id,
      ).toEqual([]);
    }
  });

  it('retries every retryable error class in some state machine', () => {
    const retried = new Set(
      Object.values(resolved.stateMachines)
        .flatMap((m) => allStates((m.definition as { States: Record<string, State> }).States))
        .flatMap((s) => s.Retry ?? [])
        .flatMap((r) => r.ErrorEquals),
    );
    const retryable = Object.entries({ ...errorClasses, ...recoveryErrorClasses })
      .filter(([, cls]) => new (cls as unknown as new (a: string, b: number) => LifeboatError)('probe', 1).retryable)
      .map(([code]) => code);
    expect(retryable.length).toBeGreaterThan(0);
    expect(retryable.filter((code) => !retried.has(code))).toEqual([]);
  });

  it("starts the Backup workflow on each policy's schedule and time zone with its policy id, with retries and a dead-letter queue", () => {
    const schedules = ofType('AWS::Scheduler::Schedule')
      .map(([, s]) => s.Properties)
      .filter((s) => JSON.stringify(s.Target.Arn) === JSON.stringify({ Ref: lid(stack.backup.stateMachine) }));
    expect(schedules).toHaveLength(config.policies.length);
    for (const p of config.policies) {
      const s = schedules.find((x) => JSON.parse(x.Target.Input as string).policyId === p.id);
      expect(s, p.id).toMatchObject({
        ScheduleExpression: p.schedule.expression,
        ScheduleExpressionTimezone: p.schedule.timeZone,
        State: 'ENABLED',
        Target: {
          Arn: { Ref: lid(stack.backup.stateMachine) },
          RetryPolicy: { MaximumRetryAttempts: 5, MaximumEventAgeInSeconds: 7200 },
          DeadLetterConfig: { Arn: { 'Fn::GetAtt': [lid(stack.schedules.deadLetterQueue), 'Arn'] } },
        },
      });
      expect(JSON.parse(s!.Target.Input as string)).toEqual({ policyId: p.id });
    }
    const schedulerRole = schedules[0]!.Target.RoleArn['Fn::GetAtt'][0] as string;
    expect(
      roleStatements(schedulerRole)
        .filter((s) => actionsOf(s).includes('states:StartExecution'))
        .map((s) => s.Resource),
    ).toEqual([{ Ref: lid(stack.backup.stateMachine) }]);
  });

  it('runs OnDeploy on every deploy with the validated configuration and the repository buckets', () => {
    const [[, cr]] = ofType('Custom::LifeboatDeployment') as [[string, Resource]];
    expect(JSON.parse(cr.Properties.configJson as string)).toEqual(config);
    expect(cr.Properties.primaryBucket).toEqual({ Ref: lid(stack.bucket) });
    // A repository on another endpoint is named by its configured bucket; the stack's own by the bucket it creates.
    expect(cr.Properties.buckets).toEqual({ primary: { Ref: lid(stack.bucket) }, dr: 'lifeboat-dr', copy: { Ref: lid(stack.repositories.copy!.bucket) } });
    const framework = resources[cr.Properties.ServiceToken['Fn::GetAtt'][0] as string]!;
    expect(framework.Properties.Environment.Variables.USER_ON_EVENT_FUNCTION_ARN).toEqual({ 'Fn::GetAtt': [lid(stack.functions.OnDeploy), 'Arn'] });
  });
});

describe('alarms and dashboard', () => {
  const alarms = () => ofType('AWS::CloudWatch::Alarm').map(([, a]) => a.Properties);
  const topic = () => ({ Ref: lid(stack.monitoring.topic) });
  type AlarmMetric = { namespace: string; name: string; dims: Record<string, unknown>; stat: string; period: number };
  /** The metrics an alarm reads, whether rendered as a single metric or a Metrics array. */
  const metricsOf = (a: Record<string, any>): AlarmMetric[] => {
    const dims = (d: { Name: string; Value: unknown }[] = []) => Object.fromEntries(d.map((x) => [x.Name, x.Value]));
    if (a.MetricName) return [{ namespace: a.Namespace, name: a.MetricName, dims: dims(a.Dimensions), stat: a.Statistic, period: a.Period }];
    return (a.Metrics as any[])
      .filter((m) => m.MetricStat)
      .map((m) => ({
        namespace: m.MetricStat.Metric.Namespace,
        name: m.MetricStat.Metric.MetricName,
        dims: dims(m.MetricStat.Metric.Dimensions),
        stat: m.MetricStat.Stat,
        period: m.MetricStat.Period,
      }));
  };
  const uses = (a: Record<string, any>, metricName: string, dimension: Record<string, unknown>) =>
    metricsOf(a).some((m) => m.name === metricName && Object.entries(dimension).every(([k, v]) => JSON.stringify(m.dims[k]) === JSON.stringify(v)));

  it('sends every alarm to the encrypted, TLS-only SNS topic that emails the configured addresses', () => {
    expect(alarms().length).toBeGreaterThan(0);
    for (const a of alarms()) expect(a.AlarmActions).toEqual([topic()]);
    expect(resources[lid(stack.monitoring.topic)]!.Properties.KmsMasterKeyId).toBeDefined();
    const subs = ofType('AWS::SNS::Subscription').map(([, s]) => s.Properties);
    expect(subs.map((s) => s.Endpoint).sort()).toEqual([...(config.notifications!.emails ?? [])].sort());
    for (const s of subs) expect(s).toMatchObject({ Protocol: 'email', TopicArn: topic() });
    const policy = ofType('AWS::SNS::TopicPolicy')[0]![1].Properties.PolicyDocument.Statement as Statement[];
    expect(policy).toEqual(expect.arrayContaining([expect.objectContaining({ Effect: 'Deny', Condition: { Bool: { 'aws:SecureTransport': 'false' } } })]));
  });

  it('alarms on failed executions of every state machine', () => {
    for (const [id] of ofType('AWS::StepFunctions::StateMachine')) {
      expect(
        alarms().some((a) => uses(a, 'ExecutionsFailed', { StateMachineArn: { Ref: id } })),
        id,
      ).toBe(true);
    }
  });

  it("alarms when a policy's oldest recovery point passes its RPO, on the metric Summarize publishes", () => {
    const env = resources[lid(stack.functions.Summarize)]!.Properties.Environment.Variables;
    const age = { namespace: env.POWERTOOLS_METRICS_NAMESPACE, name: summaryMetrics.oldestRecoveryPointAgeHours };
    for (const p of config.policies) {
      const dims = { service: env.POWERTOOLS_SERVICE_NAME, policyId: p.id };
      const on = (stat: string) =>
        alarms().filter((a) =>
          metricsOf(a).some(
            (m) =>
              m.stat === stat &&
              m.namespace === age.namespace &&
              m.name === age.name &&
              JSON.stringify(m.dims) === JSON.stringify(Object.fromEntries(Object.entries(dims).sort())),
          ),
        );
      expect(on('Maximum'), p.id).toEqual([
        expect.objectContaining({ Threshold: p.rpoHours, ComparisonOperator: 'GreaterThanThreshold', EvaluationPeriods: 1 }),
      ]);
      // No report for the whole RPO (schedule stopped, runs dying before Summarize) alarms too.
      expect(on('SampleCount'), p.id).toEqual([
        expect.objectContaining({
          TreatMissingData: 'breaching',
          EvaluationPeriods: Math.ceil(p.rpoHours),
          DatapointsToAlarm: Math.ceil(p.rpoHours),
          ComparisonOperator: 'LessThanThreshold',
          Threshold: 1,
        }),
      ]);
      expect(metricsOf(on('SampleCount')[0]!)[0]!.period, p.id).toBe(3600);
    }
  });

  it("alarms when a replicating policy's newest verified DR copy is older than its DR RPO, and when a run could not start replication", () => {
    const env = resources[lid(stack.functions.ReportReplication)]!.Properties.Environment.Variables;
    const replicating = config.policies.filter((p) => p.replicateTo !== undefined);
    expect(replicating.length).toBeGreaterThan(0);
    for (const p of config.policies) {
      const dims = JSON.stringify(Object.fromEntries(Object.entries({ service: env.POWERTOOLS_SERVICE_NAME, policyId: p.id }).sort()));
      const on = (name: string, stat: string) =>
        alarms().filter((a) =>
          metricsOf(a).some((m) => m.stat === stat && m.namespace === env.POWERTOOLS_METRICS_NAMESPACE && m.name === name && JSON.stringify(m.dims) === dims),
        );
      const dr = on(replicationMetrics.drRecoveryPointAgeHours, 'Maximum');
      const notStarted = on(replicationMetrics.replicationStartFailed, 'Sum');
      if (p.replicateTo === undefined) {
        expect([...dr, ...notStarted], p.id).toEqual([]);
        continue;
      }
      expect(dr, p.id).toEqual([
        expect.objectContaining({ Threshold: p.drRpoHours ?? 2 * p.rpoHours, ComparisonOperator: 'GreaterThanThreshold', EvaluationPeriods: 1 }),
      ]);
      expect(notStarted, p.id).toEqual([
        expect.objectContaining({ Threshold: 1, ComparisonOperator: 'GreaterThanOrEqualToThreshold', TreatMissingData: 'notBreaching' }),
      ]);
      expect(metricsOf(dr[0]!)[0]!.period, p.id).toBe(3600);
    }
    // A configured drRpoHours is the threshold.
    const p0 = replicating[0]!;
    const { template: t2 } = synth({ ...config, policies: config.policies.map((p) => (p.id === p0.id ? { ...p, drRpoHours: p.rpoHours + 10 } : p)) });
    const thresholds = Object.values(t2.findResources('AWS::CloudWatch::Alarm'))
      .filter((a) => JSON.stringify(a).includes(replicationMetrics.drRecoveryPointAgeHours))
      .map((a) => a.Properties.Threshold);
    expect(thresholds).toContain(p0.rpoHours + 10);
  });

  it('alarms on a failed restore test and on a host configuration backup with failed hosts, on the metrics RecordRestoreTest and SummarizeHostConfigBackup publish', () => {
    for (const [fid, name] of [
      ['RecordRestoreTest', restoreTestMetrics.failed],
      ['SummarizeHostConfigBackup', hostConfigMetrics.hostsFailed],
    ] as const) {
      const env = resources[lid(stack.functions[fid])]!.Properties.Environment.Variables;
      const on = alarms().filter((a) =>
        metricsOf(a).some(
          (m) =>
            m.name === name &&
            m.namespace === env.POWERTOOLS_METRICS_NAMESPACE &&
            m.stat === 'Sum' &&
            JSON.stringify(m.dims) === JSON.stringify({ service: env.POWERTOOLS_SERVICE_NAME }),
        ),
      );
      expect(on, name).toEqual([
        expect.objectContaining({
          Threshold: 1,
          ComparisonOperator: 'GreaterThanOrEqualToThreshold',
          EvaluationPeriods: 1,
          TreatMissingData: 'notBreaching',
          AlarmActions: [topic()],
        }),
      ]);
    }
  });

  it('reports the DR recovery point after every Backup run of a replicating policy and after each ReplicatePolicy', () => {
    for (const name of ['Backup', 'ReplicatePolicy']) {
      const sm = Object.values(resolved.stateMachines).find((x) => x.logicalId.startsWith(name + 'StateMachine'))!;
      expect(sm, name).toBeDefined();
      const states = JSON.stringify(sm.definition);
      expect(states, name).toContain('"ReportReplication"');
    }
  });

  it("alarms, in the group's site stack and to the control plane's topic, when a mover group has scheduled tasks and starts none", () => {
    const siteAlarms = Object.values(siteResources)
      .filter((r) => r.Type === 'AWS::CloudWatch::Alarm')
      .map((r) => r.Properties);
    expect(siteAlarms.length).toBe(config.moverGroups.length);
    for (const a of siteAlarms) expect(a.AlarmActions).toEqual([imported(topic())]);
    for (const g of config.moverGroups) {
      const activity = stack.sites[g.site]!.activities[g.id]!;
      const a = siteAlarms.find((x) => uses(x, 'ActivitiesScheduled', { ActivityArn: { Ref: lidIn(activity) } }));
      expect(a, g.id).toBeDefined();
      expect(uses(a!, 'ActivitiesStarted', { ActivityArn: { Ref: lidIn(activity) } }), g.id).toBe(true);
    }
  });

  it('alarms on scheduled starts that landed in the dead-letter queue', () => {
    expect(
      alarms().some((a) => uses(a, 'ApproximateNumberOfMessagesVisible', { QueueName: { 'Fn::GetAtt': [lid(stack.schedules.deadLetterQueue), 'QueueName'] } })),
    ).toBe(true);
  });

  it('shows workflows, RPO and DR recovery point per policy and mover groups on the dashboard', () => {
    const body = JSON.stringify(ofType('AWS::CloudWatch::Dashboard')[0]![1].Properties.DashboardBody);
    for (const m of [
      'ExecutionsFailed',
      summaryMetrics.oldestRecoveryPointAgeHours,
      replicationMetrics.drRecoveryPointAgeHours,
      replicationMetrics.replicationStartFailed,
      restoreTestMetrics.failed,
      restoreTestMetrics.passed,
      hostConfigMetrics.hostsFailed,
      'ActivitiesScheduled',
      'ActivityScheduleTime',
    ])
      expect(body).toContain(m);
    for (const p of config.policies) expect(body).toContain(p.id);
  });
});

describe('outputs and checks', () => {
  it('outputs what movers and the command line need', () => {
    const outputs = template.toJSON().Outputs as Record<string, { Value: unknown }>;
    expect(outputs.RepositoryKeyArn!.Value).toEqual({ 'Fn::GetAtt': [lid(stack.repositoryKey), 'Arn'] });
    expect(outputs.BackupStateMachineArn!.Value).toEqual({ Ref: lid(stack.backup.stateMachine) });
    expect(outputs.MoverGroups!.Value).toBe(config.moverGroups.map((g) => g.id).join(','));
    for (const g of config.moverGroups) {
      const key = g.id.replace(/[^A-Za-z0-9]/g, '');
      const site = stack.sites[g.site]!;
      const siteOutputs = app.synth().getStackByName(site.stackName).template.Outputs as Record<string, { Value: unknown }>;
      expect(siteOutputs[`ActivityArn${key}`]!.Value, g.id).toEqual({ Ref: lidIn(site.activities[g.id]!) });
      expect(siteOutputs[`MoverRoleArn${key}`]!.Value, g.id).toEqual({ 'Fn::GetAtt': [lidIn(stack.moverRoles[g.id]!.role), 'Arn'] });
    }
  });

  it('passes the cdk-nag AwsSolutions pack with every acknowledgment carrying a reason', () => {
    const report = new AwsSolutionsChecks(app).validateScope(app);
    expect(report.violations.map((v) => `${v.ruleName} at ${v.violatingResources.map((r) => r.constructPath).join(', ')}`)).toEqual([]);
    const reasons = app.node
      .findAll()
      .flatMap((c) => c.node.metadata)
      .filter((m) => m.type === Validations.ACKNOWLEDGED_RULES_METADATA_KEY)
      .flatMap((m) => Object.entries(m.data as Record<string, string>));
    expect(reasons.length).toBeGreaterThan(0);
    for (const [id, reason] of reasons) expect(reason.length, id).toBeGreaterThan(40);
  });
});
