import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Vitest's default is one fork fewer than the cores: on CI's 2 cores, one file at a time.
    // The e2e files spend most of their time waiting on servers, movers and guests, and every
    // one uses its own ports, folders and libvirt names, so two run side by side
    // (LIFEBOAT_TEST_WORKERS=1 for one at a time).
    maxWorkers: Number(process.env.LIFEBOAT_TEST_WORKERS ?? 2),
  },
});
