import { describe, expect, it } from 'vitest';
import { gbSecondsAlone } from '../bench/fleet-solo.ts';
import { memoryGb } from '../bench/fleet-usage.ts';

describe("the fleet bench's Lambda estimate", () => {
  it("times each invocation of the measured run at its function's mean duration alone, at the function's memory", () => {
    // Measured: Verify once per VM for 13 s of wall time in the loaded process; alone: 5 invocations, 200 ms in all.
    const measured = { Verify: { invocations: 1, gbSeconds: 13 }, Commit: { invocations: 1, gbSeconds: 0.5 } };
    const got = gbSecondsAlone(measured, { Verify: { count: 5, ms: 200 }, Commit: { count: 5, ms: 50 } }, memoryGb);
    expect(got.byFunction.Verify).toBeCloseTo(0.04 * memoryGb('Verify'), 9);
    expect(got.byFunction.Commit).toBeCloseTo(0.01 * memoryGb('Commit'), 9);
    expect(got.total).toBeCloseTo(0.04 * memoryGb('Verify') + 0.01 * memoryGb('Commit'), 9);
  });

  it('keeps the measured figure of a per-run function, and of one the run of VMs alone never invoked', () => {
    const measured = { Plan: { invocations: 0.01, gbSeconds: 0.02 }, JoinSegments: { invocations: 1, gbSeconds: 0.3 } };
    const got = gbSecondsAlone(measured, { Plan: { count: 1, ms: 5 } }, memoryGb);
    expect(got.byFunction).toEqual({ Plan: 0.02, JoinSegments: 0.3 });
  });
});
