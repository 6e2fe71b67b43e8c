/**
 * The operator's command line, end to end, against one embedded stack with a real mover:
 * every listing as a table and as --json, a backup with live progress bars, a deep
 * verification, the errors; then the same commands against the same stack as a deployed
 * one (`--stack Lifeboat`): the synthesized template's outputs from a CloudFormation
 * endpoint, the real SDK clients pointed at the local endpoints (AWS_ENDPOINT_URL_*), the
 * operator API requests signed with SigV4. Same output either way.
 */
import { execFile, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ListExecutionsCommand } from '@aws-sdk/client-sfn';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { resolveOutputs, startCloudFormationEndpoint, type CloudFormationEndpoint } from './helpers/cloudformation-endpoint.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const MiB = 1024 * 1024;
let t: TestStack;
let endpointsFile: string;
let cfn: CloudFormationEndpoint;
const signed: IncomingHttpHeaders[] = [];
let closeProxy: () => Promise<void>;
let awsEnv: NodeJS.ProcessEnv;

const cli = (args: string[], env: NodeJS.ProcessEnv = process.env) =>
  promisify(execFile)(process.execPath, ['cli/lifeboat.ts', ...args], { env }).then(
    (r) => ({ code: 0, ...r }),
    (err: { code: number; stdout: string; stderr: string }) => ({ code: err.code, stdout: err.stdout, stderr: err.stderr }),
  );
const local = (args: string[]) => cli([...args, '--endpoints', endpointsFile]);
const aws = (args: string[]) => cli([...args, '--stack', 'Lifeboat'], awsEnv);

/** In front of the operator API: records each request's headers (the SigV4 signature), forwards it (and its body). */
async function recordingProxy(target: string): Promise<string> {
  const server = createServer((req, res) => {
    signed.push(req.headers);
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = chunks.length ? Buffer.concat(chunks) : undefined;
      void fetch(`${target}${req.url}`, { method: req.method ?? 'GET', ...(body ? { body, headers: { 'content-type': 'application/json' } } : {}) }).then(
        async (r) => {
          res.writeHead(r.status, { 'content-type': r.headers.get('content-type') ?? 'application/json' });
          res.end(Buffer.from(await r.arrayBuffer()));
        },
      );
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  closeProxy = () =>
    new Promise((ok) => {
      server.closeAllConnections();
      server.close(() => ok());
    });
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

beforeAll(async () => {
  t = await startTestStack({ movers: 1 });
  const e = t.stack.endpoints;
  endpointsFile = join(t.dir, 'endpoints.json');
  await writeFile(endpointsFile, JSON.stringify(e));
  const vmDir = join(t.dir, 'vms', 'vm-op');
  await createVmFolder(
    vmDir,
    {
      name: 'vm-op',
      disks: [
        { id: 'disk0', sizeBytes: 8 * MiB },
        { id: 'disk1', sizeBytes: 4 * MiB },
      ],
    },
    seededRng(11),
  );
  const add = await local(['vm', 'add', 'vm-op', '--host', 'esx-02', '--source', vmDir]);
  expect(add.code, add.stderr).toBe(0);
  await t.stack.catalog.putPolicy({ policyId: 'p-op', vmIds: ['vm-op'], bucket: e.bucket, chunkSize: MiB, slotLimit: 1, rpoHours: 24 });

  const template = JSON.parse(await readFile(join(e.dataDir, 'cdk.out', 'Lifeboat.template.json'), 'utf8')) as Parameters<typeof resolveOutputs>[0];
  cfn = await startCloudFormationEndpoint('Lifeboat', resolveOutputs(template, e, await recordingProxy(e.console)));
  awsEnv = {
    ...process.env,
    AWS_REGION: 'us-east-1',
    AWS_ACCESS_KEY_ID: 'AKIDOPERATORTEST',
    AWS_SECRET_ACCESS_KEY: 'operator-test-secret',
    AWS_ENDPOINT_URL_CLOUDFORMATION: cfn.url,
    AWS_ENDPOINT_URL_SFN: e.sfn,
    AWS_PROFILE: '',
    AWS_CONFIG_FILE: join(t.dir, 'no-aws-config'),
    AWS_SHARED_CREDENTIALS_FILE: join(t.dir, 'no-aws-credentials'),
  };
}, 300_000);
afterAll(async () => {
  await closeProxy?.();
  await cfn?.close();
  await t?.close();
});

describe('on the embedded stack', () => {
  it('backs up with progress per VM and disk, then lists VMs, backups, runs and policies', async () => {
    const b = await local(['backup', 'p-op', '--progress']);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stdout).toMatch(/Backup of policy 'p-op': 1 VM\(s\) committed, 0 failed \(run [\w-]+\)/);
    // Bars drawn while the run ran (stderr): the VM's line and a line per disk with its bytes, rate, ETA and phase.
    expect(b.stderr).toMatch(/vm-op\s+\[[^\]]*\] +\d+% /);
    expect(b.stderr).toMatch(/ disk0 +\[[^\]]*\] +\d+% [\d.]+ \w*B\/8\.00 MiB [\d.]+ \w*B\/s ETA \S+ (transfer|done)/);
    expect(b.stderr).toMatch(/vm-op +\[[^\]]*\] +100% 12\.0 MiB\/12\.0 MiB/);
    expect(b.stderr).toMatch(/ disk1 +\[/);

    const vms = await local(['vms']);
    expect(vms.code, vms.stderr).toBe(0);
    expect(vms.stdout.split('\n')[0]).toMatch(
      /^VM\s+HOST\s+PROTECTION\s+POLICIES\s+LAST BACKUP\s+STATUS\s+CONSISTENCY\s+RPO\s+AGE\s+RPO STATUS\s+DR RPO\s+DR LAG\s+DR STATUS\s+FAILED OVER$/,
    );
    // The configuration's policy 'nightly' selects esx-02's VMs too; the folder driver records no consistency level.
    expect(vms.stdout).toMatch(/vm-op\s+esx-02\s+protected\s+nightly,p-op\s+\S+ \S+Z\s+committed\s+-\s+24 h\s+0\.0 h\s+ok/);
    const vmRows = JSON.parse((await local(['vms', '--json'])).stdout) as { vmId: string; rpo: string; protection: string; lastBackup: { status: string } }[];
    expect(vmRows.find((v) => v.vmId === 'vm-op')).toMatchObject({ rpo: 'ok', protection: 'protected', lastBackup: { status: 'committed' } });

    const backups = JSON.parse((await local(['backups', 'vm-op', '--json'])).stdout) as {
      sizeBytes: number;
      bytesNew: number;
      bytesStored: number;
      damaged: boolean;
      verified: unknown;
    }[];
    expect(backups).toHaveLength(1);
    expect(backups[0]).toMatchObject({ sizeBytes: 12 * MiB, damaged: false, verified: null });
    expect(backups[0]!.bytesNew).toBeGreaterThan(0);
    expect(backups[0]!.bytesStored).toBeGreaterThan(0);
    const table = await local(['backups', 'vm-op']);
    expect(table.stdout).toMatch(/^BACKUP\s+TIME\s+STATUS\s+SIZE\s+NEW\s+STORED\s+CONSISTENCY\s+VERIFIED\s+DAMAGED$/m);
    expect(table.stdout).toMatch(/committed\s+12\.0 MiB\s+[\d.]+ \w*B\s+[\d.]+ \w*B\s+-\s+-\s+no/);

    const runs = JSON.parse((await local(['runs', '--json'])).stdout) as {
      runId: string;
      status: string;
      committed: number;
      vms: { vmId: string; phase: string }[];
    }[];
    expect(runs[0]).toMatchObject({ status: 'SUCCEEDED', committed: 1, vms: [{ vmId: 'vm-op', phase: 'committed' }] });
    const run = await local(['runs', runs[0]!.runId]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain(`run ${runs[0]!.runId} of policy p-op: SUCCEEDED`);
    expect(run.stdout).toMatch(/vm-op\s+committed/);

    const policies = await local(['policies']);
    expect(policies.stdout).toMatch(/p-op\s+\S+\s+1\s+24 h\s+-/);
    expect(policies.stdout).toMatch(/^POLICY\s+REPOSITORY\s+VMS\s+RPO\s+REPLICATED TO$/m);
  }, 300_000);

  it('deep-verifies with a bar per disk, and the backup shows as verified', async () => {
    const v = await local(['verify', '--vm', 'vm-op', '--group', 'site-a', '--progress']);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/of VM vm-op: \d+ of \d+ chunks read back .*: intact/);
    // The movers' progress objects of the verification (named by its execution), drawn as the backup's are: disk bytes covered by the chunks read back.
    expect(v.stderr).toMatch(/verify vm-op +\[[^\]]*\] +100% 12\.0 MiB\/12\.0 MiB/);
    expect(v.stderr).toMatch(/ disk0 +\[[^\]]*\] +100% 8\.00 MiB\/8\.00 MiB [\d.]+ \w*B\/s ETA \S+ done/);
    expect(v.stderr).toMatch(/ disk1 +\[[^\]]*\] +100% 4\.00 MiB\/4\.00 MiB/);
    const [b] = JSON.parse((await local(['backups', 'vm-op', '--json'])).stdout) as { verified: { full: boolean } | null }[];
    expect(b!.verified).toMatchObject({ full: true });
  }, 120_000);

  it("restores with a bar per disk (transfer, then the re-hash of what was written), and the API keeps the restore's progress", async () => {
    const target = join(t.dir, 'restored-op');
    const r = await local(['restore', '--vm', 'vm-op', '--group', 'site-a', '--target', target, '--progress']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^restored backup \S+ of VM vm-op in [\d.]+ s \(12\.0 MiB written/m);
    expect(r.stderr).toMatch(/restore vm-op +\[[^\]]*\] +100% 12\.0 MiB\/12\.0 MiB/);
    expect(r.stderr).toMatch(/ disk0 +\[[^\]]*\] +100% 8\.00 MiB\/8\.00 MiB [\d.]+ \w*B\/s ETA \S+ done/);
    const e = t.stack.endpoints;
    const [execution] = (await t.sfn.send(new ListExecutionsCommand({ stateMachineArn: e.stateMachines.Restore!, maxResults: 1 }))).executions!;
    const p = (await (await fetch(`${e.console}/api/progress/${execution!.name}`)).json()) as {
      operation: string;
      vmId: string;
      bytesDone: number;
      bytesTotal: number;
      disks: { diskId: string; phase: string; mover: string }[];
    };
    expect(p).toMatchObject({ operation: 'restore', vmId: 'vm-op', bytesDone: 12 * MiB, bytesTotal: 12 * MiB });
    expect(p.disks.map((d) => [d.diskId, d.phase, d.mover])).toEqual([
      ['disk0', 'done', 'test-mover-1'],
      ['disk1', 'done', 'test-mover-1'],
    ]);
    const none = await fetch(`${e.console}/api/progress/no-such-restore`);
    expect(none.status).toBe(404);
    expect(((await none.json()) as { message: string }).message).toMatch(
      /no progress for 'no-such-restore': its tasks have not started yet, or it ended more than a day ago/,
    );
  }, 120_000);

  it('lists movers and restore points; alerts name the mover groups nobody serves and exit 1', async () => {
    const movers = await local(['movers']);
    expect(movers.code, movers.stderr).toBe(0);
    expect(movers.stdout).toMatch(/site-a\s+test-mover-1\s+\S+\s+running\s+\d\/\d/);
    const points = await local(['restore-points']);
    expect(points.code, points.stderr).toBe(0);
    expect(points.stdout).toContain('no restore points in a DR repository');
    const alerts = await local(['alerts', '--json']);
    expect(alerts.code).toBe(1);
    const rows = JSON.parse(alerts.stdout) as { kind: string; subject: string }[];
    // site-b serves hosts, dr replicates policy backups (the configuration's); only site-a has a mover here.
    expect(
      rows
        .filter((a) => a.kind === 'mover-group-silent')
        .map((a) => a.subject)
        .sort(),
    ).toEqual(['dr', 'site-b']);
  }, 180_000);

  it('names what was wrong: an unknown VM or run, a stack that is not running', async () => {
    const vm = await local(['backups', 'no-such-vm']);
    expect(vm.code).toBe(1);
    expect(vm.stderr).toContain("lifeboat: VM 'no-such-vm' is not in the inventory and has no backups; `lifeboat vms` lists the VMs");
    const run = await local(['runs', 'no-such-run']);
    expect(run.code).toBe(1);
    expect(run.stderr).toContain("run 'no-such-run' was not found");
    const gone = await cli(['vms', '--data-dir', join(t.dir, 'nothing-here')]);
    expect(gone.code).toBe(1);
    expect(gone.stderr).toMatch(
      /cannot read the stack's endpoints from .*nothing-here\/endpoints\.json .*start the stack with `lifeboat up` first, or name a deployed stack with --stack/,
    );
  }, 180_000);
});

describe('on a deployed stack (--stack: CloudFormation outputs, real SDK clients, SigV4)', () => {
  it('lists the same rows as the embedded stack, and signs every API request', async () => {
    const commands = [['vms'], ['backups', 'vm-op'], ['policies'], ['runs']];
    const answers = await Promise.all(commands.map((cmd) => Promise.all([aws([...cmd, '--json']), local([...cmd, '--json'])])));
    const strip = (s: string) => s.replace(/"(ageSeconds|recoveryPointAgeHours|ageHours|drLagHours)": [\d.]+/g, '"$1": 0');
    for (const [a, l] of answers) {
      expect(a.code, a.stderr).toBe(0);
      expect(strip(a.stdout)).toEqual(strip(l.stdout));
    }
    expect(cfn.actions).toContain('DescribeStacks');
    expect(signed.length).toBeGreaterThan(0);
    for (const h of signed)
      expect(h.authorization).toMatch(
        /^AWS4-HMAC-SHA256 Credential=AKIDOPERATORTEST\/\d{8}\/us-east-1\/lambda\/aws4_request, SignedHeaders=\S*host\S*, Signature=[0-9a-f]{64}$/,
      );
  }, 300_000);

  it("runs a backup through Step Functions with the stack's own ARN", async () => {
    const b = await aws(['backup', 'p-op']);
    expect(b.code, b.stderr).toBe(0);
    expect(b.stdout).toMatch(/Backup of policy 'p-op': 1 VM\(s\) committed, 0 failed \(run [\w-]+\)/);
  }, 120_000);

  it("serves the console from the deployed stack's signed API: pages show its catalog, an action starts its workflow, a foreign POST is refused", async () => {
    const child = spawn(process.execPath, ['cli/lifeboat.ts', 'console', '--stack', 'Lifeboat', '--port', '0'], {
      env: awsEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const exited = new Promise<number | null>((ok) => child.once('exit', (code) => ok(code)));
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => {
      stderr += String(c);
    });
    try {
      const url = await new Promise<string>((ok, fail) => {
        createInterface({ input: child.stdout }).on('line', (l) => {
          const m = /^Web console for stack Lifeboat in us-east-1: (http:\/\/127\.0\.0\.1:\d+)\/ \(Ctrl-C stops it\)$/.exec(l);
          if (m) ok(m[1]!);
        });
        void exited.then((code) => fail(new Error(`lifeboat console exited ${code}: ${stderr}`)));
      });
      const before = signed.length;
      const overview = await (await fetch(`${url}/`)).text();
      expect(overview).toContain('<a href="/vms/vm-op">vm-op</a>');
      expect(overview).toContain('id="backup-p-op"');
      const vmPage = await (await fetch(`${url}/vms/vm-op`)).text();
      expect(vmPage).toMatch(/committed<\/td><td>12\.0 MiB/);
      // The stack's mover groups, from its outputs (ActivityArn<group>); the VM's own selected.
      expect(vmPage).toMatch(/<select name="group"><option>dr<\/option><option selected>site-a<\/option><option>site-b<\/option><\/select>/);
      expect(signed.length).toBeGreaterThan(before); // every read went through the signed function URL

      const foreign = await fetch(`${url}/actions/backup`, {
        method: 'POST',
        redirect: 'manual',
        headers: { origin: 'http://evil.example', 'content-type': 'application/x-www-form-urlencoded' },
        body: 'policyId=p-op',
      });
      expect(foreign.status).toBe(403);
      const start = await fetch(`${url}/actions/backup`, {
        method: 'POST',
        redirect: 'manual',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'policyId=p-op',
      });
      expect(start.status).toBe(303);
      const runPath = start.headers.get('location')!;
      expect(runPath).toMatch(/^\/runs\/[0-9a-f-]{36}$/);
      let status = '';
      for (let i = 0; i < 240 && status !== 'SUCCEEDED' && status !== 'FAILED'; i++) {
        await new Promise((r) => setTimeout(r, 500));
        const run = await fetch(`${url}/api${runPath}`);
        if (run.ok) status = ((await run.json()) as { status: string }).status;
      }
      expect(status).toBe('SUCCEEDED');
      expect(await (await fetch(`${url}${runPath}`)).text()).toMatch(/vm-op<\/td><td>committed/);
    } finally {
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
    }
  }, 180_000);

  it('says which stack it could not find', async () => {
    const missing = await cli(['vms', '--stack', 'NoSuchStack'], awsEnv);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(
      /cannot read the outputs of stack NoSuchStack \(ValidationError: Stack with id NoSuchStack does not exist\); check its name, --region and your AWS credentials/,
    );
  }, 180_000);

  it('adds a VM through the signed API (POST /api/vms), and names a host the configuration lacks', async () => {
    const before = signed.length;
    const add = await aws(['vm', 'add', 'vm-aws', '--host', 'esx-02', '--source', '/srv/vms/vm-aws', '--datastore', 'ds1']);
    expect(add.code, add.stderr).toBe(0);
    expect(add.stdout).toBe("VM vm-aws is on host esx-02: mover group 'site-a' backs it up.\n");
    expect(signed.slice(before).some((h) => /^AWS4-HMAC-SHA256 .*SignedHeaders=\S*content-type/.test(String(h.authorization)))).toBe(true);
    const vms = JSON.parse((await local(['vms', '--json'])).stdout) as { vmId: string; host: string; moverGroup: string }[];
    expect(vms.find((v) => v.vmId === 'vm-aws')).toMatchObject({ host: 'esx-02', moverGroup: 'site-a' });
    expect(await t.stack.catalog.getVm('vm-aws')).toMatchObject({ source: '/srv/vms/vm-aws', datastores: ['ds1'] });
    const bad = await aws(['vm', 'add', 'vm-aws', '--host', 'no-such-host', '--source', '/srv/x']);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain(
      'lifeboat: host \'no-such-host\' is not in the configuration: add it to "hosts" and to a mover group, then deploy (or restart the embedded stack)',
    );
  }, 120_000);

  it("lists host configuration backups through the API; a restore opens the repository with the stack's KMS key and says what it needs", async () => {
    const list = await aws(['host-config', 'list', '--json']);
    expect(list.code, list.stderr).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual(JSON.parse((await local(['host-config', 'list', '--json'])).stdout));
    const none = await aws(['host-config', 'restore', '--host', 'kvm-01', '--to', join(t.dir, 'hc')]);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain("host 'kvm-01' has no host configuration backup yet: run one with `lifeboat host-config backup --host kvm-01`");
  }, 120_000);
});
