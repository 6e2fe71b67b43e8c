/**
 * Enforces Step Functions' hard quotas (local/quotas.ts) on one execution run by
 * aws-local-stepfunctions, where AWS enforces them: a state's input and output, a task's
 * input and result, and the number of events in the execution's history.
 *
 * The runner has no hook for this, and its event logs are read asynchronously (too late to
 * stop the next state). So the guard rides in the run options (which the runner hands on
 * to every Map iteration and Parallel branch) and `StateMachine.prototype.execute` is
 * wrapped once, for runs that carry a guard only: each run's event logger is watched as it
 * dispatches, in the same tick, so an oversized output fails before the next state starts.
 * Tasks are guarded where the embedded stack calls them (`guardTask`).
 *
 * History events are counted as AWS writes them (GetExecutionHistory), from the runner's:
 * - ExecutionStarted, and ExecutionSucceeded/Failed: 1 each (the last may be event N);
 * - every state entered and exited: 1 each (XStateEntered, XStateExited); a Map or Parallel
 *   state 2 more (MapStateStarted, MapStateSucceeded) and 1 when it fails (MapStateFailed);
 * - every Map iteration: MapIterationStarted and MapIterationSucceeded/Failed;
 * - every task attempt: 3 (Lambda/Activity/Task Scheduled, Started, and Succeeded, Failed or
 *   TimedOut), so a retry costs 3 and a caught failure none more (the state exits once).
 * Not modelled: an activity that times out before any worker takes it writes 2, not 3, and
 * Parallel branches write no events of their own (as in AWS). A Task is then 5 events, a
 * Pass or Choice 2, as TOOLCHAIN.md states; the count is within a few events of AWS's.
 */
import { StateMachine } from 'aws-local-stepfunctions';
import { readPath } from './distributed-map.ts';
import { DataLimitExceeded, HistoryLimitExceeded, inputTooLarge, payloadSize, resultTooLarge, type StepFunctionsQuotas } from './quotas.ts';

type StateDef = Record<string, unknown> & { Type: string; Retry?: { ErrorEquals: string[] }[]; Catch?: { ErrorEquals: string[] }[] };
type Definition = { States: Record<string, StateDef> };
type Logger = Record<string, (...args: never[]) => unknown>;

/** The run option under which a guard travels to every nested run. */
const GUARD = Symbol('lifeboat.quotaGuard');

/** What one execution used of its quotas, as recorded beside it. */
export interface QuotaUsage {
  /** Events in its history as AWS counts them (see above). */
  historyEvents: number;
  /** Its largest input, output or result, and where (`<state> input|output|result`). */
  largestPayload: { bytes: number; where: string };
}

/** One execution's quota accounting. */
export class QuotaGuard {
  readonly quotas: StepFunctionsQuotas;
  /** The quota failure that ended the execution, once one did. */
  failure: Error | undefined;
  private events = 0;
  private largest = { bytes: 0, where: '' };
  /** Map states by their iterator definition: a nested run over one of these is an iteration. */
  private readonly iterators = new Map<object, { name: string; state: StateDef }>();
  /** Item counts of Map states entered whose iterations have not started yet, by iterator definition (first entered first). */
  private readonly entered = new Map<object, { items: number; rawInput: unknown }[]>();
  /** The collected result of each running Map state so far, by its iterator machine (one per Map state run). */
  private readonly collected = new WeakMap<object, { name: string; state: StateDef; items: number; rawInput: unknown; done: number; bytes: number }>();
  private readonly onFatal: (err: Error) => void;
  private root: unknown;

  /** `onFatal` must stop the whole execution (the history quota is never caught). */
  constructor(quotas: StepFunctionsQuotas, definition: Definition, onFatal: (err: Error) => void) {
    this.quotas = quotas;
    this.onFatal = onFatal;
    const walk = (def: Definition) => {
      for (const [name, s] of Object.entries(def.States)) {
        const inner = (s.ItemProcessor ?? s.Iterator) as Definition | undefined;
        if (s.Type === 'Map' && inner) {
          this.iterators.set(inner, { name, state: s });
          walk(inner);
        }
        for (const b of (s.Branches as Definition[] | undefined) ?? []) walk(b);
      }
    };
    walk(definition);
  }

  /** Run options carrying this guard into `machine.run` (and every Map iteration and Parallel branch). */
  runOptions<T extends object>(machine: StateMachine, options: T): T {
    installHook();
    this.root = machine;
    return { ...options, [GUARD]: this };
  }

  usage(): QuotaUsage {
    return { historyEvents: this.events, largestPayload: { ...this.largest } };
  }

  /**
   * Wraps a task's local handler: counts the attempt's events, and fails the attempt with
   * States.DataLimitExceeded when its input (after Parameters) or its result is too large.
   */
  guardTask<I, O>(stateName: string, state: StateDef, handler: (input: I) => Promise<O>): (input: I) => Promise<O> {
    return async (input: I) => {
      this.count(3);
      const inBytes = this.measure(input, `${stateName} input`);
      if (inBytes > this.quotas.payloadBytes) throw inputTooLarge(stateName, inBytes, this.quotas).handledBy(state);
      const result = await handler(input);
      this.failIfFailed();
      const bytes = this.measure(result, `${stateName} result`);
      if (bytes > this.quotas.payloadBytes) throw resultTooLarge(stateName, bytes, this.quotas).handledBy(state);
      return result;
    };
  }

  /** Watches one run's event logger (the root's, an iteration's or a branch's). */
  private watch(logger: Logger, machine: { definition: object }): void {
    const kind = machine === this.root ? 'execution' : this.iterators.has(machine.definition) ? 'iteration' : 'branch';
    const wrap = (method: string, before: (...args: never[]) => void) => {
      const original = logger[method]!.bind(logger);
      logger[method] = (...args: never[]) => {
        before(...args);
        return original(...args);
      };
    };
    const nested = (s: string) => s === 'Map' || s === 'Parallel';
    wrap('dispatchExecutionStartedEvent', () => {
      if (kind !== 'branch') this.count(1);
    });
    wrap('dispatchExecutionSucceededEvent', () => {
      if (kind === 'execution')
        this.events++; // ExecutionSucceeded may be event N itself
      else if (kind === 'iteration') this.count(1);
    });
    wrap('dispatchExecutionFailedEvent', () => {
      if (kind === 'execution') {
        if (!this.failure) this.events++;
      } // the history quota's ExecutionFailed is already counted
      else if (kind === 'iteration') this.count(1);
    });
    wrap('dispatchStateEnteredEvent', ((name: string, type: string, input: unknown) => {
      this.count(nested(type) ? 2 : 1);
      if (type === 'Map') this.mapEntered((machine.definition as Definition).States[name], input);
      const bytes = this.measure(input, `${name} input`);
      if (bytes > this.quotas.payloadBytes) throw inputTooLarge(name, bytes, this.quotas);
    }) as never);
    wrap('dispatchStateExitedEvent', ((name: string, type: string, _input: unknown, output: unknown) => {
      this.count(nested(type) ? 2 : 1);
      const bytes = this.measure(output, `${name} output`);
      if (bytes > this.quotas.payloadBytes) throw resultTooLarge(name, bytes, this.quotas);
    }) as never);
    wrap('dispatchStateFailedEvent', ((_name: string, type: string) => {
      if (nested(type)) this.count(1);
    }) as never);
  }

  /** The iteration of `machine` failed with `err`: a DataLimitExceeded now meets its Map state's Retry and Catch. */
  private iterationFailed(machine: { definition: object }, err: unknown): void {
    const map = this.iterators.get(machine.definition);
    const cause = (err as { cause?: unknown }).cause ?? err;
    if (map && cause instanceof DataLimitExceeded) cause.handledBy(map.state);
  }

  /** A Map state starts: how many iterations it will run (its items, through InputPath and ItemsPath), for {@link iterationDone}. */
  private mapEntered(state: StateDef | undefined, input: unknown): void {
    const inner = (state?.ItemProcessor ?? state?.Iterator) as object | undefined;
    if (!inner) return;
    let items: unknown;
    try {
      items = readPath((state!.ItemsPath as string | undefined) ?? '$', readPath((state!.InputPath as string | undefined) ?? '$', input, {}), {});
    } catch {
      return; // a path the simple reader does not follow: the Map's result is still checked as it exits (uncaught there)
    }
    if (!Array.isArray(items) || !items.length) return;
    this.entered.set(inner, [...(this.entered.get(inner) ?? []), { items: items.length, rawInput: input }]);
  }

  /**
   * One iteration of a Map state ended with `result`. When the last one has, and the Map's
   * result (the array of its iterations' results) is over the quota, the Map state fails with
   * States.DataLimitExceeded inside the state, as AWS fails it: a Catch naming the error takes
   * it (a VM's failure path then releases what it took). Checked only at the state's exit, the
   * error would escape every Catch.
   */
  private iterationDone(machine: object & { definition: object }, result: unknown): void {
    let run = this.collected.get(machine);
    if (!run) {
      const map = this.iterators.get(machine.definition);
      const entered = this.entered.get(machine.definition)?.shift();
      if (!map || !entered) return;
      run = { ...map, ...entered, done: 0, bytes: 1 }; // `[`, then each result and its `,` or `]`
      this.collected.set(machine, run);
    }
    run.done++;
    run.bytes += payloadSize(result) + 1;
    if (run.done !== run.items) return;
    // The state's output: its input with the result at ResultPath (the array's size added to that of an empty one).
    const output = mapOutputSize(run.state, run.rawInput, run.bytes);
    const bytes = Math.max(run.bytes, output ?? 0);
    if (bytes > this.quotas.payloadBytes) {
      if (bytes > this.largest.bytes) this.largest = { bytes, where: `${run.name} ${bytes === run.bytes ? 'result' : 'output'}` };
      throw resultTooLarge(run.name, bytes, this.quotas).handledBy(run.state);
    }
  }

  private measure(value: unknown, where: string): number {
    const bytes = payloadSize(value);
    if (bytes > this.largest.bytes) this.largest = { bytes, where };
    return bytes;
  }

  private failIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  /**
   * Adds `n` events that are not the execution's last. Event N (the quota) can only be
   * ExecutionSucceeded; anything else there is the ExecutionFailed of the history quota.
   */
  private count(n: number): void {
    this.failIfFailed();
    if (this.events + n <= this.quotas.historyEvents - 1) {
      this.events += n;
      return;
    }
    const err = new HistoryLimitExceeded(this.quotas);
    this.failure = err;
    this.events = this.quotas.historyEvents;
    this.onFatal(err);
    throw err;
  }

  /** Called by the hook for every run (root or nested) that carries a guard. */
  static hooked(
    machine: { definition: object },
    options: { runOptions?: Record<symbol, unknown>; eventLogger: Logger },
    run: () => Promise<unknown>,
  ): Promise<unknown> {
    const guard = options.runOptions?.[GUARD] as QuotaGuard | undefined;
    if (!guard) return run();
    guard.watch(options.eventLogger, machine);
    const iteration = guard.iterators.has(machine.definition);
    return run()
      .then((result) => {
        if (iteration) guard.iterationDone(machine, result);
        return result;
      })
      .catch((err: unknown) => {
        guard.iterationFailed(machine, err);
        throw err;
      });
  }
}

/**
 * The size of a Map state's output whose result (the array) is `resultBytes` long, for a
 * ResultPath of plain fields (`$`, `$.a.b`, null) and no ResultSelector or OutputPath;
 * undefined otherwise (its exit still checks it).
 */
function mapOutputSize(state: StateDef, rawInput: unknown, resultBytes: number): number | undefined {
  if (state.ResultSelector !== undefined || (state.OutputPath !== undefined && state.OutputPath !== '$')) return undefined;
  const path = state.ResultPath as string | null | undefined;
  if (path === null) return payloadSize(rawInput);
  if (path === undefined || path === '$') return resultBytes;
  const keys = /^\$(\.[A-Za-z0-9_-]+)+$/.test(path) ? path.slice(2).split('.') : undefined;
  if (!keys || rawInput === null || typeof rawInput !== 'object' || Array.isArray(rawInput)) return undefined;
  const out = structuredClone(rawInput) as Record<string, unknown>;
  let at = out;
  for (const k of keys.slice(0, -1)) {
    const next = at[k];
    at[k] = next !== null && typeof next === 'object' && !Array.isArray(next) ? next : {};
    at = at[k] as Record<string, unknown>;
  }
  at[keys.at(-1)!] = [];
  return payloadSize(out) - 2 + resultBytes;
}

let installed = false;

/** Wraps `StateMachine.prototype.execute` once; runs without a guard go through unchanged. */
function installHook(): void {
  if (installed) return;
  installed = true;
  const proto = StateMachine.prototype as unknown as {
    execute: (this: { definition: object }, input: unknown, options: never, cleanup: () => void) => Promise<unknown>;
  };
  const original = proto.execute;
  if (typeof original !== 'function')
    throw new Error('aws-local-stepfunctions changed: StateMachine.prototype.execute is gone, so the embedded stack cannot enforce Step Functions quotas');
  proto.execute = function (input, options, cleanup) {
    return QuotaGuard.hooked(this, options, () => original.call(this, input, options, cleanup));
  };
}
