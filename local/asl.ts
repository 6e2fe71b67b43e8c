/**
 * The state machines the embedded stack runs, taken from the CDK app's synthesized
 * CloudFormation template: the DefinitionString with its intrinsics resolved to local
 * ARNs. The same function resolves the template `cdk synth` writes, so a test can prove
 * the executed ASL equals the deployed one.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
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
  /** Function id → its timeout in seconds, as the template sets it (Lambda's default of 3 when it sets none). */
  functionTimeouts: Record<string, number>;
  /** Mover group activity ARNs by activity name: those the template creates and those its state machines name. */
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

/** Lambda's timeout for a function whose template sets none (AWS::Lambda::Function `Timeout`). */
export const LAMBDA_DEFAULT_TIMEOUT_SECONDS = 3;
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
  const out: ResolvedTemplate = { stateMachines: {}, functions: {}, functionTimeouts: {}, activities: {}, tables: {} };
  const primary = (t.Outputs?.RepositoryBucketName?.Value as { Ref?: string } | undefined)?.Ref;
  if (primary) out.primaryBucket = primary;
  for (const [lid, r] of Object.entries(t.Resources)) {
    if (r.Type === 'AWS::StepFunctions::StateMachine') {
      const text = resolveIntrinsics(r.Properties?.DefinitionString, t);
      if (typeof text !== 'string') throw new Error(`state machine ${lid} has no DefinitionString`);
      const definition = JSON.parse(text) as Record<string, unknown>;
      out.stateMachines[lid] = { logicalId: lid, arn: resolveRef(lid, t), definition };
      // A mover group's Activity lives in its site's stack; the workflows name it by ARN.
      for (const [, s] of taskStates(definition)) {
        const name = /^arn:aws:states:[^:]*:[^:]*:activity:(.+)$/.exec(s.Resource ?? '')?.[1];
        if (name) out.activities[name] = s.Resource!;
      }
    } else if (r.Type === 'AWS::Lambda::Function') {
      const fid = (r.Properties?.Environment as { Variables?: Record<string, string> } | undefined)?.Variables?.LIFEBOAT_FUNCTION;
      if (fid) out.functions[lambdaArn(lid)] = fid;
      if (fid) out.functionTimeouts[fid] = typeof r.Properties?.Timeout === 'number' ? r.Properties.Timeout : LAMBDA_DEFAULT_TIMEOUT_SECONDS;
    } else if (r.Type === 'AWS::DynamoDB::GlobalTable' || r.Type === 'AWS::DynamoDB::Table') {
      const p = r.Properties as ResolvedTemplate['tables'][string];
      out.tables[lid] = { KeySchema: p.KeySchema, AttributeDefinitions: p.AttributeDefinitions };
    } else if (r.Type === 'AWS::StepFunctions::Activity') {
      out.activities[r.Properties?.Name as string] = resolveRef(lid, t);
    }
  }
  return out;
}

/**
 * Synthesizes the CDK app in process (no bundling) and returns the control plane's template,
 * its definitions inline (read back from their assets, definitions-in-s3.ts) and with the
 * resources of the site stacks (the mover groups' Activities) merged in.
 */
export function synthesizeTemplate(outdir: string, config: LifeboatConfig): CfnTemplate {
  const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
  const stack = new LifeboatStack(app, 'Lifeboat', { config });
  const assembly = app.synth();
  const main = inlineDefinitions(assembly.getStackByName(stack.stackName).template as CfnTemplate, assembly.directory);
  for (const site of Object.values(stack.sites)) {
    for (const [lid, r] of Object.entries((assembly.getStackByName(site.stackName).template as CfnTemplate).Resources)) {
      if (main.Resources[lid]) throw new Error(`site stack ${site.stackName} and ${stack.stackName} both have a resource ${lid}`);
      main.Resources[lid] = r;
    }
  }
  return main;
}

/**
 * A template whose state machines name their definition in S3 (an asset of the assembly in
 * `assemblyDir`, with DefinitionSubstitutions) turned into one with DefinitionString, the same
 * text as `Fn::Join` of its parts.
 */
export function inlineDefinitions(t: CfnTemplate, assemblyDir: string): CfnTemplate {
  const resources = Object.fromEntries(
    Object.entries(t.Resources).map(([lid, r]) => {
      const p = r.Properties ?? {};
      const at = p.DefinitionS3Location as { Key?: unknown } | undefined;
      if (r.Type !== 'AWS::StepFunctions::StateMachine' || !at) return [lid, r];
      if (typeof at.Key !== 'string') throw new Error(`state machine ${lid}: DefinitionS3Location.Key is not a file asset's key`);
      const text = readFileSync(join(assemblyDir, `asset.${at.Key}`), 'utf8');
      const subs = (p.DefinitionSubstitutions ?? {}) as Record<string, unknown>;
      const parts = text.split(/\$\{([A-Za-z0-9_]+)\}/).map((part, i) => {
        if (i % 2 === 0) return part;
        if (!(part in subs)) throw new Error(`state machine ${lid}: its definition names \${${part}}, which DefinitionSubstitutions lacks`);
        return subs[part];
      });
      const { DefinitionS3Location: _at, DefinitionSubstitutions: _subs, ...rest } = p;
      return [lid, { ...r, Properties: { ...rest, DefinitionString: { 'Fn::Join': ['', parts] } } }];
    }),
  );
  return { ...t, Resources: resources };
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
