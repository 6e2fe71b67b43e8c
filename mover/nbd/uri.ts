/**
 * NBD URIs (NetworkBlockDevice/nbd `doc/uri.md`): `nbd+unix:///EXPORT?socket=/path`,
 * `nbd://host[:port]/EXPORT`, and their TLS forms `nbds+unix://` and `nbds://`. A TLS
 * URI MUST NOT fall back to plain text (the spec): the client refuses to go on without
 * TLS (`client.ts`).
 */
import { SourceUnavailable } from '../../contracts/errors.ts';

/** Where an export is and what it is called. Exactly one of `socket` and `host` is set. */
export interface NbdTarget {
  exportName: string;
  /** A unix socket path. */
  socket?: string;
  host?: string;
  port?: number;
  /** `nbds`/`nbds+unix`: the handshake starts with NBD_OPT_STARTTLS, and nothing goes in clear text. */
  tls?: boolean;
  /** The name the server's certificate must carry (default: `host`, or `localhost` on a unix socket); the URI's `tls-hostname`. */
  tlsHostname?: string;
}

/** The IANA port for NBD, the default of `nbd://` URIs. */
export const NBD_PORT = 10809;

/** Parses an NBD URI; throws SourceUnavailable naming what is wrong with it. */
export function parseNbdUri(uri: string): NbdTarget {
  let url: URL;
  try {
    url = new URL(uri);
  } catch (err) {
    throw new SourceUnavailable(`'${uri}' is not an NBD URI`, err);
  }
  const exportName = decodeExportName(url, uri);
  const tls = url.protocol === 'nbds:' || url.protocol === 'nbds+unix:';
  const tlsHostname = url.searchParams.get('tls-hostname');
  const withTls = <T extends NbdTarget>(t: T): T => (tls ? { ...t, tls: true, ...(tlsHostname && { tlsHostname }) } : t);
  if (url.protocol === 'nbd+unix:' || url.protocol === 'nbds+unix:') {
    const socket = url.searchParams.get('socket');
    if (!socket) throw new SourceUnavailable(`NBD URI '${uri}' has no socket parameter (nbd+unix:///EXPORT?socket=/path)`);
    if (url.host !== '') throw new SourceUnavailable(`NBD URI '${uri}' names a host for a unix socket`);
    return withTls({ exportName, socket });
  }
  if (url.protocol === 'nbd:' || url.protocol === 'nbds:') {
    if (url.hostname === '') throw new SourceUnavailable(`NBD URI '${uri}' has no host (nbd://HOST[:PORT]/EXPORT)`);
    const port = url.port === '' ? NBD_PORT : Number(url.port);
    // URL keeps the brackets of an IPv6 literal; net.connect wants the bare address.
    return withTls({ exportName, host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port });
  }
  throw new SourceUnavailable(`'${uri}' is not an NBD URI (scheme ${url.protocol} is not nbd:, nbds:, nbd+unix: or nbds+unix:)`);
}

function decodeExportName(url: URL, uri: string): string {
  // The export name is the path without its first '/', percent-decoded (doc/uri.md).
  try {
    return decodeURIComponent(url.pathname.replace(/^\//, ''));
  } catch (err) {
    throw new SourceUnavailable(`NBD URI '${uri}' has a badly percent-encoded export name`, err);
  }
}

/** A target for messages: `export 'vda' at unix socket /run/backup.sock`. */
export function describeTarget(t: NbdTarget): string {
  const where = t.socket !== undefined ? `unix socket ${t.socket}` : `${t.host}:${t.port ?? NBD_PORT}`;
  return `NBD export '${t.exportName}' at ${where}${t.tls ? ' (TLS)' : ''}`;
}

/** The standard NBD URI of an export on a TCP port (`nbds://` with TLS). */
export function tcpNbdUri(host: string, port: number, exportName: string, tls: boolean): string {
  const h = host.includes(':') ? `[${host}]` : host;
  return `${tls ? 'nbds' : 'nbd'}://${h}:${port}/${encodeURIComponent(exportName)}`;
}

/** The NBD URI of an export on a unix socket, as QEMU and libnbd take it (the path as is). */
export function unixNbdUri(socket: string, exportName: string): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socket}`;
}
