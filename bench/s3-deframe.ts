/**
 * s3rver behind a node:http proxy that removes aws-chunked framing from SigV4 streaming
 * uploads (s3rver 3.7.1 would store the framing inside the object), and counts requests
 * per bucket. The signed headers are forwarded unchanged (s3rver checks the signature);
 * only the body and Content-Length change.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import S3rver from 's3rver';

export function deframeAwsChunked(body: Buffer): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const eol = body.indexOf('\r\n', at);
    if (eol < 0) throw new Error('aws-chunked: missing chunk header');
    const header = body.toString('latin1', at, eol);
    const size = parseInt(header.split(';')[0]!, 16);
    if (!Number.isFinite(size)) throw new Error(`aws-chunked: bad chunk header '${header}'`);
    at = eol + 2;
    if (size === 0) break; // trailers (if any) follow; they are dropped
    parts.push(body.subarray(at, at + size));
    at += size + 2;
  }
  return Buffer.concat(parts);
}

export interface BenchS3 {
  url: string;
  directUrl: string;
  requests: Map<string, number>;
  close(): Promise<void>;
}

export async function startBenchS3(directory: string, buckets: string[]): Promise<BenchS3> {
  const s3rver = new S3rver({ port: 0, address: '127.0.0.1', directory, silent: true, configureBuckets: buckets.map((name) => ({ name })) });
  const { port: s3port } = await s3rver.run();
  const requests = new Map<string, number>();
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  const server = http.createServer((req, res) => {
    const bucket = (req.url ?? '/').split('?')[0]!.split('/')[1] || '(service)';
    requests.set(bucket, (requests.get(bucket) ?? 0) + 1);
    const headers = { ...req.headers };
    const forward = (body?: Buffer) => {
      if (body) {
        headers['content-length'] = String(body.length);
        delete headers['transfer-encoding'];
      }
      const up = http.request({ host: '127.0.0.1', port: s3port, method: req.method, path: req.url, headers, agent }, (ur) => {
        res.writeHead(ur.statusCode ?? 502, ur.headers);
        ur.pipe(res);
      });
      up.on('error', (err) => { res.writeHead(502); res.end(String(err)); });
      if (body) up.end(body);
      else req.pipe(up);
    };
    const sha = String(req.headers['x-amz-content-sha256'] ?? '');
    if (sha.startsWith('STREAMING-')) {
      const parts: Buffer[] = [];
      req.on('data', (d: Buffer) => parts.push(d));
      req.on('end', () => {
        try {
          const body = deframeAwsChunked(Buffer.concat(parts));
          const decoded = req.headers['x-amz-decoded-content-length'];
          if (decoded !== undefined && Number(decoded) !== body.length) throw new Error(`decoded ${body.length} bytes, header says ${decoded}`);
          forward(body);
        } catch (err) {
          res.writeHead(400);
          res.end(String(err));
        }
      });
    } else forward();
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    directUrl: `http://127.0.0.1:${s3port}`,
    requests,
    close: async () => {
      const closed = new Promise<void>((ok) => server.close(() => ok()));
      server.closeAllConnections();
      await closed;
      agent.destroy();
      await s3rver.close();
    },
  };
}
