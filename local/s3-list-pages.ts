/**
 * ListObjectsV2 past its first page. s3rver 3.7.1 makes and reads its continuation tokens
 * with DES, which OpenSSL 3 no longer offers (ERR_OSSL_EVP_UNSUPPORTED): every listing of
 * more than 1,000 keys failed with 500 InternalError on its first page, so GC, which lists
 * `packs/` whole, could not run on a repository of over 1,000 packs in the embedded stack
 * (it failed in the 4-million-chunk bench). S3's tokens are opaque; ours name the last key
 * of the page before, and s3rver lists from there with its own `start-after`.
 *
 * Two hooks, because s3rver decides a page is truncated deep inside its controller:
 * `pageTokens` (a middleware placed just before s3rver's routes) turns an incoming token into
 * `start-after` and, on the way out, a truncated page into IsTruncated and a token of ours;
 * `untruncated` (around the store's `listObjects`) hides the truncation from the controller
 * so that it never calls DES, and tells the middleware through the request's async context.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type S3rver from 's3rver';
import { s3Error, type Ctx } from './s3-front-http.ts';

/** The page being answered: the last key it holds when more follow. */
interface Page {
  truncatedAfter?: string;
}
const pages = new AsyncLocalStorage<Page>();

/** Koa's context, with the query it parses. */
type ListCtx = Ctx & { query: Record<string, string | string[] | undefined> };

const TOKEN_PREFIX = 'lb1:';
const tokenOf = (key: string) => Buffer.from(TOKEN_PREFIX + key, 'utf8').toString('base64url');
const keyOf = (token: string): string | undefined => {
  const s = Buffer.from(token, 'base64url').toString('utf8');
  return s.startsWith(TOKEN_PREFIX) ? s.slice(TOKEN_PREFIX.length) : undefined;
};

/** Wraps the store's listObjects: a truncated page is returned as complete, its last key kept for `pageTokens`. */
export function untruncated(store: S3rver['store']): void {
  const list = store.listObjects.bind(store);
  store.listObjects = async (bucket, options) => {
    const result = await list(bucket, options);
    const page = pages.getStore();
    if (page && result.isTruncated) {
      page.truncatedAfter = result.objects.at(-1)?.key;
      return { ...result, isTruncated: false };
    }
    return result;
  };
}

/** The middleware: ListObjectsV2 (GET /bucket?list-type=2) with continuation tokens of ours. */
export async function pageTokens(ctx: ListCtx, next: () => Promise<void>): Promise<void> {
  const [, bucket = '', ...rest] = ctx.path.split('/');
  if (ctx.method !== 'GET' || !bucket || rest.join('/') || ctx.query['list-type'] !== '2') return next();
  const { 'continuation-token': token, ...query } = ctx.query;
  if (typeof token === 'string') {
    const after = keyOf(token);
    if (after === undefined) return s3Error(ctx, 400, 'InvalidArgument', 'The continuation token provided is incorrect', '');
    ctx.query = { ...query, 'start-after': after };
  }
  const page: Page = {};
  await pages.run(page, next);
  const result = (ctx.body as { ListBucketResult?: Record<string, unknown> } | undefined)?.ListBucketResult;
  if (!result) return;
  if (typeof token === 'string') {
    result.ContinuationToken = token;
    result.StartAfter = undefined;
  }
  if (page.truncatedAfter !== undefined) {
    result.IsTruncated = true;
    result.NextContinuationToken = tokenOf(page.truncatedAfter);
  }
}
