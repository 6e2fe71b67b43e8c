/**
 * The embedded stack's Map Run (local/distributed-map.ts) reads MaxConcurrencyPath as AWS
 * does: the whole number at that path in the state's input caps the children running at
 * once (the Backup workflow's per-host BackupVms Map runs a host's VMs at its slots), and
 * a path to anything else fails the state with States.Runtime naming the path.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { runMapRun, type DistributedMapState, type MapRunContext } from '../local/distributed-map.ts';

const map = (extra: Partial<DistributedMapState>): DistributedMapState => ({
  Type: 'Map',
  ItemsPath: '$.items',
  ItemProcessor: { ProcessorConfig: { Mode: 'DISTRIBUTED', ExecutionType: 'STANDARD' }, StartAt: 'Vm', States: { Vm: { Type: 'Pass', End: true } } },
  ...extra,
});

/** A context whose children each take `ms` and record how many ran at once. */
function context(ms: number) {
  let running = 0;
  const seen = { most: 0, started: [] as string[] };
  const ctx: MapRunContext = {
    executionArn: 'arn:aws:states:us-east-1:000000000000:execution:Backup:run',
    execution: { Id: 'run' },
    stateMachineArn: 'arn:aws:states:us-east-1:000000000000:stateMachine:Backup',
    objects: () => {
      throw new Error('no bucket in this test');
    },
    runChild: async (child) => {
      running++;
      seen.most = Math.max(seen.most, running);
      seen.started.push(child.input);
      await sleep(ms);
      running--;
      return { executionArn: `${child.stateMachineArn}:${child.name}`, status: 'SUCCEEDED', input: child.input, output: child.input, startDate: new Date() };
    },
    onMapRun: () => {},
    signal: new AbortController().signal,
  };
  return { ctx, seen };
}

describe('a Map Run with MaxConcurrencyPath', () => {
  it("runs at most the input's number of children at once, in item order", async () => {
    const { ctx, seen } = context(30);
    const items = Array.from({ length: 7 }, (_, i) => `vm-${i}`);
    const out = await runMapRun('BackupVms', map({ MaxConcurrencyPath: '$.slots' }), { items, slots: 2 }, ctx);
    expect(seen.most).toBe(2);
    expect(seen.started).toEqual(items.map((i) => JSON.stringify(i)));
    expect(out).toEqual(items);
  });

  it('fails with States.Runtime naming the path when it holds no whole number', async () => {
    const { ctx } = context(1);
    await expect(runMapRun('BackupVms', map({ MaxConcurrencyPath: '$.slots' }), { items: ['a'], slots: 'two' }, ctx)).rejects.toMatchObject({
      name: 'States.Runtime',
      message: expect.stringContaining("MaxConcurrencyPath '$.slots'"),
    });
    await expect(runMapRun('BackupVms', map({ MaxConcurrencyPath: '$.slots' }), { items: ['a'] }, ctx)).rejects.toMatchObject({ name: 'States.Runtime' });
  });
});
