/**
 * `lifeboat restore` and `lifeboat verify`: start the Restore or DeepVerify workflow on a
 * running stack (its endpoints file, written by `lifeboat up`), wait, print the outcome.
 */
import { InvalidArgumentError, type Command } from 'commander';
import { resolve } from 'node:path';
import { runInstantRestore } from './instant.ts';
import type { DeepVerifySummary, RestoreSummary } from '../contracts/workflow-outputs.ts';
import { runWithProgress } from './progress.ts';
import { EXIT, guarded, StackClient, stackOptions, type Out, type StackOptions } from './stack-client.ts';

/** Runs a recovery workflow with a bar per disk on stderr (none with --json) and closes the client. */
async function run(opts: StackOptions & { json?: boolean; progress?: boolean }, workflow: string, input: Record<string, unknown>, io: Out) {
  const client = await StackClient.connect(opts);
  return runWithProgress(client, workflow, input, { off: !!opts.json, force: !!opts.progress, ...(io.status ? { status: io.status } : {}) }).finally(() =>
    client.close(),
  );
}

const GiB = 1024 ** 3;
const size = (n: number) => (n >= GiB ? `${(n / GiB).toFixed(2)} GiB` : `${(n / 2 ** 20).toFixed(1)} MiB`);

/** `--sample`: a fraction of the chunks, 0 < f <= 1 (0.1 reads a tenth; 1, or no --sample, reads all). */
export function sampleFraction(v: string): number {
  const f = Number(v);
  if (!Number.isFinite(f) || f <= 0 || f > 1)
    throw new InvalidArgumentError(
      `'${v}' is not a fraction of the chunks: give a number above 0 and at most 1 (e.g. 0.1 reads a tenth; 1, or no --sample, reads them all)`,
    );
  return f;
}

/** A restore test's outcome in one phrase: how long the boot took and what showed it, or why it failed. */
export function restoreTestOutcome(t: { passed: boolean; seconds: number; line?: string; agent?: boolean; reason?: string }): string {
  const signs = [t.line ? `"${t.line}"` : '', t.agent ? 'guest agent answered' : ''].filter(Boolean).join(', ');
  return t.passed
    ? `booted in ${t.seconds.toFixed(1)} s (${signs})`
    : `FAILED after ${t.seconds.toFixed(1)} s: ${t.reason ?? 'no sign of life within the timeout'}`;
}

/** `--restore-timeout`: whole seconds, 5 to 3600 (as the workflow takes them). */
export function restoreTimeout(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 5 || n > 3600) throw new InvalidArgumentError(`'${v}' is not a boot timeout: give whole seconds from 5 to 3600`);
  return n;
}

export function registerRecoveryCommands(program: Command, defaultDataDir: string, io: Out): void {
  stackOptions(
    program
      .command('restore')
      .description(
        'restore a VM (every disk and its config, into a folder) or one disk (into a file) through a mover group; every chunk is re-hashed after writing',
      )
      .requiredOption('--vm <id>', 'the VM')
      .requiredOption('--target <path>', 'absolute path on the mover: a folder for a whole VM, a file for --disk')
      .requiredOption('--group <id>', 'the mover group that restores')
      .option('--backup <id>', 'the backup (default: the newest committed)')
      .option('--disk <id>', 'restore only this disk')
      .option('--define <uri>', 'libvirt backups: define a new VM from the backup on this libvirt host (e.g. qemu:///system), disks as qcow2 files in --target')
      .option('--name <name>', "with --define: the new VM's name (default: <name>-restore-<backup time>)")
      .option(
        '--pool <name>',
        'with --define: restore the disks as volumes <vm name>-<disk>.qcow2 (or .raw) of this active libvirt storage pool instead of files; --target keeps vm.json and the console log. An existing volume is refused unless --force',
      )
      .option('--raw', 'with --define: keep the disks raw instead of qcow2')
      .option('--start', 'with --define: start the new VM')
      .option('--boot-check <regex>', 'with --define: a restore test: boot without network, wait for a serial console line matching this, then remove the VM')
      .option('--agent', 'with --define: a restore test whose sign of life is the guest agent answering guest-ping (with --boot-check: after the line)')
      .option(
        '--instant',
        'with --define: instant recovery: the VM runs at once on overlays backed by NBD exports of the backup, then moves to its disks in --target while it runs',
      )
      .option(
        '--move-after <regex>',
        "with --instant: start the move once the guest's serial console prints a line matching this (not competing with its boot; at most 300 s)",
      )
      .option('--resume', 'with --instant: take up an instant recovery whose move failed or whose mover died (its VM still running on its overlays)')
      .option('--move-bandwidth <MiB/s>', 'with --instant: cap the move to --target (MiB/s per disk)', (v) => {
        const n = Number(v);
        if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`'${v}' is not a bandwidth: give MiB/s above 0 (e.g. 50, or 0.5)`);
        return n;
      })
      .option('--move-stall <seconds>', 'with --instant: fail the move when what it still has to copy has not shrunk for this long (default 300)', (v) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 5) throw new InvalidArgumentError(`'${v}' is not a stall window: give whole seconds, at least 5`);
        return n;
      })
      .option(
        '--force',
        "overwrite what is at the target: a file holding data, a folder that is not empty, the VM's own folder, with --pool a volume of the same name (deleted and made anew) (default: refuse)",
      )
      .option('--json', "print the workflow's output as JSON")
      .option('--progress', 'draw the progress bars (per disk: bytes done of total, rate, ETA, phase) even when stderr is not a terminal'),
    defaultDataDir,
  ).action(
    guarded(
      async (
        opts: StackOptions & {
          vm: string;
          target: string;
          group: string;
          backup?: string;
          disk?: string;
          define?: string;
          name?: string;
          pool?: string;
          raw?: boolean;
          start?: boolean;
          bootCheck?: string;
          agent?: boolean;
          force?: boolean;
          instant?: boolean;
          resume?: boolean;
          moveBandwidth?: number;
          moveStall?: number;
          moveAfter?: string;
          json?: boolean;
          progress?: boolean;
        },
      ) => {
        if (!opts.define && (opts.pool || opts.raw || opts.name || opts.start || opts.bootCheck || opts.agent || opts.instant))
          throw new InvalidArgumentError(
            '--pool, --name, --raw, --start, --boot-check, --agent and --instant go with --define <uri>: they describe the VM the restore defines',
          );
        if (!opts.instant && (opts.resume || opts.moveBandwidth || opts.moveStall || opts.moveAfter))
          throw new InvalidArgumentError('--resume, --move-bandwidth, --move-stall and --move-after go with --instant');
        const define = opts.define
          ? {
              uri: opts.define,
              ...(opts.name ? { name: opts.name } : {}),
              ...(opts.pool ? { pool: opts.pool } : {}),
              ...(opts.raw ? { format: 'raw' } : {}),
              ...(opts.start ? { start: true } : {}),
              ...(opts.bootCheck || opts.agent
                ? { bootCheck: { ...(opts.bootCheck ? { consoleLine: opts.bootCheck } : {}), ...(opts.agent ? { agent: true } : {}) } }
                : {}),
            }
          : undefined;
        const input = {
          vmId: opts.vm,
          target: resolve(opts.target),
          moverGroup: opts.group,
          ...(opts.backup ? { backupId: opts.backup } : {}),
          ...(opts.disk ? { diskId: opts.disk } : {}),
          ...(opts.force ? { force: true } : {}),
          ...(define ? { define } : {}),
          ...(opts.instant
            ? {
                instant: {
                  ...(opts.resume ? { resume: true } : {}),
                  ...(opts.moveBandwidth ? { moveBandwidthMiBs: opts.moveBandwidth } : {}),
                  ...(opts.moveStall ? { moveStallSeconds: opts.moveStall } : {}),
                  ...(opts.moveAfter ? { moveAfter: { consoleLine: opts.moveAfter } } : {}),
                },
              }
            : {}),
        };
        if (opts.instant) {
          const client = await StackClient.connect(opts);
          const s = await runInstantRestore(client, input, io).finally(() => client.close());
          if (opts.json) io.out(JSON.stringify(s, null, 2));
          return;
        }
        const { output, seconds } = await run(opts, 'Restore', input, io);
        const s = output as RestoreSummary;
        if (s.domain?.bootCheck && !s.domain.bootCheck.passed) process.exitCode = EXIT.damaged;
        if (opts.json) return io.out(JSON.stringify(output, null, 2));
        if (s.notice) io.out(`NOTE: ${s.notice}`);
        io.out(
          `restored backup ${s.backupId} of VM ${s.vmId} in ${seconds.toFixed(1)} s (${size(s.bytesRestored)} written, ${size(s.bytesDownloaded)} downloaded)`,
        );
        for (const d of s.disks)
          io.out(
            `  ${d.diskId}  ${d.volume ? `volume ${d.volume.name} of pool ${d.volume.pool} (${d.path})` : d.path}  ${size(d.sizeBytes)}  sha256 ${d.sha256}  ${d.chunksVerified} chunks re-hashed`,
          );
        if (s.vmConfigPath) io.out(`  VM config: ${s.vmConfigPath}`);
        if (s.domain) io.out(`  VM ${s.domain.name} (${s.domain.uuid}) defined${s.domain.started ? ' and started' : ''}; console ${s.domain.consoleLog}`);
        const test = s.domain?.bootCheck;
        if (test)
          io.out(
            `  restore test: ${restoreTestOutcome(test)}; the test VM and its disks${s.disks.some((d) => d.volume) ? ' (pool volumes)' : ''} were removed`,
          );
      },
    ),
  );

  stackOptions(
    program
      .command('verify')
      .description('deep-verify a backup: a mover reads back all (or a sample of) its chunks, decrypts them and checks their ids')
      .requiredOption('--vm <id>', 'the VM')
      .requiredOption('--group <id>', 'the mover group that reads the chunks')
      .option('--backup <id>', 'the backup (default: the newest committed)')
      .option('--sample <fraction>', 'fraction of chunks to read, in (0, 1]', sampleFraction)
      .option(
        '--restore-test',
        'libvirt VMs: when the backup is intact, restore it as a throwaway VM on a mover of its host, boot it without network, wait for a sign of life, remove it (policy settings, else the guest agent)',
      )
      .option('--boot-check <regex>', 'with --restore-test: the sign of life is a serial console line matching this')
      .option('--agent', 'with --restore-test: the sign of life is the guest agent answering guest-ping (with --boot-check: after the line)')
      .option(
        '--restore-timeout <seconds>',
        "with --restore-test: how long the booted VM has to show its sign of life (default: the policy's, else 300)",
        restoreTimeout,
      )
      .option('--json', "print the workflow's output as JSON")
      .option('--progress', 'draw the progress bars (per disk: bytes done of total, rate, ETA, phase) even when stderr is not a terminal'),
    defaultDataDir,
  ).action(
    guarded(
      async (
        opts: StackOptions & {
          vm: string;
          group: string;
          backup?: string;
          sample?: number;
          restoreTest?: boolean;
          bootCheck?: string;
          agent?: boolean;
          restoreTimeout?: number;
          json?: boolean;
          progress?: boolean;
        },
      ) => {
        if (!opts.restoreTest && (opts.bootCheck || opts.agent || opts.restoreTimeout))
          throw new InvalidArgumentError('--boot-check, --agent and --restore-timeout go with --restore-test');
        const bootCheck =
          opts.bootCheck || opts.agent ? { bootCheck: { ...(opts.bootCheck ? { serial: opts.bootCheck } : {}), ...(opts.agent ? { agent: true } : {}) } } : {};
        const settings = { ...bootCheck, ...(opts.restoreTimeout ? { timeoutSeconds: opts.restoreTimeout } : {}) };
        const input = {
          vmId: opts.vm,
          moverGroup: opts.group,
          ...(opts.backup ? { backupId: opts.backup } : {}),
          ...(opts.sample !== undefined ? { sample: opts.sample } : {}),
          ...(opts.restoreTest ? { restoreTest: Object.keys(settings).length ? settings : true } : {}),
        };
        const { output, seconds } = await run(opts, 'DeepVerify', input, io);
        const s = output as DeepVerifySummary;
        const failedTest = s.restoreTest && 'passed' in s.restoreTest && !s.restoreTest.passed;
        if (s.damaged || failedTest) process.exitCode = EXIT.damaged;
        if (opts.json) return io.out(JSON.stringify(output, null, 2));
        io.out(
          `backup ${s.backupId} of VM ${s.vmId}: ${s.chunksChecked} of ${s.chunksTotal} chunks read back (${size(s.bytesRead)}) in ${seconds.toFixed(1)} s: ${s.damaged ? 'DAMAGED' : 'intact'}`,
        );
        const bytes = (r?: { offset: number; length: number }) => (r ? ` bytes ${r.offset}+${r.length}` : '');
        for (const f of s.findings)
          io.out(
            `  damaged: disk ${f.diskId} offset ${f.offsets.join(', ') || '-'} ${f.chunkId ? `chunk ${f.chunkId} in ` : ''}object ${f.objectKey}${bytes(f.range)}: ${f.reason}`,
          );
        const q = (
          output as {
            quarantine?: { quarantined: { chunkId: string; objectKey: string; range?: { offset: number; length: number }; quarantineKey?: string }[] };
          }
        ).quarantine;
        for (const c of q?.quarantined ?? [])
          io.out(
            `  quarantined: chunk ${c.chunkId} in ${c.objectKey}${bytes(c.range)}${c.quarantineKey ? ` (kept as ${c.quarantineKey})` : ''}: the next backup holding its data stores it again`,
          );
        if (s.healed)
          io.out(
            `  healed: the backup was damaged (${s.healed.previousVerifyId}) and is intact again; ${s.healed.chunks.length} chunk(s) no longer quarantined`,
          );
        const test = s.restoreTest;
        if (test && 'skipped' in test) io.out(`  restore test: not run: ${test.skipped}`);
        else if (test) {
          io.out(
            `  restore test: ${restoreTestOutcome(test)}${test.domain ? `; ${test.domain} and its folder were removed` : ''} (restore ${test.restoreSeconds.toFixed(1)} s)`,
          );
          if (test.swept.length) io.out(`  removed first, left by a mover that died: ${test.swept.join(', ')}`);
        }
      },
    ),
  );
}
