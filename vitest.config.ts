import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Two files side by side on CI's 2 cores (every file uses its own ports, folders and libvirt
    // names): about 24 minutes instead of 34 one at a time. LIFEBOAT_TEST_WORKERS=1 runs one at a
    // time, for a machine that is already loaded.
    maxWorkers: Number(process.env.LIFEBOAT_TEST_WORKERS ?? 2),
  },
});
