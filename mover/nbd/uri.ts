/**
 * NBD URIs (NetworkBlockDevice/nbd `doc/uri.md`): `nbd+unix:///EXPORT?socket=/path` and
 * `nbd://host[:port]/EXPORT`. The TLS schemes (`nbds`, `nbds+unix`) are refused: this
 * client does not do TLS, and the spec says such a URI MUST NOT fall back to plain text.
 */
import { SourceUnavailable } from '../../core/errors.ts';

/** Where an export is and what it is called. Exactly one of `socket` and `host` is set. */
export interface NbdTarget {
  exportName: string;
  /** A unix socket path. */
  socket?: string;
  host?: string;
  port?: number;
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
  if (url.protocol === 'nbd+unix:') {
    const socket = url.searchParams.get('socket');
    if (!socket) throw new SourceUnavailable(`NBD URI '${uri}' has no socket parameter (nbd+unix:///EXPORT?socket=/path)`);
    if (url.host !== '') throw new SourceUnavailable(`NBD URI '${uri}' names a host for a unix socket`);
    return { exportName, socket };
  }
  if (url.protocol === 'nbd:') {
    if (url.hostname === '') throw new SourceUnavailable(`NBD URI '${uri}' has no host (nbd://HOST[:PORT]/EXPORT)`);
    const port = url.port === '' ? NBD_PORT : Number(url.port);
    // URL keeps the brackets of an IPv6 literal; net.connect wants the bare address.
    return { exportName, host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port };
  }
  if (url.protocol === 'nbds:' || url.protocol === 'nbds+unix:') throw new SourceUnavailable(`NBD URI '${uri}' asks for TLS, which this client does not support`);
  throw new SourceUnavailable(`'${uri}' is not an NBD URI (scheme ${url.protocol} is not nbd: or nbd+unix:)`);
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
  return `NBD export '${t.exportName}' at ${where}`;
}
