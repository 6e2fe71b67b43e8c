/**
 * The Lifeboat control plane: catalog table, repository buckets and their KMS keys, the
 * Lambda functions, the workflows, one
 * schedule per policy and one each for discovery and host configuration backups, the deploy-time custom resource (repository key, configuration
 * into the catalog), alarms and a dashboard. Beside it, in the same app, one stack per site
 * (mover-site-stack.ts) holds each of the site's mover groups' Activity, role and alarm: this
 * stack holds nothing per mover group, so no number of sites meets CloudFormation's
 * resource limit, and its state machine definitions move out of the template once they are
 * large (definitions-in-s3.ts).
 */
import { CfnOutput, CustomResource, Duration, RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type * as kms from 'aws-cdk-lib/aws-kms';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import * as cr from 'aws-cdk-lib/custom-resources';
import type { Construct } from 'constructs';
import { fileURLToPath } from 'node:url';
import { lambdaFunctions, type LambdaFunctionId } from '../../contracts/functions.ts';
import { discoverySchedule, hostConfigBackupSettings, type LifeboatConfig } from '../../core/config.ts';
import { BackupWorkflow } from './backup-workflow.ts';
import { FailbackWorkflow } from './failback-workflow.ts';
import { ReconcileWorkflow } from './reconcile-workflow.ts';
import { DiscoverWorkflow } from './discover-workflow.ts';
import { HostConfigBackupWorkflow } from './host-config-workflow.ts';
import { accessStatements, functionAccess } from './function-access.ts';
import { Monitoring } from './monitoring.ts';
import { OperatorApi } from './operator-api.ts';
import type { MoverIdentity } from './mover-identity.ts';
import { MoverSiteStack, exportRepositories, moverActivityName, moverSiteStackName } from './mover-site-stack.ts';
import { storeLargeDefinitions } from './definitions-in-s3.ts';
import { acknowledge, arnWildcardFinding } from './nag.ts';
import { RepositoryStorage } from './repository-storage.ts';
import { PolicySchedules } from './schedules.ts';
import { addRecoveryWorkflows, type RecoveryWorkflows } from './recovery-workflows.ts';

const projectRoot = fileURLToPath(new URL('../../', import.meta.url));

/** Powertools service name and metrics namespace of every function (alarms read the same). */
export const SERVICE_NAME = 'lifeboat';
export const metricsNamespace = (stackName: string) => `Lifeboat/${stackName}`;

export interface LifeboatStackProps extends StackProps {
  /** The validated deployment configuration (core/config.ts): groups, hosts, repositories, policies. */
  config: LifeboatConfig;
}

export class LifeboatStack extends Stack {
  readonly table: dynamodb.TableV2;
  readonly bucket: s3.Bucket;
  readonly repositoryKey: kms.Key;
  /** Storage of every repository this stack creates (those without an `endpoint`), by id. */
  readonly repositories: Record<string, RepositoryStorage> = {};
  readonly functions: Record<LambdaFunctionId, lambda.IFunction>;
  /** Each mover group's role, in its site's stack. */
  readonly moverRoles: Record<string, MoverIdentity> = {};
  /** The stack of each site that has mover groups, by site id (siblings of this stack in the app). */
  readonly sites: Record<string, MoverSiteStack> = {};
  /** Where the state machine definitions are: in the template, or in file assets beside it. */
  readonly definitions: 'inline' | 's3';
  readonly schedules: PolicySchedules;
  readonly monitoring: Monitoring;
  readonly backup: BackupWorkflow;
  readonly failback: FailbackWorkflow;
  /** The failure path of Backup executions that stopped without their own (aborted, timed out). */
  readonly reconcile: ReconcileWorkflow;
  readonly discover: DiscoverWorkflow;
  readonly hostConfigBackup: HostConfigBackupWorkflow;
  readonly recovery: RecoveryWorkflows;
  /** Each mover group's Activity, by name (it is created in the group's site stack). */
  readonly activities: Record<string, sfn.IActivity>;

  constructor(scope: Construct, id: string, props: LifeboatStackProps) {
    super(scope, id, { suppressTemplateIndentation: true, ...props });
    const moverGroups = props.config.moverGroups.map((g) => g.id);

    this.table = new dynamodb.TableV2(this, 'Catalog', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billing: dynamodb.Billing.onDemand(),
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      deletionProtection: true,
      removalPolicy: RemovalPolicy.RETAIN,
    });

    const config = props.config;
    const primary = config.repositories[0]!;
    if (primary.endpoint)
      throw new Error(
        `repositories[0].endpoint = ${JSON.stringify(primary.endpoint)}: the first repository is the stack's own S3 bucket; list a repository on another endpoint after it`,
      );
    config.repositories.forEach((r, i) => {
      if (!r.endpoint) this.repositories[r.id] = new RepositoryStorage(this, i === 0 ? 'Repository' : `Repository-${r.id}`, { repository: r });
    });
    this.bucket = this.repositories[primary.id]!.bucket;
    this.repositoryKey = this.repositories[primary.id]!.key;
    const stored = Object.values(this.repositories).map((r) => ({ bucket: r.bucket, key: r.key }));
    /** Bucket per repository id; a repository on another endpoint names its own (default: its id). */
    const buckets = Object.fromEntries(config.repositories.map((r) => [r.id, this.repositories[r.id]?.bucket.bucketName ?? r.bucket ?? r.id]));

    const functions = {} as Record<LambdaFunctionId, lambda.IFunction>;
    for (const [fid, def] of Object.entries(lambdaFunctions) as [LambdaFunctionId, (typeof lambdaFunctions)[LambdaFunctionId]][]) {
      const access = functionAccess[fid];
      const f = new nodejs.NodejsFunction(this, fid, {
        entry: `${projectRoot}${def.entry}`,
        handler: def.handler,
        runtime: lambda.Runtime.NODEJS_24_X,
        architecture: lambda.Architecture.ARM_64,
        projectRoot,
        depsLockFilePath: `${projectRoot}package-lock.json`,
        bundling: { format: nodejs.OutputFormat.ESM, target: 'node24', minify: true, sourceMap: true },
        environment: {
          CATALOG_TABLE: this.table.tableName,
          LIFEBOAT_FUNCTION: fid,
          LIFEBOAT_RUN_BUCKET: this.bucket.bucketName,
          REPOSITORY_KMS_KEY_ID: this.repositoryKey.keyArn,
          POWERTOOLS_SERVICE_NAME: SERVICE_NAME,
          POWERTOOLS_METRICS_NAMESPACE: metricsNamespace(this.stackName),
          POWERTOOLS_LOG_LEVEL: 'INFO',
          NODE_OPTIONS: '--enable-source-maps', // stack traces name the TypeScript source lines
        },
        timeout: Duration.seconds(access?.timeoutSeconds ?? 60),
        memorySize: access?.memoryMiB ?? 512,
        tracing: lambda.Tracing.ACTIVE,
        logGroup: new logs.LogGroup(this, `${fid}Logs`, { retention: logs.RetentionDays.THREE_MONTHS, removalPolicy: RemovalPolicy.DESTROY }),
      });
      for (const s of accessStatements(access, { table: this.table, repositories: stored })) f.addToRolePolicy(s);
      acknowledge(
        f,
        "Lambda's basic execution role (AWS managed) only lets the function write its own logs; X-Ray tracing (PutTraceSegments, PutTelemetryRecords) takes no resource ARN, nor does SendTaskSuccess with the token of a service integration's task (the slot queue's AcquireSlot and ReleaseSlot, cdk/lib/function-access.ts taskResponses).",
        'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
        'AwsSolutions-IAM5[Resource::*]',
      );
      acknowledge(
        f,
        'The function reads or writes content-addressed repository objects whose names are not known in advance, only under the prefixes its access declaration names (cdk/lib/function-access.ts).',
        ...stored.flatMap((r) =>
          ['chunks/', 'packs/', 'index/', 'manifests/', 'keys/', 'movers/', 'releases/', 'quarantine/', 'host-config/', 'progress/', 'runs/'].map((p) =>
            arnWildcardFinding(r.bucket, `/${p}*`),
          ),
        ),
      );
      functions[fid] = f;
    }
    this.functions = functions;

    this.activities = Object.fromEntries(
      moverGroups.map((g) => [g, sfn.Activity.fromActivityName(this, `MoverGroup-${g}`, moverActivityName(this.stackName, g))]),
    );
    // Only groups that serve hosts take backups; a DR-only group restores and replicates.
    const backupGroups = Object.fromEntries(props.config.moverGroups.filter((g) => g.hosts.length > 0).map((g) => [g.id, this.activities[g.id]!]));
    // Restore, deep verify, prune, replication: any group may restore or verify, the execution names it.
    this.recovery = addRecoveryWorkflows(this, {
      functions,
      activities: this.activities,
      policies: config.policies,
      runBucket: this.bucket,
      // Garbage collection for every repository: a DR repository's chunks outlive the manifests Prune deletes there too.
      repositories: config.repositories.map((r) => ({
        id: r.id,
        bucket: buckets[r.id]!,
        ...(r.endpoint ? { endpoint: r.endpoint } : {}),
        ...(r.objectLock ? { objectLockDays: r.objectLock.days } : {}),
      })),
    });
    this.backup = new BackupWorkflow(this, 'Backup', {
      functions,
      activities: backupGroups,
      runBucket: this.bucket,
      ...(props.config.backup?.vmConcurrency ? { vmConcurrency: props.config.backup.vmConcurrency } : {}),
      ...(props.config.backup?.dispatchConcurrency ? { dispatchConcurrency: props.config.backup.dispatchConcurrency } : {}),
      ...(props.config.backup?.verifyRangePieces ? { verifyRangePieces: props.config.backup.verifyRangePieces } : {}),
      // A run that commits backups of a policy with a DR repository starts their replication.
      replicatePolicy: this.recovery.replicatePolicy.stateMachine,
    });

    // Failback after a real failover: the production disks brought to the DR VM's backups, then the switch back.
    this.failback = new FailbackWorkflow(this, 'Failback', { functions, activities: this.activities, backup: this.backup.stateMachine });
    new CfnOutput(this, 'FailbackStateMachineArn', { value: this.failback.stateMachine.stateMachineArn });

    // A Backup execution that stopped without its failure path (aborted, timed out) is reconciled through it.
    this.reconcile = new ReconcileWorkflow(this, 'Reconcile', { functions, activities: backupGroups, backup: this.backup.stateMachine });
    // Discovery: each libvirt host's domains into the catalog, through the group serving it.
    this.discover = new DiscoverWorkflow(this, 'Discover', { functions, activities: backupGroups, drActivities: this.activities });
    // Host configuration backups: each libvirt host's networks, pools and domain definitions, through the group serving it.
    this.hostConfigBackup = new HostConfigBackupWorkflow(this, 'HostConfigBackup', { functions, activities: backupGroups });

    // --- schedules: one per policy, starting the Backup workflow ------------------------------
    const discovery = discoverySchedule(config);
    const hostConfig = hostConfigBackupSettings(config).schedule;
    this.schedules = new PolicySchedules(this, 'Schedules', {
      policies: config.policies,
      backup: this.backup.stateMachine,
      ...(discovery ? { discovery: { stateMachine: this.discover.stateMachine, schedule: discovery } } : {}),
      ...(hostConfig ? { hostConfigBackup: { stateMachine: this.hostConfigBackup.stateMachine, schedule: hostConfig } } : {}),
    });

    // --- on every deploy: the repository key exists, the catalog holds this configuration ----
    const provider = new cr.Provider(this, 'DeployProvider', {
      onEventHandler: functions.OnDeploy,
      logGroup: new logs.LogGroup(this, 'DeployProviderLogs', { retention: logs.RetentionDays.ONE_MONTH, removalPolicy: RemovalPolicy.DESTROY }),
    });
    const deployment = new CustomResource(this, 'Deployment', {
      serviceToken: provider.serviceToken,
      resourceType: 'Custom::LifeboatDeployment',
      properties: { configJson: JSON.stringify(config), buckets, primaryBucket: this.bucket.bucketName },
    });
    deployment.node.addDependency(this.table);
    acknowledge(
      provider,
      'The custom resource provider framework (aws-cdk-lib) writes only its own logs (AWS managed basic execution role) and may invoke only the OnDeploy function, in any version (hence :*).',
      'AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]',
      arnWildcardFinding(functions.OnDeploy, ':*'),
    );

    // --- the read-only operator API (lifeboat --stack, consoles) ----------------------------
    new OperatorApi(this, 'Operator', { fn: functions.OperatorApi, bucket: this.bucket, backup: this.backup.stateMachine });

    // --- alarms and dashboard: keep this after every workflow (it covers all state machines) ----
    this.monitoring = new Monitoring(this, 'Monitoring', {
      config,
      metricsNamespace: metricsNamespace(this.stackName),
      serviceName: SERVICE_NAME,
      functions,
      deadLetterQueue: this.schedules.deadLetterQueue,
    });

    // --- movers: per site, a stack with each group's Activity, least-privilege role and alarm ----
    const exported = exportRepositories(this, this.repositories);
    for (const site of new Set(config.moverGroups.map((g) => g.site))) {
      const name = moverSiteStackName(this.stackName, site);
      const siteStack = new MoverSiteStack(scope, name, {
        ...(props.env ? { env: props.env } : {}),
        stackName: name,
        description: `Lifeboat ${this.stackName}: the mover groups of site ${site} (Activity, IAM role, alarm per group)`,
        suppressTemplateIndentation: true,
        controlPlane: this.stackName,
        site,
        groups: config.moverGroups.filter((g) => g.site === site),
        repositories: exported,
        alarmTopic: this.monitoring.topic,
      });
      this.sites[site] = siteStack;
      Object.assign(this.moverRoles, siteStack.moverRoles);
    }
    this.definitions = storeLargeDefinitions(this);

    new CfnOutput(this, 'CatalogTableName', { value: this.table.tableName });
    new CfnOutput(this, 'RepositoryBucketName', {
      value: this.bucket.bucketName,
      description: 'The primary repository (LIFEBOAT_BUCKET for tools; jobs carry their bucket)',
    });
    new CfnOutput(this, 'RepositoryKeyArn', {
      value: this.repositoryKey.keyArn,
      description: "KMS key that wraps the repository key: the mover's LIFEBOAT_KMS_KEY_ID",
    });
    new CfnOutput(this, 'BackupStateMachineArn', { value: this.backup.stateMachine.stateMachineArn });
    new CfnOutput(this, 'DiscoverStateMachineArn', { value: this.discover.stateMachine.stateMachineArn });
    new CfnOutput(this, 'HostConfigBackupStateMachineArn', { value: this.hostConfigBackup.stateMachine.stateMachineArn });
    new CfnOutput(this, 'ReconcileStateMachineArn', { value: this.reconcile.stateMachine.stateMachineArn });
    new CfnOutput(this, 'RepositoryBuckets', {
      value: this.toJsonString(buckets),
      description: 'Bucket per repository id (JSON): `lifeboat --stack` reads DR restore points with it',
    });
    new CfnOutput(this, 'AlarmTopicArn', { value: this.monitoring.topic.topicArn });
    new CfnOutput(this, 'DashboardName', { value: this.monitoring.dashboard.dashboardName });
    new CfnOutput(this, 'MoverGroups', {
      value: moverGroups.join(','),
      description: "The mover groups (comma-separated); each group's activity and role ARNs are outputs of its site's stack (<stack>-site-<site>)",
    });
  }
}
