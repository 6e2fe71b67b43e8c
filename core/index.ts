export * from './errors.ts';
export * from './format.ts';
export * from './jobs.ts';
export * from './keyring.ts';
export type * from './object-store.ts';
export * from './s3-store.ts';
