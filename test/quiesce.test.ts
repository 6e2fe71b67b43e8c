/**
 * Quiesce's edge: an agent that answers a ping and then stops answering while it freezes.
 * virsh is a small script here (the real one needs a guest whose agent stops at exactly that
 * moment; test/libvirt.e2e.test.ts covers an agent that does not answer at all).
 */
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { quiesced } from '../mover/sources/libvirt/quiesce.ts';
import { Virsh } from '../mover/sources/libvirt/virsh.ts';

let dir: string;
let calls: string;
let virsh: Virsh;
const info = { name: 'vm-1', uuid: 'u', disks: [], agentChannel: true, tags: [] };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-quiesce-'));
  calls = join(dir, 'calls');
  const program = join(dir, 'virsh');
  // Logs each call's command; domfsfreeze never answers (the caller's deadline kills it).
  await writeFile(program, `#!/bin/sh\nshift 3\necho "$1" >> '${calls}'\n[ "$1" = domfsfreeze ] && exec sleep 30\nexit 0\n`);
  await chmod(program, 0o755);
  virsh = new Virsh('qemu:///system', { virsh: program, timeoutMs: 500 });
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('quiesce', () => {
  it('takes a crash-consistent snapshot when the freeze does not answer, and still sends a thaw so the guest is not left frozen', async () => {
    let took = 0;
    const r = await quiesced(virsh, 1, info, undefined, undefined, async () => ++took);
    expect(took).toBe(1);
    expect(r.level).toMatchObject({ level: 'crash', reason: expect.stringMatching(/could not freeze the file systems.*domfsfreeze.*did not answer/) });
    expect((await readFile(calls, 'utf8')).trim().split('\n')).toEqual(['qemu-agent-command', 'domfsfreeze', 'domfsthaw']);
  });
});
