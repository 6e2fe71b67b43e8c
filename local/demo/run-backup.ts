/** One backup run of the demos: the Backup workflow for a policy, its figures printed, any failed VM an error. */
import type { SFNClient } from '@aws-sdk/client-sfn';
import { runExecution } from '../client.ts';
import type { DemoOptions } from './demo.ts';
import { formatBackup } from './report.ts';
import type { RunSummary } from '../../contracts/workflow-outputs.ts';

export async function runDemoBackup(
  sfn: SFNClient,
  backupStateMachineArn: string,
  policyId: string,
  label: string,
  o: Pick<DemoOptions, 'out' | 'status'>,
): Promise<RunSummary> {
  const started = performance.now();
  const d = await runExecution(sfn, backupStateMachineArn, { policyId });
  o.status?.('');
  if (d.status !== 'SUCCEEDED') throw new Error(`${label} backup execution ${d.executionArn} ended ${d.status}: ${d.error} ${d.cause}`);
  const summary = JSON.parse(d.output!) as RunSummary;
  for (const line of formatBackup({ label, summary, seconds: (performance.now() - started) / 1000 })) o.out(line);
  if (summary.failed > 0) throw new Error(`${label} backup: ${summary.failed} VM(s) failed: ${JSON.stringify(summary.vms)}`);
  return summary;
}
