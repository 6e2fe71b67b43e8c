/**
 * The embedded stack executes the very state machines `cdk synth` produces: the CLI's
 * template (with esbuild bundling, as a deploy would use) resolves to the same ASL.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, expect, it } from 'vitest';
import { resolveTemplate, type CfnTemplate } from '../local/asl.ts';
import { EmbeddedStack } from '../local/stack.ts';

const run = promisify(execFile);
const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

it('runs the same ASL that `cdk synth` writes for deployment', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-synth-'));
  dirs.push(dir);
  const out = join(dir, 'cdk.out');
  // Offline and without Docker: a `docker` first on PATH that records any call and fails.
  const bin = join(dir, 'bin');
  await mkdir(bin);
  await writeFile(join(bin, 'docker'), `#!/bin/sh\necho "$@" >> ${join(dir, 'docker-called')}\nexit 1\n`, { mode: 0o755 });
  await run(process.execPath, ['node_modules/aws-cdk/bin/cdk', 'synth', '-q', '-o', out], {
    env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, CDK_HOME: join(dir, 'cdk-home'), CDK_DISABLE_CLI_TELEMETRY: '1' },
  });
  expect(existsSync(join(dir, 'docker-called'))).toBe(false);
  const template = JSON.parse(await readFile(join(out, 'Lifeboat.template.json'), 'utf8')) as CfnTemplate & {
    Resources: Record<string, { Metadata?: Record<string, string> }>;
  };
  // Every registered function was bundled by the local esbuild into its asset.
  const bundled = Object.values(template.Resources).filter(
    (r) =>
      r.Type === 'AWS::Lambda::Function' && (r.Properties?.Environment as { Variables?: Record<string, string> } | undefined)?.Variables?.LIFEBOAT_FUNCTION,
  );
  expect(bundled.length).toBeGreaterThan(0);
  for (const r of bundled) expect(existsSync(join(out, r.Metadata!['aws:asset:path']!, 'index.mjs')), r.Metadata!['aws:asset:path']).toBe(true);
  const deployed = resolveTemplate(template);
  expect(Object.keys(deployed.stateMachines).length).toBeGreaterThan(0);

  const stack = await EmbeddedStack.start({ dataDir: join(dir, 'data') });
  try {
    expect(stack.template.stateMachines).toEqual(deployed.stateMachines);
    expect(stack.template.activities).toEqual(deployed.activities);
    expect(stack.template.functions).toEqual(deployed.functions);
  } finally {
    await stack.stop();
  }
  // esbuild bundles every function on its own, as a deploy does: minutes on a loaded 2-core machine.
}, 600_000);
