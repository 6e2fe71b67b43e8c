// Minimal typings for the two local AWS-compatible servers (neither ships its own).
declare module 'dynalite' {
  import type { Server } from 'node:http';
  interface DynaliteOptions {
    path?: string;
    createTableMs?: number;
    deleteTableMs?: number;
    updateTableMs?: number;
  }
  export default function dynalite(options?: DynaliteOptions): Server;
}
declare module 's3rver' {
  interface S3rverOptions {
    port?: number;
    address?: string;
    directory: string;
    silent?: boolean;
    configureBuckets?: { name: string }[];
    resetOnClose?: boolean;
  }
  export default class S3rver {
    constructor(options: S3rverOptions);
    run(): Promise<{ address: string; port: number }>;
    close(): Promise<void>;
    /** Koa's middleware chain (S3rver extends Koa); composed when the server starts. */
    middleware: ((ctx: unknown, next: () => Promise<void>) => Promise<void>)[];
    /** The filesystem store: where an object's files (and the front's own files beside them) live; deleting and finding an object. */
    store: {
      getResourcePath(bucket: string, key: string, resource: string): string;
      deleteObject(bucket: string, key: string): Promise<void>;
      existsObject(bucket: string, key: string): Promise<boolean>;
      /** One page of a bucket's keys (lib/stores/filesystem.js). */
      listObjects(bucket: string, options: Record<string, unknown>): Promise<{ objects: { key: string }[]; isTruncated: boolean }>;
    };
  }
}
