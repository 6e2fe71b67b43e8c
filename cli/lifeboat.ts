#!/usr/bin/env node
/** The `lifeboat` command line: a thin shell over local/ and the Step Functions API. */
import { Command, InvalidArgumentError } from 'commander';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { registerBackupCommands } from './backup.ts';
import { registerConsoleCommand } from './console.ts';
import { registerDiscoverCommand } from './discover.ts';
import { registerExportCommand } from './export.ts';
import { registerFilesCommands } from './files.ts';
import { registerHostConfigCommands } from './host-config.ts';
import { registerLifecycleCommands } from './lifecycle.ts';
import { registerListingCommands } from './listings.ts';
import { registerRecoveryCommands } from './recovery.ts';
import { registerFailbackCommand } from './failback.ts';
import { registerFailoverCommand } from './failover.ts';
import { guarded } from './stack-client.ts';
import type { MoverProcess } from '../local/movers.ts';

const DEFAULT_DATA_DIR = resolve(import.meta.dirname, '..', '.lifeboat');

const positiveInt = (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`'${v}' is not a whole number`);
  return n;
};

const program = new Command('lifeboat').description('Lifeboat VM backup: the embedded stack and its tools');
// Usage errors the parser finds (unknown option, missing or bad value) exit 2; help and --version exit 0.
program.exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2));

program
  .command('demo')
  .description(
    'start the embedded stack and two movers; back up a running VM (libvirt/QEMU; a folder VM where they are not installed), back it up again incrementally, restore it and boot the restore',
  )
  .option('--data-dir <dir>', 'state folder of the embedded stack', DEFAULT_DATA_DIR)
  .option('--movers <n>', 'mover processes to start', positiveInt, 2)
  .option('--folder', 'use a folder of raw images as the VM, even where libvirt is installed')
  .action(async (opts: { dataDir: string; movers: number; folder?: boolean }) => {
    const tty = process.stdout.isTTY;
    const o = {
      dataDir: resolve(opts.dataDir),
      movers: opts.movers,
      out: (line: string) => process.stdout.write(`${tty ? '\r\x1b[2K' : ''}${line}\n`),
      status: tty ? (line: string) => process.stdout.write(`\r\x1b[2K${line}`) : undefined,
    };
    // The embedded stack's modules (the CDK app among them) load only for the commands that start one.
    const [{ runDemo }, { runVmDemo }, { ensureLibvirtd }] = await Promise.all([
      import('../local/demo/demo.ts'),
      import('../local/demo/vm-demo.ts'),
      import('../local/vm-lab/libvirtd.ts'),
    ]);
    const lab = opts.folder ? { available: false as const, reason: '--folder was given' } : await ensureLibvirtd();
    if (lab.available) {
      await runVmDemo({ ...o, uri: lab.uri });
      return;
    }
    o.out(
      `No real VM for the demo (${lab.reason}); using a folder of raw images as the VM instead. For a running VM: apt-get install qemu-system-x86 libvirt-daemon-system libvirt-clients libvirt-daemon-driver-qemu linux-image-amd64 busybox-static qemu-guest-agent`,
    );
    await runDemo(o);
  });

program
  .command('up')
  .description('start the embedded stack (and movers) and keep it running until Ctrl-C')
  .option('--data-dir <dir>', 'state folder of the embedded stack', DEFAULT_DATA_DIR)
  .option('--movers <n>', 'mover processes to start per mover group', positiveInt, 2)
  .option('--sfn-port <port>', 'port of the Step Functions API', positiveInt, 8083)
  .option('--console-port <port>', 'port of the web console and the operator API (0: any free port)', positiveInt, 8084)
  .action(
    guarded(async (opts: { dataDir: string; movers: number; sfnPort: number; consolePort: number }) => {
      const [{ EmbeddedStack }, { startMover }] = await Promise.all([import('../local/stack.ts'), import('../local/movers.ts')]);
      const stack = await EmbeddedStack.start({
        dataDir: resolve(opts.dataDir),
        ports: { sfn: opts.sfnPort, console: opts.consolePort },
        onAlert: (event, fields) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`),
        onKeyFile: (problem) =>
          process.stderr.write(problem ? `lifeboat: ${problem.message}\n` : 'lifeboat: the repository key file opens the repository again\n'),
      });
      const e = stack.endpoints;
      await writeFile(join(e.dataDir, 'endpoints.json'), JSON.stringify(e, null, 2));
      const movers: MoverProcess[] = [];
      for (const group of stack.config.moverGroups) {
        for (let i = 1; i <= opts.movers; i++) {
          movers.push(startMover(e, { name: `${group.id}-mover-${i}`, group: group.id, onLog: (l) => process.stdout.write(`${JSON.stringify(l)}\n`) }));
        }
      }
      process.stdout.write(`Lifeboat embedded stack is up (endpoints in ${join(e.dataDir, 'endpoints.json')}):\n${JSON.stringify(e, null, 2)}\n`);
      process.stdout.write(`Web console: ${e.console}/ (read-only API under ${e.console}/api/)\n`);
      process.stdout.write(
        `Start a backup: aws stepfunctions start-execution --endpoint-url ${e.sfn} --state-machine-arn ${e.backupStateMachineArn} --input '{"policyId":"..."}'\n`,
      );
      await new Promise<void>((ok) => {
        process.once('SIGINT', ok);
        process.once('SIGTERM', ok);
      });
      await Promise.all(movers.map((m) => m.stop()));
      await stack.stop();
    }),
  );

registerBackupCommands(program, DEFAULT_DATA_DIR, {
  out: (line) => process.stdout.write(`${process.stdout.isTTY ? '\r\x1b[2K' : ''}${line}\n`),
  ...(process.stdout.isTTY ? { status: (line: string) => process.stdout.write(`\r\x1b[2K${line}`) } : {}),
});

registerRecoveryCommands(program, DEFAULT_DATA_DIR, {
  out: (line) => process.stdout.write(`${process.stdout.isTTY ? '\r\x1b[2K' : ''}${line}\n`),
  ...(process.stdout.isTTY ? { status: (line: string) => process.stdout.write(`\r\x1b[2K${line}`) } : {}),
});

registerFailoverCommand(program, DEFAULT_DATA_DIR, {
  out: (line) => process.stdout.write(`${process.stdout.isTTY ? '\r\x1b[2K' : ''}${line}\n`),
  ...(process.stdout.isTTY ? { status: (line: string) => process.stdout.write(`\r\x1b[2K${line}`) } : {}),
});

registerFailbackCommand(program, DEFAULT_DATA_DIR, {
  out: (line) => process.stdout.write(`${process.stdout.isTTY ? '\r\x1b[2K' : ''}${line}\n`),
  ...(process.stdout.isTTY ? { status: (line: string) => process.stdout.write(`\r\x1b[2K${line}`) } : {}),
});

registerDiscoverCommand(program, DEFAULT_DATA_DIR, {
  out: (line) => process.stdout.write(`${process.stdout.isTTY ? '\r\x1b[2K' : ''}${line}\n`),
  ...(process.stdout.isTTY ? { status: (line: string) => process.stdout.write(`\r\x1b[2K${line}`) } : {}),
});

registerHostConfigCommands(program, DEFAULT_DATA_DIR, {
  out: (line) => process.stdout.write(`${process.stdout.isTTY ? '\r\x1b[2K' : ''}${line}\n`),
  ...(process.stdout.isTTY ? { status: (line: string) => process.stdout.write(`\r\x1b[2K${line}`) } : {}),
});

registerListingCommands(program, DEFAULT_DATA_DIR, { out: (line) => process.stdout.write(`${line}\n`) });

registerExportCommand(program, DEFAULT_DATA_DIR, { out: (line) => process.stdout.write(`${line}\n`) });

registerFilesCommands(program, DEFAULT_DATA_DIR, {
  out: (line) => process.stdout.write(`${process.stdout.isTTY ? '\r\x1b[2K' : ''}${line}\n`),
  ...(process.stdout.isTTY ? { status: (line: string) => process.stdout.write(`\r\x1b[2K${line}`) } : {}),
});

registerLifecycleCommands(program, DEFAULT_DATA_DIR, { out: (line) => process.stdout.write(`${line}\n`) });

registerConsoleCommand(program, DEFAULT_DATA_DIR, { out: (line) => process.stdout.write(`${line}\n`) }, positiveInt);

await program.parseAsync();
