/**
 * The settings a mover process starts with, set by whatever launches it (the systemd
 * unit, the embedded stack, the benchmark; a self-update keeps them): the C allocator's
 * (glibc reads them from the environment at start-up), V8's (command-line flags: Node
 * refuses this one in NODE_OPTIONS), and where Node keeps its compiled code between starts.
 *
 * The pipelines allocate and free chunk-sized buffers all the time (decrypted and
 * decompressed chunks, network reads). With glibc's defaults, freed memory is handed back
 * to the kernel and faulted in again moments later, in every thread's arena: on the
 * 512 MiB bench restore, ~54,000 page faults and ~1.2 s of system time. Keeping up to 64
 * MiB free per arena, taking buffers under 32 MiB from the arenas (not from mmap), and two
 * arenas instead of one per thread halve the faults and cut the restore's CPU time by
 * ~20%, with a lower peak RSS (measured with /usr/bin/time, 4 runs each).
 */
export const MOVER_MALLOC_ENV: Readonly<Record<string, string>> = Object.freeze({
  MALLOC_ARENA_MAX: '2',
  MALLOC_MMAP_THRESHOLD_: String(32 * 1024 * 1024),
  MALLOC_TRIM_THRESHOLD_: String(64 * 1024 * 1024),
});

/**
 * V8 flags for a mover process. The main thread's heap is small (~17 MiB, mostly the AWS
 * SDK) but a restore or backup promotes a steady stream of short-lived request objects;
 * with V8's default initial old-space limit that cost ~70 full collections (~13 ms each)
 * on the main thread of the 2 GiB bench restore. Starting the limit at 64 MiB: 15, and
 * measured on the 2 GiB bench (one run each, quiet machine): full 11.3 -> 8.8 s, incremental
 * 3.2 -> 2.4 s, restore 8.6 -> 7.0 s, peak RSS 237/178/208 -> 240/184/227 MiB. At 96 MiB it
 * was no faster and the restore's RSS reached 251 MiB.
 */
export const MOVER_NODE_FLAGS: readonly string[] = Object.freeze(['--initial-old-space-size=64']);

/**
 * The environment a mover starts with: the allocator settings, and Node's compile cache
 * in `compileCacheDir` (NODE_COMPILE_CACHE; the systemd unit uses its CacheDirectory). A
 * mover started again (after a crash, a self-update, a reboot) then loads the AWS SDK and
 * its own modules from V8's cached code: ~0.25 s sooner and ~20 MiB less peak RSS per
 * start, measured on the bench's incremental (one process per phase, 4 runs each).
 */
export function moverStartEnv(compileCacheDir: string): Record<string, string> {
  return { ...MOVER_MALLOC_ENV, NODE_COMPILE_CACHE: compileCacheDir };
}
