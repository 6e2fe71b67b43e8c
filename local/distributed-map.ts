/**
 * Step Functions' Distributed Map, which aws-local-stepfunctions does not run, for the
 * embedded stack. Before a definition runs, each Distributed Map state is lowered to a Task
 * state (same InputPath, ResultSelector, ResultPath, OutputPath, Retry, Catch, Next/End)
 * whose resource is {@link DISTRIBUTED_MAP_RESOURCE}; the runner calls {@link runMapRun} for
 * it, which does what AWS's Map Run does
 * (https://docs.aws.amazon.com/step-functions/latest/dg/state-map-distributed.html):
 * - reads the items with the ItemReader (`s3:getObject`, InputType JSON or JSONL) or from
 *   ItemsPath, applies ItemSelector (`$$.Map.Item.Index` / `.Value`, `$`, `$$.Execution`);
 * - runs one child execution per item (the ItemProcessor as its own state machine,
 *   `<parent state machine>/<Label>`), at most MaxConcurrency (or the whole number at
 *   MaxConcurrencyPath in the state's input) at once (0: AWS's 10,000),
 *   each with its own history, its own quotas and the 256 KiB limit on its input and output;
 * - fails with `States.ExceedToleratedFailureThreshold` when more children failed than
 *   ToleratedFailurePercentage / ToleratedFailureCount allow (default: none);
 * - with a ResultWriter, writes `<Prefix>/<map run id>/manifest.json` and
 *   `SUCCEEDED_0.json` / `FAILED_0.json` (AWS's layout) and answers
 *   `{ MapRunArn, ResultWriterDetails: { Bucket, Key } }`; without one, the children's
 *   outputs as one array (which the payload quota then limits, as in AWS).
 * In the parent's history the state is a few events, whatever the number of items; the
 * parent's record lists its Map Runs, and each child's record names its Map Run and parent.
 * Not modelled: ItemBatcher, CSV and manifest readers, S3 listing readers, EXPRESS children.
 */
import { randomUUID } from 'node:crypto';
import { StateMachine } from 'aws-local-stepfunctions';
import type { ObjectStore } from '../core/object-store.ts';

/** The resource of the Task a Distributed Map is lowered to. */
export const DISTRIBUTED_MAP_RESOURCE = 'arn:aws:states:::lifeboat-local:distributedMap';

type State = Record<string, unknown> & { Type: string };
type Definition = Record<string, unknown> & { States: Record<string, State> };

/** The parts of a Distributed Map state the Map Run reads. */
export interface DistributedMapState extends State {
  ItemProcessor: Definition & { ProcessorConfig?: { Mode?: string; ExecutionType?: string } };
  ItemReader?: { Resource: string; ReaderConfig?: { InputType?: string; MaxItems?: number }; Parameters?: Record<string, unknown> };
  ItemsPath?: string;
  ItemSelector?: Record<string, unknown>;
  ItemBatcher?: unknown;
  MaxConcurrency?: number;
  MaxConcurrencyPath?: string;
  ToleratedFailurePercentage?: number;
  ToleratedFailureCount?: number;
  ResultWriter?: { Resource: string; Parameters?: { Bucket?: string; Prefix?: string } };
  Label?: string;
}

const isDistributed = (s: State): s is DistributedMapState =>
  s.Type === 'Map' && (s.ItemProcessor as DistributedMapState['ItemProcessor'] | undefined)?.ProcessorConfig?.Mode === 'DISTRIBUTED';

/** The longest a lowered Task may run: the runner times Tasks out (60 s unless told), a Map Run has no timeout of its own. */
const MAP_RUN_TIMEOUT_SECONDS = 20 * 24 * 3600;

const KEPT = ['Comment', 'InputPath', 'ResultSelector', 'ResultPath', 'OutputPath', 'Retry', 'Catch', 'Next', 'End'];

/**
 * The definition with each top-level Distributed Map state lowered to a Task (see above),
 * and those Map states by name. Distributed Maps inside its children are lowered when the
 * children run. Inline Maps and Parallel states are left as they are.
 */
export function lowerDistributedMaps(definition: Definition): { definition: Definition; maps: Record<string, DistributedMapState> } {
  const maps: Record<string, DistributedMapState> = {};
  const states: Record<string, State> = {};
  for (const [name, s] of Object.entries(definition.States)) {
    if (!isDistributed(s)) {
      states[name] = s;
      continue;
    }
    if (s.ItemBatcher) throw new Error(`Distributed Map '${name}' uses ItemBatcher, which the embedded stack does not run`);
    maps[name] = s;
    states[name] = {
      Type: 'Task',
      Resource: DISTRIBUTED_MAP_RESOURCE,
      TimeoutSeconds: MAP_RUN_TIMEOUT_SECONDS,
      ...Object.fromEntries(KEPT.filter((k) => k in s).map((k) => [k, s[k]])),
    };
  }
  return { definition: { ...definition, States: states }, maps };
}

/** A child execution's end, as the Map Run sees it. */
export interface ChildOutcome {
  executionArn: string;
  status: string;
  input: string;
  output?: string;
  error?: string;
  cause?: string;
  startDate: Date;
  stopDate?: Date;
}

/** What a Map Run needs from the embedded stack. */
export interface MapRunContext {
  /** The parent execution (its ARN, and its context object for `$$.Execution` in ItemSelector). */
  executionArn: string;
  execution: Record<string, unknown>;
  /** The parent's state machine ARN: the children run as `<it>/<Label>`. */
  stateMachineArn: string;
  /** A bucket of the definition (a logical id or a name) as an object store. */
  objects: (bucket: string) => ObjectStore;
  /** Starts one child execution and resolves when it has stopped (a refused start is a failed child). */
  runChild: (child: { stateMachineArn: string; definition: Definition; input: string; name: string; mapRunArn: string }) => Promise<ChildOutcome>;
  /** Told of the Map Run once it starts, so the parent's record links to it. */
  onMapRun: (run: { mapRunArn: string; stateName: string; items: number }) => void;
  signal: AbortSignal;
}

function named(name: string, message: string): Error {
  const e = new Error(message);
  e.name = name;
  return e;
}

/** A reference path (`$`, `$.a.b`, `$.a[0]`, `$$.Map.Item.Value.x`) against `input` and `context`. */
export function readPath(path: string, input: unknown, context: Record<string, unknown>): unknown {
  const root = path.startsWith('$$') ? context : input;
  const rest = path.slice(path.startsWith('$$') ? 2 : 1);
  if (rest && !/^(\.[A-Za-z0-9_-]+|\[\d+\])+$/.test(rest))
    throw named('States.Runtime', `the embedded stack's Distributed Map reads plain paths only; '${path}' is not one`);
  let v: unknown = root;
  for (const [, key, index] of rest.matchAll(/\.([A-Za-z0-9_-]+)|\[(\d+)\]/g)) {
    if (v === null || typeof v !== 'object') throw named('States.Runtime', `the JSONPath '${path}' could not be found in the input`);
    v = (v as Record<string, unknown>)[key ?? Number(index)];
    if (v === undefined) throw named('States.Runtime', `the JSONPath '${path}' could not be found in the input`);
  }
  return v;
}

/** A Parameters-style template: keys ending in `.$` take the value at their path. */
export function applyTemplate(template: unknown, input: unknown, context: Record<string, unknown>): unknown {
  if (Array.isArray(template)) return template.map((t) => applyTemplate(t, input, context));
  if (template === null || typeof template !== 'object') return template;
  return Object.fromEntries(
    Object.entries(template as Record<string, unknown>).map(([k, v]) =>
      k.endsWith('.$') ? [k.slice(0, -2), readPath(v as string, input, context)] : [k, applyTemplate(v, input, context)],
    ),
  );
}

async function readItems(map: DistributedMapState, input: unknown, ctx: MapRunContext): Promise<unknown[]> {
  const reader = map.ItemReader;
  if (!reader) {
    const items = readPath(map.ItemsPath ?? '$', input, { Execution: ctx.execution });
    if (!Array.isArray(items)) throw named('States.Runtime', 'Input of Map state must be an array or ItemsPath property must point to an array');
    return items;
  }
  if (!reader.Resource.endsWith(':states:::s3:getObject'))
    throw named('States.Runtime', `the embedded stack's Distributed Map reads items with s3:getObject only, not ${reader.Resource}`);
  const p = applyTemplate(reader.Parameters ?? {}, input, { Execution: ctx.execution }) as { Bucket?: string; Key?: string };
  if (!p.Bucket || !p.Key) throw named('States.Runtime', 'the ItemReader names no Bucket or Key');
  let body: Buffer | undefined;
  try {
    body = await ctx.objects(p.Bucket).get(p.Key);
  } catch (err) {
    throw named('States.ItemReaderFailed', `the ItemReader could not read s3://${p.Bucket}/${p.Key}: ${(err as Error).message}`);
  }
  if (!body) throw named('States.ItemReaderFailed', `the ItemReader could not read s3://${p.Bucket}/${p.Key}: no such object`);
  const text = body.toString('utf8');
  const type = reader.ReaderConfig?.InputType ?? 'JSON';
  let items: unknown;
  try {
    items =
      type === 'JSONL'
        ? text
            .split('\n')
            .filter((l) => l.trim())
            .map((l) => JSON.parse(l) as unknown)
        : JSON.parse(text);
  } catch (err) {
    throw named('States.ItemReaderFailed', `s3://${p.Bucket}/${p.Key} is not ${type}: ${(err as Error).message}`);
  }
  if (!Array.isArray(items)) throw named('States.ItemReaderFailed', `s3://${p.Bucket}/${p.Key} holds no JSON array`);
  return reader.ReaderConfig?.MaxItems ? items.slice(0, reader.ReaderConfig.MaxItems) : items;
}

/** Runs `fn` over `items`, at most `limit` at once, stopping to start new ones once `signal` aborts. */
async function pool<T, R>(items: readonly T[], limit: number, signal: AbortSignal, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length && !signal.aborted) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (signal.aborted) throw named('States.Runtime', 'the execution was stopped while its Map Run ran');
  return out;
}

/** MaxConcurrency, or the value at MaxConcurrencyPath, which must be a whole number from 0 (AWS: States.Runtime otherwise). */
function maxConcurrency(map: DistributedMapState, input: unknown, ctx: MapRunContext): number {
  if (map.MaxConcurrencyPath === undefined) return map.MaxConcurrency ?? 0;
  const v = readPath(map.MaxConcurrencyPath, input, { Execution: ctx.execution });
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0)
    throw named('States.Runtime', `MaxConcurrencyPath '${map.MaxConcurrencyPath}' must point to a whole number of 0 or more, got ${JSON.stringify(v)}`);
  return v;
}

const childDefinitions = new WeakMap<object, Definition>();

/** The ItemProcessor as its children's state machine: one object per Map state, so the runner prepares it once (local/executions.ts). */
function childDefinition(map: DistributedMapState): Definition {
  let d = childDefinitions.get(map.ItemProcessor);
  if (!d) {
    const { ProcessorConfig: _config, ...definition } = map.ItemProcessor;
    d = definition as Definition;
    childDefinitions.set(map.ItemProcessor, d);
  }
  return d;
}

/** Runs the Map Run of Distributed Map `stateName` over the lowered Task's `input`; its result is the state's. */
export async function runMapRun(stateName: string, map: DistributedMapState, input: unknown, ctx: MapRunContext): Promise<unknown> {
  const label = map.Label ?? stateName;
  const smName = ctx.stateMachineArn.split(':').pop()!;
  const mapRunId = randomUUID();
  const mapRunArn = ctx.stateMachineArn.replace(/:stateMachine:.*$/, `:mapRun:${smName}/${label}:${mapRunId}`);
  const items = await readItems(map, input, ctx);
  ctx.onMapRun({ mapRunArn, stateName, items: items.length });
  const definition = childDefinition(map);
  const childMachine = `${ctx.stateMachineArn}/${label}`;
  const outcomes = await pool(items, maxConcurrency(map, input, ctx) || 10_000, ctx.signal, (item, index) => {
    const context = { Execution: ctx.execution, Map: { Item: { Index: index, Value: item } } };
    const childInput = map.ItemSelector ? applyTemplate(map.ItemSelector, input, context) : item;
    return ctx.runChild({
      stateMachineArn: childMachine,
      definition,
      input: JSON.stringify(childInput),
      name: randomUUID(),
      mapRunArn,
    });
  });
  const failed = outcomes.filter((o) => o.status !== 'SUCCEEDED');
  // Either threshold, where set, fails the run when passed; with neither, no failure is tolerated.
  const passed = [
    ...(map.ToleratedFailurePercentage !== undefined ? [failed.length * 100 > map.ToleratedFailurePercentage * items.length] : []),
    ...(map.ToleratedFailureCount !== undefined ? [failed.length > map.ToleratedFailureCount] : []),
  ];
  const tooMany = failed.length > 0 && (passed.length === 0 || passed.some(Boolean));
  const result = map.ResultWriter
    ? await writeResults(map.ResultWriter, mapRunArn, mapRunId, outcomes, ctx)
    : outcomes.map((o) => (o.output === undefined ? null : (JSON.parse(o.output) as unknown)));
  if (tooMany) {
    const first = failed[0]!;
    throw named(
      'States.ExceedToleratedFailureThreshold',
      `The specified tolerated failure threshold was exceeded: ${failed.length} of ${items.length} child executions failed (map run ${mapRunArn}; the first, ${first.executionArn}: ${first.error ?? first.status} ${first.cause ?? ''})`,
    );
  }
  return result;
}

/** AWS's result files of a Map Run: the manifest, and one file per status (here never split: one of each). */
async function writeResults(
  writer: NonNullable<DistributedMapState['ResultWriter']>,
  mapRunArn: string,
  mapRunId: string,
  outcomes: ChildOutcome[],
  ctx: MapRunContext,
): Promise<unknown> {
  const bucket = writer.Parameters?.Bucket;
  if (!bucket) throw named('States.ResultWriterFailed', 'the ResultWriter names no Bucket');
  const prefix = `${writer.Parameters?.Prefix ? `${writer.Parameters.Prefix.replace(/\/$/, '')}/` : ''}${mapRunId}/`;
  const store = ctx.objects(bucket);
  const entry = (o: ChildOutcome) => ({
    ExecutionArn: o.executionArn,
    Input: o.input,
    InputDetails: { Included: true },
    Name: o.executionArn.split(':').pop(),
    StartDate: o.startDate.toISOString(),
    StateMachineArn: o.executionArn.replace(':execution:', ':stateMachine:').replace(/:[^:]+$/, ''),
    Status: o.status,
    StopDate: (o.stopDate ?? new Date()).toISOString(),
    ...(o.output !== undefined ? { Output: o.output, OutputDetails: { Included: true } } : {}),
    ...(o.error ? { Error: o.error, Cause: o.cause ?? '' } : {}),
  });
  const files: { key: string; status: string; count: number }[] = [];
  for (const status of ['SUCCEEDED', 'FAILED']) {
    const of = outcomes.filter((o) => (status === 'SUCCEEDED' ? o.status === 'SUCCEEDED' : o.status !== 'SUCCEEDED'));
    if (!of.length) continue;
    const key = `${prefix}${status}_0.json`;
    await store.put(key, Buffer.from(JSON.stringify(of.map(entry))));
    files.push({ key, status, count: of.length });
  }
  const manifestKey = `${prefix}manifest.json`;
  const manifest = {
    DestinationBucket: bucket,
    MapRunArn: mapRunArn,
    ResultFiles: Object.fromEntries(
      ['FAILED', 'PENDING', 'SUCCEEDED'].map((s) => [s, files.filter((f) => f.status === s).map((f) => ({ Key: f.key, Size: f.count }))]),
    ),
  };
  await store.put(manifestKey, Buffer.from(JSON.stringify(manifest)));
  return { MapRunArn: mapRunArn, ResultWriterDetails: { Bucket: bucket, Key: manifestKey } };
}

/** A definition lowered and validated, ready to run any number of executions. */
interface Prepared {
  definition: Record<string, unknown>;
  maps: Record<string, DistributedMapState>;
  machine: StateMachine;
}
const prepared = new WeakMap<object, Prepared>();

/**
 * The definition with its Distributed Maps lowered, as a runner's state machine: once per
 * definition, not per execution. The runner validates a definition by compiling the ASL's JSON
 * schema, which took most of the stack process's CPU when it ran per execution (a Map Run
 * starts one per item); a StateMachine keeps nothing of a run, so one serves them all.
 */
export function prepareDefinition(source: Record<string, unknown>): Prepared {
  let p = prepared.get(source);
  if (!p) {
    const { definition, maps } = lowerDistributedMaps(source as never);
    p = { definition, maps, machine: new StateMachine(definition as never, { validationOptions: { checkArn: false } }) };
    prepared.set(source, p);
  }
  return p;
}
