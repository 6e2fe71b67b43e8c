/**
 * State machine definitions stored beside the template instead of in it, once they are large.
 *
 * Every workflow that runs a mover task routes it with one task state per mover group
 * (on-mover-group.ts), so the definitions grow with the number of groups, and inline
 * (`DefinitionString`) they would outgrow CloudFormation's template size limit long before
 * any other limit. Past `INLINE_DEFINITIONS_MAX_BYTES`, every definition of the stack is
 * written as a file asset (uploaded by `cdk deploy` to the bootstrap bucket, like the Lambda
 * bundles) and the state machine names it with `DefinitionS3Location`; the ARNs it holds
 * (functions, buckets, other state machines, the partition/region/account of activity ARNs)
 * become `DefinitionSubstitutions`, so the deployed definition is the same text.
 * The embedded stack reads it back (local/asl.ts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Stack, Stage } from 'aws-cdk-lib';
import * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import * as sfn from 'aws-cdk-lib/aws-stepfunctions';

/** Inline definitions, all state machines together, up to this many bytes of template JSON. */
export const INLINE_DEFINITIONS_MAX_BYTES = 300_000;

/** The prefix of every substitution key (`${Lifeboat0}`, `${Lifeboat1}`, …). */
export const SUBSTITUTION_PREFIX = 'Lifeboat';

/** A definition (`stack.resolve` of DefinitionString: a string or `Fn::Join` of strings and intrinsics) as text with `${key}` placeholders. */
export function toSubstitutions(resolved: unknown, where: string): { text: string; substitutions: Record<string, unknown> } {
  const parts = typeof resolved === 'string' ? [resolved] : joinParts(resolved, where);
  const keys = new Map<string, string>();
  const substitutions: Record<string, unknown> = {};
  let text = '';
  for (const p of parts) {
    if (typeof p === 'string') {
      if (p.includes('${')) throw new Error(`${where}: its definition holds the text '\${', which DefinitionSubstitutions would take for a placeholder`);
      text += p;
      continue;
    }
    const json = JSON.stringify(p);
    let key = keys.get(json);
    if (!key) {
      key = `${SUBSTITUTION_PREFIX}${keys.size}`;
      keys.set(json, key);
      substitutions[key] = p;
    }
    text += `\${${key}}`;
  }
  return { text, substitutions };
}

function joinParts(resolved: unknown, where: string): unknown[] {
  const join = (resolved as { 'Fn::Join'?: [string, unknown[]] } | null)?.['Fn::Join'];
  if (!join || join[0] !== '') throw new Error(`${where}: its DefinitionString is neither text nor Fn::Join of text and intrinsics`);
  return join[1];
}

/**
 * Moves every state machine definition of `stack` to a file asset when together they exceed
 * `maxInlineBytes` of template JSON. Returns where they are.
 */
export function storeLargeDefinitions(stack: Stack, maxInlineBytes = INLINE_DEFINITIONS_MAX_BYTES): 'inline' | 's3' {
  const machines = stack.node
    .findAll()
    .filter((c): c is sfn.CfnStateMachine => c instanceof sfn.CfnStateMachine && Stack.of(c) === stack && c.definitionString !== undefined);
  const resolved = machines.map((m) => ({ m, definition: stack.resolve(m.definitionString) as unknown }));
  const bytes = resolved.reduce((n, r) => n + JSON.stringify(r.definition).length, 0);
  if (bytes <= maxInlineBytes) return 'inline';
  const dir = join(Stage.of(stack)?.outdir ?? '.', `${stack.artifactId}.definitions`);
  mkdirSync(dir, { recursive: true });
  for (const { m, definition } of resolved) {
    const id = stack.getLogicalId(m);
    const { text, substitutions } = toSubstitutions(definition, `state machine ${m.node.path}`);
    const file = join(dir, `${id}.asl.json`);
    writeFileSync(file, text);
    const asset = new s3assets.Asset(m.node.scope ?? stack, 'DefinitionAsset', { path: file });
    m.definitionString = undefined;
    m.definitionS3Location = { bucket: asset.s3BucketName, key: asset.s3ObjectKey };
    m.definitionSubstitutions = substitutions as Record<string, string>;
  }
  return 's3';
}
