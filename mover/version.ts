/**
 * The running mover's version. Source checkouts report package.json's version
 * (core/version.ts); a release bundle has its version compiled in by
 * `lifeboat release publish` (esbuild `define`), so the artifact knows what it is
 * whatever package.json says where it runs.
 */
import { LIFEBOAT_VERSION } from '../core/version.ts';

declare const LIFEBOAT_BUILD_VERSION: string | undefined;

/** The version this program was built as. */
export const MOVER_VERSION: string = typeof LIFEBOAT_BUILD_VERSION === 'string' ? LIFEBOAT_BUILD_VERSION : LIFEBOAT_VERSION;
