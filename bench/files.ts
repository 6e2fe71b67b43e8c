/**
 * File-level restore straight from the repository: how many bytes it downloads. A VM disk
 * (default 2 GiB: a GPT and one ext4 partition filled with incompressible files, a few
 * thousand small files in folders, and one 1 MiB file to fetch) is backed up on the
 * embedded stack by a real mover; then the `files` task extracts the 1 MiB file, and lists
 * a folder, reading the disk by random access through the repository (bench/files-scenario.ts).
 * Every GET is counted at the store; the figure is the bytes fetched against the disk's
 * stored bytes (the target: under 2%). Prints figures; asserts nothing.
 * Usage: npm run bench:files   (BENCH_FILES_MIB sets the disk size, default 2048)
 */
import { rm } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { startMover } from '../local/movers.ts';
import { EmbeddedStack } from '../local/stack.ts';
import { filesScenario, table } from './files-scenario.ts';

const MiB = 1024 * 1024;
const sizeMiB = Number(process.env.BENCH_FILES_MIB ?? 2048);
const dir = join(tmpdir(), `lifeboat-bench-files-${process.pid}`);
const out = (line: string) => process.stdout.write(`${line}\n`);
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');

const stack = await EmbeddedStack.start({ dataDir: join(dir, 'data') });
const mover = startMover(stack.endpoints, {
  name: 'f-1',
  group: 'site-a',
  onLog: (l) => {
    if (l.level === 'error') process.stderr.write(`mover: ${JSON.stringify(l)}\n`);
  },
});
try {
  out(`load before: ${load()}`);
  const f = await filesScenario(stack, { dir, sizeMiB, vmId: 'vm-b' });
  out(`guest disk ${sizeMiB} MiB (GPT, ext4 filled to ~80% with incompressible files, 2,000 small files): made in ${f.madeSeconds.toFixed(1)} s`);
  out(`backup ${f.backupSeconds.toFixed(1)} s, 1 MiB chunks; the disk's stored bytes: ${f.stored} (${(f.stored / MiB).toFixed(1)} MiB)`);
  for (const line of table(f.rows)) out(line);
  out(`target: extracting one 1 MiB file downloads < 2% of the disk's stored bytes (${((f.stored * 0.02) / MiB).toFixed(1)} MiB here)`);
  out(`load after: ${load()}`);
} finally {
  await mover.stop(true);
  await stack.stop();
  await rm(dir, { recursive: true, force: true });
}
