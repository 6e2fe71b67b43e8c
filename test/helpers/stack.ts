/** Test fixture: an embedded stack in a temp folder, with real mover processes. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sfnClient } from '../../local/client.ts';
import { startMover, type MoverLogLine, type MoverProcess } from '../../local/movers.ts';
import { EmbeddedStack } from '../../local/stack.ts';

export interface TestStack {
  stack: EmbeddedStack;
  movers: MoverProcess[];
  logs: MoverLogLine[];
  dir: string;
  sfn: ReturnType<typeof sfnClient>;
  close(): Promise<void>;
}

export async function startTestStack(opts: { movers?: number; moverEnv?: Record<string, string> } = {}): Promise<TestStack> {
  const dir = await mkdtemp(join(tmpdir(), 'lifeboat-test-'));
  const stack = await EmbeddedStack.start({ dataDir: join(dir, 'data') });
  const logs: MoverLogLine[] = [];
  const movers = Array.from({ length: opts.movers ?? 2 }, (_, i) =>
    startMover(stack.endpoints, { name: `test-mover-${i + 1}`, group: 'site-a', env: opts.moverEnv, onLog: (l) => logs.push(l) }));
  return {
    stack, movers, logs, dir, sfn: sfnClient(stack.endpoints),
    close: async () => {
      await Promise.all(movers.map((m) => m.stop(true)));
      await stack.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
