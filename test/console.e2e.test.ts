/**
 * The web console in a real browser (Debian's chromium driven by playwright-core) against
 * one embedded stack with a real mover: the overview shows what the catalog holds, a
 * backup started from the page runs to its end with per-VM progress, the VM's page lists
 * the backup, and a deep verification and a restore started there run. Screenshots of each
 * page go to .artifacts/console/ (gitignored). Skipped, saying why, where chromium is missing.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createVmFolder, seededRng } from '../local/demo/vm-image.ts';
import { startTestStack, type TestStack } from './helpers/stack.ts';

const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = resolve(import.meta.dirname, '..', '.artifacts', 'console');
const MiB = 1024 * 1024;
const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) console.warn(`console.e2e: SKIPPED: no ${CHROMIUM} (apt-get install chromium; .ci/run installs it)`);

let t: TestStack;
let browser: BrowserContext;
let profile: string;
let page: Page;

/** Reloads until the element's text is one of `done` (the pages refresh themselves too). */
async function waitForStatus(selector: string, done: string[], timeoutMs = 120_000): Promise<string> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const text =
      (
        await page
          .locator(selector)
          .textContent()
          .catch(() => null)
      )?.trim() ?? '';
    if (done.includes(text)) return text;
    if (Date.now() > until) throw new Error(`${selector} still '${text}' after ${timeoutMs} ms`);
    await page.waitForTimeout(1000);
    // The page's own refresh may navigate while we reload (ERR_ABORTED): the next look reads whichever page loaded.
    await page.reload().catch(() => undefined);
  }
}

describe.skipIf(!haveChromium)('web console (chromium)', () => {
  beforeAll(async () => {
    await mkdir(ARTIFACTS, { recursive: true });
    t = await startTestStack({ movers: 1 });
    const vmDir = join(t.dir, 'vms', 'vm-web');
    await createVmFolder(vmDir, { name: 'vm-web', disks: [{ id: 'disk0', sizeBytes: 8 * MiB }] }, seededRng(21));
    await t.stack.catalog.putVm({ vmId: 'vm-web', host: 'esx-02', source: vmDir });
    await t.stack.catalog.putPolicy({ policyId: 'p-web', vmIds: ['vm-web'], bucket: t.stack.endpoints.bucket, chunkSize: MiB, slotLimit: 1, rpoHours: 24 });
    profile = await mkdtemp(join(tmpdir(), 'lifeboat-chromium-'));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
    page = await browser.newPage();
  }, 300_000);
  afterAll(async () => {
    await browser?.close();
    if (profile) await rm(profile, { recursive: true, force: true });
    await t?.close();
  });

  it('shows the catalog, and a backup started from the page runs with per-VM progress', async () => {
    await page.goto(`${t.stack.endpoints.console}/`);
    expect(await page.title()).toBe('Overview · Lifeboat');
    await expect.poll(() => page.locator('#policies').textContent()).toContain('p-web');
    expect(await page.locator('#vms').textContent()).toMatch(/vm-web.*esx-02.*protected.*p-web/);
    expect(await page.locator('#movers').textContent()).toMatch(/site-a.*test-mover-1.*running/);
    // Mover groups without a mover are an alert on the page.
    expect(await page.locator('#alerts [data-kind="mover-group-silent"]').count()).toBeGreaterThan(0);
    await page.screenshot({ path: join(ARTIFACTS, '1-overview.png'), fullPage: true });

    await page.click('#backup-p-web');
    await page.waitForURL(/\/runs\/[\w-]+$/);
    const runId = page.url().split('/').pop()!;
    expect(await page.locator('h1').textContent()).toBe(`Run ${runId}`);
    expect(await waitForStatus('#run-status', ['SUCCEEDED', 'FAILED'])).toBe('SUCCEEDED');
    expect(await page.locator('#run-vms').textContent()).toMatch(/vm-web\s*committed/);
    await page.screenshot({ path: join(ARTIFACTS, '2-run.png'), fullPage: true });
    expect((await t.stack.catalog.latestCommitted('vm-web'))?.runId).toBe(runId);
  }, 180_000);

  it("lists the VM's backup, and verify and restore started from its page run", async () => {
    await page.goto(`${t.stack.endpoints.console}/vms/vm-web`);
    const backups = await page.locator('#backups').textContent();
    expect(backups).toMatch(/committed\s*8\.00 MiB/);
    await page.screenshot({ path: join(ARTIFACTS, '3-vm.png'), fullPage: true });

    await page.click('#verify');
    await page.waitForURL(/\/executions\/DeepVerify\//);
    expect(await waitForStatus('#execution-status', ['SUCCEEDED', 'FAILED'])).toBe('SUCCEEDED');
    expect(JSON.parse((await page.locator('#execution-output').textContent())!)).toMatchObject({ vmId: 'vm-web', damaged: false });
    // The verification's disks, from the mover's progress objects: phase, disk, bytes covered, rate, ETA, mover.
    expect(await page.locator('#execution-disks').textContent()).toMatch(/done\s*disk0\s*8\.00 MiB of 8\.00 MiB/);
    await page.screenshot({ path: join(ARTIFACTS, '4-verify.png'), fullPage: true });

    const target = join(t.dir, 'restored-web');
    await page.goto(`${t.stack.endpoints.console}/vms/vm-web`);
    await page.fill('form[action="/actions/restore"] input[name="target"]', target);
    await page.click('#restore');
    await page.waitForURL(/\/executions\/Restore\//);
    expect(await waitForStatus('#execution-status', ['SUCCEEDED', 'FAILED'])).toBe('SUCCEEDED');
    expect(await page.locator('#execution-disks').textContent()).toMatch(/done\s*disk0\s*8\.00 MiB of 8\.00 MiB/);
    await page.screenshot({ path: join(ARTIFACTS, '5-restore.png'), fullPage: true });
    const restored = await readdir(target);
    expect(restored).toContain('vm.json');
    expect(restored.some((f) => f.startsWith('disk0'))).toBe(true);

    // The VM's backup now shows as verified; a bad form names what was wrong.
    await page.goto(`${t.stack.endpoints.console}/vms/vm-web`);
    expect(await page.locator('#backups tbody tr:first-child td:nth-child(8)').textContent()).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/);
    const bad = await page.request.post(`${t.stack.endpoints.console}/actions/restore`, { form: { vmId: 'vm-web', group: 'site-a', target: 'relative/path' } });
    expect(bad.status()).toBe(400);
    expect(await bad.text()).toContain('the restore target &#39;relative/path&#39; is not an absolute path on the mover');
  }, 240_000);
});
