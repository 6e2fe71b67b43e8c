/**
 * The synthesized Failback workflow: its graph, where each task runs, what it retries and catches, and what it may start;
 * and the failover plan workflows it follows (FailoverPlan, TestFailover): their replica leases and the test's sweep.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { App } from 'aws-cdk-lib';
import { Template } from 'aws-cdk-lib/assertions';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { LifeboatStack } from '../cdk/lib/lifeboat-stack.ts';
import { loadConfig } from '../core/config.ts';
import { resolveTemplate, type CfnTemplate, type ResolvedTemplate } from '../local/asl.ts';

type State = {
  Type: string;
  Next?: string;
  End?: boolean;
  Resource?: string;
  Parameters?: Record<string, unknown>;
  Default?: string;
  ItemsPath?: string;
  Choices?: { Variable: string; StringEquals?: string; BooleanEquals?: boolean; IsPresent?: boolean; Next: string }[];
  Retry?: { ErrorEquals: string[] }[];
  Catch?: { ErrorEquals: string[]; Next: string }[];
  ItemProcessor?: { StartAt: string; States: Record<string, State> };
};

let outdir: string;
let template: Template;
let resolved: ResolvedTemplate;
let states: Record<string, State>;

beforeAll(() => {
  outdir = mkdtempSync(join(tmpdir(), 'lifeboat-cdk-failback-'));
  const app = new App({ outdir, context: { 'aws:cdk:bundling-stacks': [] } });
  template = Template.fromStack(new LifeboatStack(app, 'Lifeboat', { config: loadConfig() }));
  resolved = resolveTemplate(template.toJSON() as CfnTemplate);
  const m = Object.values(resolved.stateMachines).find((x) => x.logicalId.startsWith('FailbackStateMachine'))!;
  states = {};
  const walk = (s: Record<string, State>) => {
    for (const [n, st] of Object.entries(s)) {
      states[n] = st;
      if (st.ItemProcessor) walk(st.ItemProcessor.States);
    }
  };
  walk((m.definition as { States: Record<string, State> }).States);
}, 600_000);
afterAll(() => rmSync(outdir, { recursive: true, force: true }));

it('syncs while the DR VM runs, then stops it, takes the final backup, waits for it, applies the last delta, starts production and records', () => {
  const next = (n: string) => states[n]!.Next;
  expect(next('PlanFailback')).toBe('NoFinalBackupYet');
  expect(next('NoFinalBackupYet')).toBe('SyncDisks');
  expect(next('SyncDisks')).toBe('StopDrVmOnMoverGroup');
  expect(states.StopDrVmOnMoverGroup!.Choices!.map((c) => [c.Variable, c.StringEquals])).toContainEqual(['$.job.drGroup', 'dr']);
  expect(next('StopDrVm (dr)')).toBe('StartFinalBackup');
  expect(next('StartFinalBackup')).toBe('WaitForFinalBackup');
  expect(next('WaitForFinalBackup')).toBe('CheckFinalBackup');
  expect(next('CheckFinalBackup')).toBe('FinalBackupCommitted');
  expect(states.FinalBackupCommitted!.Choices).toEqual([{ Variable: '$.final.done', BooleanEquals: true, Next: 'FinalDelta' }]);
  expect(states.FinalBackupCommitted!.Default).toBe('WaitForFinalBackup');
  expect(next('FinalDelta')).toBe('StartProductionVmOnMoverGroup');
  expect(states.StartProductionVmOnMoverGroup!.Choices!.map((c) => c.Variable)).toEqual([
    '$.job.productionGroup',
    '$.job.productionGroup',
    '$.job.productionGroup',
  ]);
  expect(next('StartProductionVm (site-a)')).toBe('HasReplicaVm');
  // The replica VM (when there is one) is released for the next replication after production is ready.
  expect(states.HasReplicaVm!.Choices).toEqual([{ Variable: '$.job.replica', IsPresent: true, Next: 'ReleaseReplicaOnMoverGroup' }]);
  expect(states.HasReplicaVm!.Default).toBe('NoReplicaVm');
  expect(states['ReleaseReplica (dr)']!.Parameters).toMatchObject({ task: 'releaseReplica', 'failback.$': '$.job' });
  expect(next('ReleaseReplica (dr)')).toBe('RecordFailback');
  expect(next('NoReplicaVm')).toBe('RecordFailback');
  expect(states.RecordFailback!.Parameters).toMatchObject({ 'replica.$': '$.replicaReleased' });
  // The final backup is of the DR VM alone, not of every VM the DR-site policy protects.
  expect(JSON.stringify(states.StartFinalBackup!.Parameters)).toContain('States.Array($.job.drVmId)');
  // The bulk sync hashes the production disk; the final delta, during the outage, only writes the manifests' difference.
  expect(states['SyncDisksDisk (site-a)']!.Parameters).toMatchObject({ task: 'failbackDisk', mode: 'hash', 'from.$': '$.job.base' });
  expect(states['FinalDeltaDisk (site-a)']!.Parameters).toMatchObject({
    task: 'failbackDisk',
    mode: 'trust',
    'from.$': '$.job.target',
    to: { 'backupId.$': '$.finalBackupId' },
  });
});

it('retries a dead mover but not a DR VM that refuses to stop, and records every failure', () => {
  const stop = states['StopDrVm (dr)']!;
  expect(stop.Retry!.flatMap((r) => r.ErrorEquals)).toEqual(['States.Timeout', 'Mover.StorageUnavailable', 'Mover.TaskStalled']);
  for (const n of [
    'PlanFailback',
    'SyncDisks',
    'StopDrVm (dr)',
    'StartFinalBackup',
    'CheckFinalBackup',
    'FinalDelta',
    'StartProductionVm (site-a)',
    'ReleaseReplica (dr)',
    'RecordFailback',
  ]) {
    expect(
      states[n]!.Catch!.map((c) => c.Next),
      n,
    ).toEqual(['RecordFailure', 'RecordFailure']);
  }
  expect(states.RecordFailure!.Parameters).toMatchObject({ kind: 'FAILBACK' });
});

it('may start the Backup workflow (the final DR-site backup) and nothing else', () => {
  const role = Object.entries(template.findResources('AWS::IAM::Policy')).find(([id]) => id.startsWith('FailbackStateMachineRoleDefaultPolicy'))!;
  const statements = role[1].Properties.PolicyDocument.Statement as { Action: string | string[]; Resource: unknown }[];
  const starts = statements.filter((s) => [s.Action].flat().includes('states:StartExecution'));
  expect(starts).toHaveLength(1);
  expect(JSON.stringify(starts[0]!.Resource)).toMatch(/BackupStateMachine/);
  expect(JSON.stringify(starts[0]!.Resource)).not.toMatch(/\*/);
});

it("FailoverPlan and TestFailover hold their VMs' replica leases from the plan to the end, and give them back on every failure path; a test sweeps first", () => {
  for (const [prefix, test] of [
    ['FailoverPlanStateMachine', false],
    ['TestFailoverStateMachine', true],
  ] as const) {
    const m = Object.values(resolved.stateMachines).find((x) => x.logicalId.startsWith(prefix))!;
    const st = (m.definition as { States: Record<string, State> }).States;
    expect(st.PlanFailoverPlan!.Retry!.flatMap((r) => r.ErrorEquals)).toContain('Replication.Busy');
    expect(st.ReleaseReplicaLeases!.Parameters).toEqual({ 'lease.$': '$.lease' });
    expect(st.ReleaseReplicaLeases!.Next).toBe('RecordFailoverPlan');
    expect(st.ReleaseReplicaLeasesAfterFailure!.Next).toBe('Failed');
    // The cleanup after a failure goes on to give the leases back, also when it fails itself.
    const cleanup = Object.entries(st).filter(([n]) => n.startsWith('CleanupAfterFailure ('));
    expect(cleanup.length).toBeGreaterThan(0);
    for (const [, c] of cleanup) {
      expect(c.Next).toBe('ReleaseReplicaLeasesAfterFailure');
      expect(c.Catch!.map((x) => x.Next)).toEqual(['ReleaseReplicaLeasesAfterFailure']);
    }
    expect(st.PlanFailoverPlan!.Next).toBe(test ? 'SweepTestFailoversOnMoverGroup' : 'ResolvePointsOnMoverGroup');
    if (test) {
      const sweep = Object.entries(st).filter(([n]) => n.startsWith('SweepTestFailovers ('));
      for (const [, t] of sweep) {
        expect(t.Parameters).toMatchObject({ task: 'sweepTestFailovers' });
        // A failed sweep does not stop the drill.
        expect(t.Catch!.map((x) => x.Next)).toEqual(['ResolvePointsOnMoverGroup']);
        expect(t.Next).toBe('ResolvePointsOnMoverGroup');
      }
    }
  }
});
