/**
 * The settings a mover process starts with, set by whatever launches it (the systemd
 * unit, the embedded stack, the benchmark; a self-update keeps them): the C allocator's
 * (glibc reads them from the environment at start-up), V8's (command-line flags: Node
 * refuses this one in NODE_OPTIONS), and where Node keeps its compiled code between starts.
 *
 * The pipelines allocate and free chunk-sized buffers all the time (decrypted and
 * decompressed chunks, network reads). With glibc's defaults, freed memory is handed back
 * to the kernel and faulted in again moments later, in every thread's arena. Taking
 * buffers under 1 MiB from the arenas (not from mmap: a 512 KiB chunk's buffers among
 * them), and two arenas instead of one per thread fault far less and spend less CPU, with
 * a lower peak RSS. Larger buffers (decompressed index objects and manifest pieces, packs,
 * the index's table) are mapped and unmapped: from the arenas (the threshold was 32 MiB),
 * once freed they stayed there as free memory no trim returns (only an arena's top is
 * trimmed), and an incremental of a disk of millions of chunks held 50-140 MiB of it in
 * the main arena at its peak. The trim threshold is
 * glibc's own (128 KiB): keeping 64 MiB free per arena cost a disk of millions of small
 * chunks up to 64 MiB of resident memory for nothing (bench:big-disk), and 512 KiB chunks'
 * backups and restores spent about the same CPU with either (the figures:
 * bench/MEASUREMENTS.md).
 */
export const MOVER_MALLOC_ENV: Readonly<Record<string, string>> = Object.freeze({
  MALLOC_ARENA_MAX: '2',
  MALLOC_MMAP_THRESHOLD_: String(1024 * 1024),
  MALLOC_TRIM_THRESHOLD_: String(128 * 1024),
});

/**
 * V8 flags for a mover process. The main thread's heap is small (~17 MiB, mostly the AWS
 * SDK) but a restore or backup promotes a steady stream of short-lived request objects;
 * with V8's default initial old-space limit that means many full collections on the main
 * thread. Starting the limit at 64 MiB makes backups and restores faster for a few MiB of
 * RSS; 96 MiB was no faster. Semi-spaces of at most 4 MiB (V8's default grows them to 16
 * MiB) keep the young generation's garbage from doubling the committed heap: a backup of
 * a disk of millions of small chunks peaked over the mover's 256 MiB without it. An old
 * generation of at most 512 MiB (V8's default on this machine: 4 GiB) also makes V8 grow
 * it by a smaller factor after each full collection (~1.5 times what is live instead of up
 * to 4): a backup's main thread, ~38 MiB live, let 126 MiB pile up before a full
 * collection, and ~60 with it. A mover whose heap outgrows 512 MiB is broken anyway
 * (its whole target is 256). The figures: bench/MEASUREMENTS.md.
 */
export const MOVER_NODE_FLAGS: readonly string[] = Object.freeze(['--initial-old-space-size=64', '--max-semi-space-size=4', '--max-old-space-size=512']);

/**
 * The environment a mover starts with: the allocator settings, and Node's compile cache
 * in `compileCacheDir` (NODE_COMPILE_CACHE; the systemd unit uses its CacheDirectory). A
 * mover started again (after a crash, a self-update, a reboot) then loads the AWS SDK and
 * its own modules from V8's cached code, sooner and with less peak RSS
 * (bench/MEASUREMENTS.md).
 */
export function moverStartEnv(compileCacheDir: string): Record<string, string> {
  return { ...MOVER_MALLOC_ENV, NODE_COMPILE_CACHE: compileCacheDir };
}
