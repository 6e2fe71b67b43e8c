/**
 * The import boundaries in biome.json (`npm test` runs `biome ci` over the tree): each rule
 * is shown failing on a file that breaks it, and passing on one that keeps it. The files
 * are written to a scratch folder beside a copy of the real configuration, never into the
 * tree.
 */
import { execFile } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, test } from 'vitest';

const root = resolve(import.meta.dirname, '..');
const biome = join(root, 'node_modules', '.bin', 'biome');

const files: Record<string, string> = {
  // Broken: a handler module imported from outside functions/.
  'cli/imports-handler.ts': "import { planHandler } from '../functions/backup/plan.ts';\nexport const x = planHandler;\n",
  // Broken: the catalog opened outside the stack's clients.
  'bench/opens-catalog.ts': "import { Catalog } from '../functions/catalog/catalog.ts';\nexport const x = Catalog;\n",
  // Broken: contracts/ importing something above it.
  'contracts/imports-core.ts': "import { parseConfig } from '../core/config.ts';\nexport const x = parseConfig;\n",
  // Broken: the repository layer importing the control plane.
  // Broken: core/ importing the repository layer that stands on it.
  'core/imports-repository.ts': "import { objectKeys } from '../repository/format.ts';\nexport const x = objectKeys;\n",
  'repository/imports-functions.ts': "import { collectGarbage } from '../functions/gc/gc.ts';\nexport const x = collectGarbage;\n",
  // Broken: the mover importing the embedded stack.
  'mover/imports-local.ts': "import { LocalFunctions } from '../local/lambdas.ts';\nexport const x = LocalFunctions;\n",
  // Broken: a CLI command starting executions with the Step Functions client instead of cli/stack-client.ts.
  'cli/bypasses-client.ts': "import { runExecution } from '../local/client.ts';\nexport const x = runExecution;\n",
  // Kept: contracts (a catalog record type among them) and the stack client.
  'cli/keeps-boundaries.ts':
    "import type { RunSummary } from '../contracts/workflow-outputs.ts';\nimport type { HostConfigRecord } from '../contracts/host-config.ts';\nimport { StackClient } from './stack-client.ts';\nexport type X = [RunSummary, HostConfigRecord];\nexport const y = StackClient;\n",
  // Broken: the CLI opening the catalog instead of reading it through the operator API.
  'cli/opens-catalog.ts': "import { Catalog } from '../functions/catalog/catalog.ts';\nexport const x = Catalog;\n",
  // Broken: the CLI taking even a type from functions/ (record types are in contracts/).
  'cli/imports-catalog-type.ts': "import type { HostConfigRecord } from '../functions/catalog/host-config-catalog.ts';\nexport type X = HostConfigRecord;\n",
  // Broken: the console reaching into the operator API's modules instead of calling the API.
  'local/console/imports-operator.ts': "import { answer } from '../../functions/operator/api.ts';\nexport const x = answer;\n",
  // Kept: the embedded stack's wiring opens the catalog.
  'local/stack.ts': "import { Catalog } from '../functions/catalog/catalog.ts';\nexport const x = Catalog;\n",
  // Broken: the mover sealing with the repository's keys instead of through its Repository.
  'mover/pipeline/seals-itself.ts': "import { chunkId, seal } from '../../repository/format.ts';\nexport const x = [chunkId, seal];\n",
  // Broken: a function reading a chunk and an index object with the free functions.
  'functions/gc/reads-packs.ts':
    "import { readChunk, decodeIndexObject } from '../../repository/packs.ts';\nexport const x = [readChunk, decodeIndexObject];\n",
  // Broken: a bench deriving keys from a master key.
  'bench/derives-keys.ts': "import { deriveKeys } from '../repository/format.ts';\nexport const x = deriveKeys;\n",
  // Kept: the chunk worker seals and opens with the keys the pool hands it (repository.workerKeys()).
  'mover/pipeline/chunk-worker.ts':
    "import { chunkId } from '../../repository/format.ts';\nimport { sealIntoPack } from '../../repository/pack-buffer.ts';\nexport const x = [chunkId, sealIntoPack];\n",
  // Broken: the keyed classes' static entry points, reached through the modules that hold them (even for a type).
  'mover/pipeline/opens-manifest.ts': "import { ManifestReader } from '../../repository/manifest/reader.ts';\nexport const x = ManifestReader.open;\n",
  'functions/gc/loads-index.ts': "import { RepositoryIndex } from '../../repository/repository-index.ts';\nexport const x = RepositoryIndex.load;\n",
  'bench/new-pack-writer.ts': "import { PackWriter } from '../repository/pack-writer.ts';\nexport const x = PackWriter;\n",
  'cli/writes-manifest.ts': "import type { ManifestWriter } from '../repository/manifest/writer.ts';\nexport type X = ManifestWriter;\n",
  'local/lambdas.ts': "import type { IndexCache } from '../repository/repository-index.ts';\nexport type X = IndexCache;\n",
  // Broken: the chunk worker's exception is for the keyed functions only, not the classes' modules.
  'mover/pipeline/open-chunk.ts': "import type { RepositoryIndex } from '../../repository/repository-index.ts';\nexport type X = RepositoryIndex;\n",
  // Kept: the same classes as types, from the types-only module.
  'mover/pipeline/keeps-types.ts':
    "import type { ManifestReader, ManifestWriter, PackWriter, RepositoryIndex } from '../../repository/types.ts';\nexport type X = [ManifestReader, ManifestWriter, PackWriter, RepositoryIndex];\n",
  // Kept: the format's unkeyed parts (object keys, sizes) and the Repository.
  'mover/pipeline/keeps-repository.ts':
    "import { isZero, objectKeys, sealedCapacity } from '../../repository/format.ts';\nimport type { Repository } from '../../repository/open.ts';\nexport type R = Repository;\nexport const x = [isZero, objectKeys, sealedCapacity];\n",
  // Kept: a handler module importing its commons and contracts.
  'functions/backup/keeps.ts':
    "import { clients } from '../commons/clients.ts';\nimport { vmJob } from '../../contracts/jobs.ts';\nexport const x = [clients, vmJob];\n",
};

let dir: string;
let report: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'lifeboat-lint-'));
  await copyFile(join(root, 'biome.json'), join(dir, 'biome.json'));
  for (const [path, text] of Object.entries(files)) {
    await mkdir(dirname(join(dir, path)), { recursive: true });
    await writeFile(join(dir, path), text);
  }
  const run = promisify(execFile)(biome, ['lint', '--colors=off', '--vcs-enabled=false', '--max-diagnostics=100', ...Object.keys(files)], { cwd: dir });
  report = await run.then(
    (r) => r.stdout + r.stderr,
    (err: { stdout?: string; stderr?: string }) => `${err.stdout ?? ''}${err.stderr ?? ''}`,
  );
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const CLASS_MODULES = "The modules of the repository's keyed classes are private to repository/";

/** The diagnostics biome printed for one file (a header line `path:line:col rule`, then its text). */
function diagnosticsOf(path: string): string[] {
  return report.split(/\n(?=\S+\.ts:\d+:\d+ )/).filter((d) => d.startsWith(`${path}:`));
}

test.each([
  ['cli/imports-handler.ts', 'cli/ imports nothing of functions/'],
  ['bench/opens-catalog.ts', "only the embedded stack's wiring (local/stack.ts) opens the catalog"],
  ['cli/opens-catalog.ts', 'read the catalog through the operator API'],
  ['cli/imports-catalog-type.ts', 'cli/ imports nothing of functions/'],
  ['local/console/imports-operator.ts', 'Nothing outside functions/ imports a handler module'],
  ['contracts/imports-core.ts', 'contracts/ imports nothing of this repository'],
  ['core/imports-repository.ts', 'core/ imports only contracts/ and core/'],
  ['repository/imports-functions.ts', 'repository/ imports only contracts/, core/ and repository/'],
  ['mover/imports-local.ts', 'The mover shares only contracts/, core/ and repository/'],
  ['cli/bypasses-client.ts', "cli/ talks to a stack's workflows through its client"],
  ['bench/derives-keys.ts', "The format's keyed functions are private to repository/"],
  ['mover/pipeline/opens-manifest.ts', CLASS_MODULES],
  ['functions/gc/loads-index.ts', CLASS_MODULES],
  ['bench/new-pack-writer.ts', CLASS_MODULES],
  ['cli/writes-manifest.ts', CLASS_MODULES],
  ['local/lambdas.ts', CLASS_MODULES],
  ['mover/pipeline/open-chunk.ts', CLASS_MODULES],
])('%s breaks a boundary and fails the lint', (path, message) => {
  const found = diagnosticsOf(path);
  expect(found, report).toHaveLength(1);
  expect(found[0]).toContain('lint/style/noRestrictedImports');
  expect(found[0]).toContain(message);
});

test.each([
  ['mover/pipeline/seals-itself.ts', 2],
  ['functions/gc/reads-packs.ts', 2],
])("%s uses the format's keyed functions outside repository/ and fails the lint once per name", (path, names) => {
  const found = diagnosticsOf(path);
  expect(found, report).toHaveLength(names);
  for (const d of found) expect(d).toContain("The format's keyed functions are private to repository/");
});

test.each([
  ['cli/keeps-boundaries.ts'],
  ['local/stack.ts'],
  ['functions/backup/keeps.ts'],
  ['mover/pipeline/chunk-worker.ts'],
  ['mover/pipeline/keeps-repository.ts'],
  ['mover/pipeline/keeps-types.ts'],
])('%s keeps the boundaries and passes', (path) => {
  expect(diagnosticsOf(path), report).toEqual([]);
});
