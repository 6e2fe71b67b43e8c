/**
 * TLS for NBD (NetworkBlockDevice/nbd `doc/proto.md`, "TLS support"): the client asks
 * NBD_OPT_STARTTLS before any other option, the server ACKs, and the rest of the
 * handshake and all of transmission go through TLS. The credentials are files in one
 * folder, in the layout QEMU's `tls-creds-x509` uses: `ca-cert.pem`, and for client
 * authentication (libvirt's `backup_tls_x509_verify`, qemu-nbd's default `verify-peer`)
 * `client-cert.pem` and `client-key.pem`.
 */
import { readFile } from 'node:fs/promises';
import { isIP, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { SourceUnavailable } from '../../contracts/errors.ts';

/** What the client proves and trusts; PEM text. */
export interface NbdTlsCredentials {
  /** The CA(s) the server's certificate must chain to (the system's CAs are not trusted). */
  ca: string;
  /** The client's certificate and key, for servers that verify clients (QEMU does by default). */
  cert?: string;
  key?: string;
  /** Where the credentials came from, for messages. */
  source?: string;
}

/** File names of QEMU's x509 credentials folder that a client uses. */
export const TLS_FILES = { ca: 'ca-cert.pem', cert: 'client-cert.pem', key: 'client-key.pem' } as const;

/**
 * Reads a credentials folder: `ca-cert.pem` is required; `client-cert.pem` and
 * `client-key.pem` go together (both or neither). Throws naming the missing file.
 */
export async function loadTlsCredentials(dir: string): Promise<NbdTlsCredentials> {
  const read = (f: string) =>
    readFile(join(dir, f), 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw new Error(`cannot read ${join(dir, f)}: ${err.message}`, { cause: err });
    });
  const [ca, cert, key] = await Promise.all([read(TLS_FILES.ca), read(TLS_FILES.cert), read(TLS_FILES.key)]);
  if (ca === undefined) throw new Error(`NBD TLS folder ${dir} has no ${TLS_FILES.ca} (the CA that signed the hypervisors' backup certificates)`);
  if ((cert === undefined) !== (key === undefined)) {
    throw new Error(
      `NBD TLS folder ${dir} has ${cert === undefined ? TLS_FILES.key : TLS_FILES.cert} without ${cert === undefined ? TLS_FILES.cert : TLS_FILES.key}: give both, or neither when the servers do not verify clients`,
    );
  }
  return { ca, ...(cert !== undefined && { cert }), ...(key !== undefined && { key }), source: dir };
}

/**
 * Wraps a connected socket (after the server ACKed NBD_OPT_STARTTLS) in TLS and resolves
 * once the TLS handshake succeeded: the server's certificate must chain to `ca` and name
 * `host` (an IP address is checked against the certificate's IP addresses).
 */
export function startTls(socket: Socket, creds: NbdTlsCredentials, host: string): Promise<TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = tlsConnect({
      socket,
      host,
      ca: creds.ca,
      minVersion: 'TLSv1.2',
      // SNI takes a host name, never an IP address (RFC 6066).
      ...(isIP(host) === 0 && { servername: host }),
      ...(creds.cert !== undefined && { cert: creds.cert, key: creds.key }),
    });
    const onError = (err: Error) => {
      secure.destroy();
      reject(new SourceUnavailable(`TLS with the NBD server failed: ${err.message}${creds.source ? ` (credentials from ${creds.source})` : ''}`, err));
    };
    secure.once('error', onError);
    secure.once('secureConnect', () => {
      secure.off('error', onError);
      resolve(secure);
    });
  });
}
