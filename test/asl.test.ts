/**
 * The embedded stack executes the very state machines `cdk synth` produces: the CLI's
 * template (with esbuild bundling, as a deploy would use) resolves to the same ASL.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
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
  await run(process.execPath, ['node_modules/aws-cdk/bin/cdk', 'synth', '-q', '-o', out], {
    env: { ...process.env, CDK_HOME: join(dir, 'cdk-home'), CDK_DISABLE_CLI_TELEMETRY: '1' },
  });
  const deployed = resolveTemplate(JSON.parse(await readFile(join(out, 'Lifeboat.template.json'), 'utf8')) as CfnTemplate);
  expect(Object.keys(deployed.stateMachines).length).toBeGreaterThan(0);

  const stack = await EmbeddedStack.start({ dataDir: join(dir, 'data') });
  try {
    expect(stack.template.stateMachines).toEqual(deployed.stateMachines);
    expect(stack.template.activities).toEqual(deployed.activities);
    expect(stack.template.functions).toEqual(deployed.functions);
  } finally {
    await stack.stop();
  }
});
