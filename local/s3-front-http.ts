/** What the local S3 front's middlewares (s3-server.ts, s3-object-lock.ts) share: the Koa context they use, S3's error document, reading a body. */

/** The subset of Koa's context the middlewares use. */
export interface Ctx {
  method: string;
  path: string;
  querystring: string;
  req: NodeJS.ReadableStream;
  request: { headers: Record<string, string | string[] | undefined> };
  status: number;
  type: string;
  body: unknown;
  get(field: string): string;
  set(field: string, value: string): void;
}

export const xmlEscape = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
export const xmlUnescape = (s: string) =>
  s
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&#(\d+);/g, (_, n: string) => String.fromCodePoint(Number(n)))
    .replace(/&amp;/g, '&');

/** Answers with S3's error document. */
export const s3Error = (ctx: Ctx, status: number, code: string, message: string, key: string) => {
  ctx.status = status;
  ctx.type = 'application/xml';
  ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${xmlEscape(message)}</Message><Key>${xmlEscape(key)}</Key></Error>`;
};

/** Answers 200 with an XML document. */
export const s3Xml = (ctx: Ctx, body: string) => {
  ctx.status = 200;
  ctx.type = 'application/xml';
  ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n${body}`;
};

export async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const d of stream) parts.push(d as Buffer);
  return Buffer.concat(parts);
}
