/**
 * Lambda duration as AWS bills it, estimated on the embedded stack.
 *
 * AWS bills each invocation's duration in its own container. The embedded stack runs every
 * invocation in one Node process beside the runner, dynalite, s3rver and every other running
 * execution, so during a fleet run an invocation's wall time is mostly time its awaited
 * requests' callbacks spent waiting behind the other executions' work in the one event loop
 * (a 1 MiB VM's Verify: over 10 s in the 1,000-VM run, tens of milliseconds alone). Priced
 * at that wall time, the fleet's Lambda bill grows with the number of VMs the process runs
 * at once, which AWS's does not. So after the measured run the bench backs up a few more VMs
 * of one host, one at a time (a policy with one slot): the stack is then otherwise idle, and
 * each function's mean duration there is its estimate of an invocation alone. What it still
 * leaves out, either way: the machine's load from other processes (it slows these, so it
 * overstates), and AWS's request latency (S3 and DynamoDB answer in ~5-20 ms where the local
 * servers answer in ~1 ms: it understates the I/O-bound functions).
 */
import type { EmbeddedStack } from '../local/stack.ts';
import { lambdaInvocations } from '../local/lambdas.ts';
import { runExecution, sfnClient } from '../local/client.ts';
import type { RunSummary } from '../contracts/workflow-outputs.ts';

/** Each function's invocations and summed milliseconds in the alone run. */
export type AloneDurations = Record<string, { count: number; ms: number }>;

/**
 * Backs up `vmIds` (all on one host, so the one-slot policy runs them one after another) as
 * policy `policyId`, and returns each function's invocations and summed duration in that run.
 */
export async function aloneDurations(stack: EmbeddedStack, policyId: string, vmIds: string[]): Promise<AloneDurations> {
  await stack.catalog.putPolicy({ policyId, vmIds, bucket: stack.endpoints.bucket, chunkSize: 1024 * 1024, slotLimit: 1 });
  const before = lambdaInvocations();
  const d = await runExecution(sfnClient(stack.endpoints), stack.endpoints.backupStateMachineArn, { policyId }, { pollMs: 200 });
  if (d.status !== 'SUCCEEDED') throw new Error(`the run of ${vmIds.length} VMs one at a time (policy ${policyId}) ended ${d.status}: ${d.error} ${d.cause}`);
  const s = JSON.parse(d.output!) as RunSummary;
  if (s.committed !== vmIds.length) throw new Error(`the run of ${vmIds.length} VMs one at a time (policy ${policyId}) committed ${s.committed}`);
  const after = lambdaInvocations();
  return Object.fromEntries(
    Object.entries(after)
      .map(([id, v]) => [id, { count: v.count - (before[id]?.count ?? 0), ms: v.ms - (before[id]?.ms ?? 0) }] as const)
      .filter(([, v]) => v.count > 0),
  );
}

/**
 * GB-seconds per VM-backup with each invocation counted in the measured run but timed at its
 * function's mean duration alone. Only the per-VM functions (invoked at least once per VM):
 * a per-run function (Plan, Summarize) works over the whole run's VMs, which the few VMs
 * alone do not stand for, so it keeps its measured time, as does a function the run alone did
 * not invoke.
 */
export function gbSecondsAlone(
  measured: Record<string, { invocations: number; gbSeconds: number }>,
  alone: AloneDurations,
  memoryGb: (id: string) => number,
): { total: number; byFunction: Record<string, number> } {
  const byFunction = Object.fromEntries(
    Object.entries(measured).map(([id, f]) => {
      const a = alone[id];
      return [id, a && f.invocations >= 1 ? ((f.invocations * a.ms) / a.count / 1000) * memoryGb(id) : f.gbSeconds];
    }),
  );
  return { total: Object.values(byFunction).reduce((s, v) => s + v, 0), byFunction };
}
