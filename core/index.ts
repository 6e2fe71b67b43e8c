export * from './errors.ts';
export * from './format.ts';
export * from './jobs.ts';
export * from './keyring.ts';
export type * from './object-store.ts';
export * from './s3-store.ts';
export * from './memory-store.ts';
export * from './store-wrappers.ts';
export * from './concurrency.ts';
