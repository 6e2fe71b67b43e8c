/**
 * The repository layer's types, for code outside repository/ that takes or passes its
 * objects. The modules that hold these classes (and their keyed entry points:
 * `ManifestReader.open`, `RepositoryIndex.load`, `new PackWriter`, `new ManifestWriter`) are
 * private to repository/ and test/: biome.json forbids mover/, functions/, local/, cli/ and
 * bench/ to import them (test/lint-config.test.ts), so the objects are only had from a
 * `Repository` (open.ts).
 */
export type { ManifestBatch, ManifestCursor, ManifestEntry, ManifestInfo, ManifestReader, PieceInfo } from './manifest/reader.ts';
export type { ManifestWriter } from './manifest/writer.ts';
export type { PackWriter } from './pack-writer.ts';
export type { IndexCache, RepositoryIndex } from './repository-index.ts';
