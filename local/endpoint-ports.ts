/**
 * Stable ports for the embedded stack's extra S3 endpoints. A repository configured on
 * another endpoint is served by an s3rver of its own; its local URL ends up in catalog
 * records, execution histories and job inputs (a replica's, a deep verification's), so it
 * must not change when the stack restarts. The port each endpoint got is kept in
 * `<dataDir>/endpoint-ports.json` (by the endpoint's data folder name) and asked for again
 * on the next start; only when another process holds it meanwhile does the endpoint get
 * a fresh port (and the file the new one).
 */
import { readFile, rename, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';

export const ENDPOINT_PORTS_FILE = 'endpoint-ports.json';

/** The ports saved in `dataDir`, by endpoint folder name; empty when none were saved (or the file is unreadable). */
export async function loadEndpointPorts(dataDir: string): Promise<Record<string, number>> {
  let text: string;
  try {
    text = await readFile(join(dataDir, ENDPOINT_PORTS_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw err;
  }
  try {
    const parsed = JSON.parse(text) as unknown;
    if (typeof parsed !== 'object' || parsed === null) return {};
    return Object.fromEntries(Object.entries(parsed).filter((e): e is [string, number] => Number.isInteger(e[1]) && e[1] > 0 && e[1] < 65536));
  } catch {
    return {}; // a torn write: the endpoints get fresh ports, and the file is written again
  }
}

/** Saves the ports (write then rename: never a half-written file). */
export async function saveEndpointPorts(dataDir: string, ports: Record<string, number>): Promise<void> {
  const file = join(dataDir, ENDPOINT_PORTS_FILE);
  await writeFile(`${file}.tmp`, `${JSON.stringify(ports, null, 2)}\n`);
  await rename(`${file}.tmp`, file);
}

const inUse = (err: unknown) => (err as NodeJS.ErrnoException)?.code === 'EADDRINUSE' || /EADDRINUSE/.test(String((err as Error)?.message));

/** Whether `port` on 127.0.0.1 can be listened on now (bound and released at once). */
export function portFree(port: number): Promise<boolean> {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once('error', (err) => (inUse(err) || (err as NodeJS.ErrnoException).code === 'EACCES' ? ok(false) : fail(err)));
    probe.listen(port, '127.0.0.1', () => probe.close(() => ok(true)));
  });
}

/**
 * Starts a server on `saved` when given and free, else on a free port (0). The port is
 * probed first: s3rver reports a taken port as an unhandled 'error' event, never as a
 * rejected start. (Another process could take it between the probe and the start; the
 * start then fails, and the next start picks a new one.)
 */
export async function startOnSavedPort<S>(saved: number | undefined, start: (port: number) => Promise<S>): Promise<{ server: S; reused: boolean }> {
  if (saved && (await portFree(saved))) return { server: await start(saved), reused: true };
  return { server: await start(0), reused: false };
}
