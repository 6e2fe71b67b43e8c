/**
 * What the contracts' zod schemas share: the common field schemas, and `Fields<T>`, the
 * type a schema describes without the index signature of a loose object. The workflows'
 * objects are loose (unknown fields pass through untouched, because the state machines
 * carry state along), but code sees only the fields the schema names.
 */
import { z } from 'zod';

export const text = z.string().min(1);
export const count = z.number().int().nonnegative();

type NamedKeys<T> = keyof { [K in keyof T as string extends K ? never : K]: 0 };

/** `z.output<S>` without loose objects' `[key: string]: unknown`, at every depth; a record (no named keys) keeps its index. */
export type Fields<T> = T extends readonly unknown[]
  ? { [K in keyof T]: Fields<T[K]> }
  : T extends object
    ? [NamedKeys<T>] extends [never]
      ? { [K in keyof T]: Fields<T[K]> }
      : { [K in keyof T as string extends K ? never : K]: Fields<T[K]> }
    : T;

/** The type a contract schema describes. */
export type Infer<S extends z.ZodType> = Fields<z.output<S>>;
