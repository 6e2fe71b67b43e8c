import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // One file at a time by default, as on CI's 2 cores before. LIFEBOAT_TEST_WORKERS=2 runs two
    // side by side (every file uses its own ports, folders and libvirt names): 24 minutes
    // instead of 34 in a clean clone, but one libvirt e2e case failed once under that contention.
    maxWorkers: Number(process.env.LIFEBOAT_TEST_WORKERS ?? 1),
  },
});
