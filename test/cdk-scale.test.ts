/**
 * A deployment of 50 and of 200 sites (one mover group each) fits CloudFormation: every stack
 * of the app under its quotas, the control plane's stack the same size whatever the number of
 * sites, the site stacks referring to it only through its exports, and the workflows' activity
 * ARNs naming the activities the site stacks create.
 *
 * The quotas checked, from AWS's "CloudFormation quotas" (AWS CloudFormation User Guide):
 * - Resources: 500 per template (`cdk synth` itself refuses more).
 * - Template body size in an Amazon S3 object: 1 MB. `cdk deploy` uploads every template to
 *   the bootstrap bucket (the 51,200-byte limit of a body passed in the request does not
 *   apply). Checked as 1,000,000 bytes of the file `cdk synth` writes, the bound aws-cdk-lib
 *   itself warns at (TEMPLATE_BODY_MAXIMUM_SIZE).
 * - Outputs: 200 per template.
 * And Step Functions' quota on a state machine definition: 1 MB ("Step Functions service
 * quotas"), checked on each definition as deployed (its S3 text with substitutions applied).
 */
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import { afterAll, describe, expect, it } from 'vitest';
import { LifeboatStack } from '../cdk/lib/lifeboat-stack.ts';
import { loadConfig, type LifeboatConfig } from '../core/config.ts';
import { inlineDefinitions, resolveTemplate, taskStates, type CfnTemplate } from '../local/asl.ts';

const MAX_RESOURCES = 500;
const MAX_TEMPLATE_BYTES = 1_000_000;
const MAX_OUTPUTS = 200;
const MAX_DEFINITION_BYTES = 1024 * 1024;

const example = loadConfig();
/** The example configuration plus `n` sites, each with one mover group serving one host. */
function fleetConfig(n: number): LifeboatConfig {
  const sites = Array.from({ length: n }, (_, i) => ({ id: `branch-${i}` }));
  return {
    ...example,
    sites: [...example.sites, ...sites],
    moverGroups: [...example.moverGroups, ...sites.map((s, i) => ({ id: `branch-${i}`, site: s.id, hosts: [`branch-host-${i}`] }))],
    hosts: [...example.hosts, ...sites.map((_, i) => ({ id: `branch-host-${i}`, maxConcurrentBackups: 2 }))],
  };
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

type Template = CfnTemplate & { Outputs?: Record<string, { Value?: unknown; Export?: { Name: unknown } }> };

/** Every `Fn::ImportValue` name in a template. */
function imports(v: unknown): unknown[] {
  if (Array.isArray(v)) return v.flatMap(imports);
  if (v === null || typeof v !== 'object') return [];
  const o = v as Record<string, unknown>;
  return 'Fn::ImportValue' in o ? [o['Fn::ImportValue']] : Object.values(o).flatMap(imports);
}

describe.each([50, 200])('a deployment of %i sites', (sites) => {
  it('keeps every stack under the resource, template size and output quotas, the control plane the same size', { timeout: 1_800_000 }, () => {
    const outdir = mkdtempSync(join(tmpdir(), 'lifeboat-cdk-scale-'));
    dirs.push(outdir);
    const config = fleetConfig(sites);
    const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
    const main = new LifeboatStack(app, 'Lifeboat', { config });
    const assembly = app.synth();

    const stacks = assembly.stacks.map((s) => {
      const template = s.template as Template;
      return {
        name: s.stackName,
        resources: Object.keys(template.Resources).length,
        bytes: statSync(join(assembly.directory, s.templateFile)).size,
        outputs: Object.keys(template.Outputs ?? {}).length,
        template,
        dependsOn: s.dependencies.map((d) => d.id).filter((d) => !d.endsWith('.assets')),
      };
    });
    expect(stacks.length).toBe(1 + new Set(config.moverGroups.map((g) => g.site)).size);
    const largest = stacks.reduce((a, b) => (b.resources > a.resources ? b : a));
    const biggest = stacks.reduce((a, b) => (b.bytes > a.bytes ? b : a));
    console.log(
      `${sites} sites: ${stacks.length} stacks; most resources: ${largest.name} ${largest.resources}; largest template: ${biggest.name} ${biggest.bytes} bytes`,
    );
    for (const s of stacks) {
      expect(s.resources, s.name).toBeLessThanOrEqual(MAX_RESOURCES);
      expect(s.bytes, s.name).toBeLessThanOrEqual(MAX_TEMPLATE_BYTES);
      expect(s.outputs, s.name).toBeLessThanOrEqual(MAX_OUTPUTS);
    }
    // Nothing per group in the control plane's stack: the example's three groups' site stacks hold 4 resources a group.
    const control = stacks.find((s) => s.name === main.stackName)!;
    expect(
      Object.values(control.template.Resources).filter(
        (r) => r.Type === 'AWS::StepFunctions::Activity' || (r.Type === 'AWS::IAM::Role' && JSON.stringify(r).includes('mover')),
      ),
    ).toEqual([]);
    expect(main.definitions).toBe('s3');

    // References run site → control plane only, each import naming an export of the control plane's stack.
    expect(control.dependsOn).toEqual([]);
    const exported = new Set(Object.values(control.template.Outputs ?? {}).flatMap((o) => (o.Export ? [JSON.stringify(o.Export.Name)] : [])));
    for (const s of stacks.filter((x) => x !== control)) {
      expect(s.dependsOn, s.name).toContain(control.name);
      const names = imports(s.template);
      expect(names.length, `${s.name} imports nothing from the control plane`).toBeGreaterThan(0);
      for (const n of names)
        expect(exported.has(JSON.stringify(n)), `${s.name} imports ${JSON.stringify(n)}, which the control plane does not export`).toBe(true);
    }

    // The deployed definitions (S3 text, substitutions applied) fit Step Functions, and their activity tasks name the site stacks' activities.
    const resolved = resolveTemplate(inlineDefinitions(control.template, assembly.directory));
    let largestDefinition = 0;
    const named = new Set<string>();
    for (const sm of Object.values(resolved.stateMachines)) {
      largestDefinition = Math.max(largestDefinition, Buffer.byteLength(JSON.stringify(sm.definition)));
      for (const [, t] of taskStates(sm.definition)) if (t.Resource?.includes(':activity:')) named.add(t.Resource.split(':').pop()!);
    }
    console.log(`${sites} sites: largest state machine definition ${largestDefinition} bytes`);
    expect(largestDefinition).toBeLessThanOrEqual(MAX_DEFINITION_BYTES);
    const created = stacks
      .filter((s) => s !== control)
      .flatMap((s) => Object.values(s.template.Resources).filter((r) => r.Type === 'AWS::StepFunctions::Activity'))
      .map((r) => r.Properties?.Name as string);
    expect(created.sort()).toEqual(config.moverGroups.map((g) => `Lifeboat-mover-${g.id}`).sort());
    expect([...named].sort()).toEqual(created.sort());
    // The asset cdk deploy uploads is the text the control plane's template names.
    const backup = Object.entries(control.template.Resources).find(
      ([lid, r]) => r.Type === 'AWS::StepFunctions::StateMachine' && lid.startsWith('BackupStateMachine'),
    )!;
    const key = (backup[1].Properties?.DefinitionS3Location as { Key: string }).Key;
    expect(readFileSync(join(assembly.directory, `asset.${key}`), 'utf8')).toContain('"BackupHosts"');
  });
});
