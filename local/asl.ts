/**
 * The state machines the embedded stack runs, taken from the CDK app's synthesized
 * CloudFormation template: the DefinitionString with its intrinsics resolved to local
 * ARNs. The same function resolves the template `cdk synth` writes, so a test can prove
 * the executed ASL equals the deployed one.
 */
import { App } from 'aws-cdk-lib';
import { LifeboatStack } from '../cdk/lib/lifeboat-stack.ts';
import type { LifeboatConfig } from '../core/config.ts';

export const LOCAL_REGION = 'us-east-1';
export const LOCAL_ACCOUNT = '000000000000';

interface CfnResource {
  Type: string;
  Properties?: Record<string, unknown>;
}
export interface CfnTemplate {
  Resources: Record<string, CfnResource>;
  Outputs?: Record<string, { Value?: unknown }>;
}

export interface LocalStateMachine {
  logicalId: string;
  arn: string;
  definition: Record<string, unknown>;
}

export interface ResolvedTemplate {
  stateMachines: Record<string, LocalStateMachine>;
  /** Lambda ARN → the function id of contracts/functions.ts. */
  functions: Record<string, string>;
  /** Mover group activity ARNs by activity name. */
  activities: Record<string, string>;
  /**
   * The logical id of the stack's own bucket (output RepositoryBucketName). A bucket's Ref in
   * a definition (the BackupVms Map's reader and writer) resolves to its logical id; the
   * embedded stack maps that id to its local bucket.
   */
  primaryBucket?: string;
  /** Key schemas of the DynamoDB tables, by logical id, so local tables match the deployed ones. */
  tables: Record<string, { KeySchema: { AttributeName: string; KeyType: string }[]; AttributeDefinitions: { AttributeName: string; AttributeType: string }[] }>;
}

const lambdaArn = (lid: string) => `arn:aws:lambda:${LOCAL_REGION}:${LOCAL_ACCOUNT}:function:${lid}`;

function resolveIntrinsics(value: unknown, t: CfnTemplate): unknown {
  if (Array.isArray(value)) return value.map((v) => resolveIntrinsics(v, t));
  if (value === null || typeof value !== 'object') return value;
  const o = value as Record<string, unknown>;
  const keys = Object.keys(o);
  if (keys.length === 1) {
    const [k] = keys as [string];
    const arg = o[k];
    if (k === 'Ref') return resolveRef(arg as string, t);
    if (k === 'Fn::GetAtt') {
      const [lid, attr] = arg as [string, string];
      const r = t.Resources[lid];
      if (r?.Type === 'AWS::Lambda::Function' && attr === 'Arn') return lambdaArn(lid);
      throw new Error(`cannot resolve Fn::GetAtt ${lid}.${attr} (${r?.Type ?? 'no such resource'}) for the embedded stack`);
    }
    if (k === 'Fn::Join') {
      const [sep, parts] = arg as [string, unknown[]];
      return parts.map((p) => resolveIntrinsics(p, t)).join(sep);
    }
    if (k.startsWith('Fn::')) throw new Error(`the embedded stack cannot resolve ${k} yet`);
  }
  return Object.fromEntries(keys.map((k) => [k, resolveIntrinsics(o[k], t)]));
}

function resolveRef(name: string, t: CfnTemplate): string {
  if (name === 'AWS::Partition') return 'aws';
  if (name === 'AWS::Region') return LOCAL_REGION;
  if (name === 'AWS::AccountId') return LOCAL_ACCOUNT;
  if (name === 'AWS::URLSuffix') return 'amazonaws.com';
  const r = t.Resources[name];
  if (r?.Type === 'AWS::StepFunctions::Activity') return `arn:aws:states:${LOCAL_REGION}:${LOCAL_ACCOUNT}:activity:${r.Properties?.Name as string}`;
  if (r?.Type === 'AWS::StepFunctions::StateMachine') return `arn:aws:states:${LOCAL_REGION}:${LOCAL_ACCOUNT}:stateMachine:${name}`;
  if (r?.Type === 'AWS::Lambda::Function' || r?.Type === 'AWS::S3::Bucket') return name;
  throw new Error(`cannot resolve Ref ${name} (${r?.Type ?? 'no such resource'}) for the embedded stack`);
}

/** Resolves every state machine, function and activity of a synthesized template. */
export function resolveTemplate(t: CfnTemplate): ResolvedTemplate {
  const out: ResolvedTemplate = { stateMachines: {}, functions: {}, activities: {}, tables: {} };
  const primary = (t.Outputs?.RepositoryBucketName?.Value as { Ref?: string } | undefined)?.Ref;
  if (primary) out.primaryBucket = primary;
  for (const [lid, r] of Object.entries(t.Resources)) {
    if (r.Type === 'AWS::StepFunctions::StateMachine') {
      const text = resolveIntrinsics(r.Properties?.DefinitionString, t);
      if (typeof text !== 'string') throw new Error(`state machine ${lid} has no DefinitionString`);
      out.stateMachines[lid] = { logicalId: lid, arn: resolveRef(lid, t), definition: JSON.parse(text) as Record<string, unknown> };
    } else if (r.Type === 'AWS::Lambda::Function') {
      const fid = (r.Properties?.Environment as { Variables?: Record<string, string> } | undefined)?.Variables?.LIFEBOAT_FUNCTION;
      if (fid) out.functions[lambdaArn(lid)] = fid;
    } else if (r.Type === 'AWS::DynamoDB::GlobalTable' || r.Type === 'AWS::DynamoDB::Table') {
      const p = r.Properties as ResolvedTemplate['tables'][string];
      out.tables[lid] = { KeySchema: p.KeySchema, AttributeDefinitions: p.AttributeDefinitions };
    } else if (r.Type === 'AWS::StepFunctions::Activity') {
      out.activities[r.Properties?.Name as string] = resolveRef(lid, t);
    }
  }
  return out;
}

/** Synthesizes the CDK app in process (no bundling) and returns its template. */
export function synthesizeTemplate(outdir: string, config: LifeboatConfig): CfnTemplate {
  const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new LifeboatStack(app, 'Lifeboat', { config });
  return app.synth().getStackByName(stack.stackName).template as CfnTemplate;
}

/** A state of an ASL definition, as the runner reads it. */
export type AslState = Record<string, unknown> & { Type: string; Resource?: string };

/** Every Task state of a definition, through Map and Parallel states. */
export function taskStates(def: Record<string, unknown>): [string, AslState][] {
  const out: [string, AslState][] = [];
  for (const [name, s] of Object.entries(def.States as Record<string, AslState>)) {
    if (s.Type === 'Task') out.push([name, s]);
    const inner = (s.ItemProcessor ?? s.Iterator) as Record<string, unknown> | undefined;
    if (inner) out.push(...taskStates(inner));
    for (const b of (s.Branches as Record<string, unknown>[] | undefined) ?? []) out.push(...taskStates(b));
  }
  return out;
}
