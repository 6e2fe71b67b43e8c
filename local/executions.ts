/**
 * Executions of the synthesized state machines, run by aws-local-stepfunctions. Lambda
 * tasks call the handlers in process; activity tasks go to the ActivityBroker, where
 * movers pick them up over the Step Functions API. Records persist as JSON files.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, readdir, readFile, writeFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { LambdaFunctionId } from '../contracts/functions.ts';
import type { ObjectStore } from '../core/object-store.ts';
import type { ActivityBroker } from './activities.ts';
import { DISTRIBUTED_MAP_RESOURCE, prepareDefinition, runMapRun, type ChildOutcome, type DistributedMapState } from './distributed-map.ts';
import { LocalEventBus } from './events.ts';
import { taskStates, type AslState, type ResolvedTemplate } from './asl.ts';
import type { LocalFunctions } from './lambdas.ts';
import { QuotaGuard } from './quota-guard.ts';
import { AWS_QUOTAS, fieldTooLong, type StepFunctionsQuotas } from './quotas.ts';
import type { ExecutionRecord, ExecutionService } from './sfn-api.ts';

function named(name: string, message: string): Error {
  const e = new Error(message);
  e.name = name;
  return e;
}

/**
 * What `$$.Task.Token` reads while a state's Parameters are applied: the runner has one
 * context per execution, so a `.waitForTaskToken` task puts its own token in place of this.
 */
export const TASK_TOKEN_PLACEHOLDER = 'lifeboat-local:$$.Task.Token';

export interface StateCounts {
  transitions: number;
}

export class LocalExecutions implements ExecutionService {
  private readonly dir: string;
  private readonly template: ResolvedTemplate;
  private readonly broker: ActivityBroker;
  /** Where `events:putEvents` tasks land (local/events.ts). */
  private readonly events: LocalEventBus;
  private readonly records = new Map<string, ExecutionRecord>();
  private readonly running = new Map<string, { abort: AbortController; done: Promise<void> }>();

  /** Told of every execution stopped without its own failure path (StopExecution; aborted at a restart: see load). */
  private readonly onStopped: (r: ExecutionRecord) => void;
  /** Step Functions' hard quotas, enforced on every execution (local/quotas.ts). */
  private readonly quotas: StepFunctionsQuotas;
  /** The buckets a Distributed Map reads its items from and writes its results to (by the name or logical id in the definition). */
  private readonly objects: (bucket: string) => ObjectStore;
  /** The control plane's functions that the workflows' Lambda tasks invoke. */
  private readonly functions: LocalFunctions | undefined;

  constructor(opts: {
    dataDir: string;
    template: ResolvedTemplate;
    broker: ActivityBroker;
    onStopped?: (r: ExecutionRecord) => void;
    quotas?: StepFunctionsQuotas;
    objects?: (bucket: string) => ObjectStore;
    functions?: LocalFunctions;
  }) {
    this.functions = opts.functions;
    this.dir = join(opts.dataDir, 'executions');
    this.objects =
      opts.objects ??
      ((bucket) => {
        throw new Error(`the embedded stack was started without object storage, so a Distributed Map cannot reach bucket ${bucket}`);
      });
    this.quotas = opts.quotas ?? AWS_QUOTAS;
    this.onStopped = opts.onStopped ?? (() => {});
    this.events = new LocalEventBus(opts.dataDir);
    this.template = opts.template;
    this.broker = opts.broker;
  }

  private async invoke(id: LambdaFunctionId, input: unknown): Promise<unknown> {
    if (!this.functions) throw new Error(`these executions were started without the control plane's functions, so the Lambda task of ${id} cannot run`);
    return this.functions.invoke(id, input);
  }

  /** Loads saved records; executions that were running when the stack stopped are ABORTED. */
  async load(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    for (const f of await readdir(this.dir)) {
      if (!f.endsWith('.json') || f.endsWith('.tmp')) continue;
      const r = JSON.parse(await readFile(join(this.dir, f), 'utf8'), (k, v) => (k.endsWith('Date') ? new Date(v as string) : v)) as ExecutionRecord;
      if (r.status === 'RUNNING') {
        const at = new Date();
        Object.assign(r, {
          status: 'ABORTED',
          stopDate: at,
          error: 'Lifeboat.StackRestarted',
          cause: `the embedded stack stopped while execution ${r.name} ran and was restarted at ${at.toISOString()}; nothing it left running was committed`,
        });
        await this.save(r);
      }
      this.records.set(r.executionArn, r);
    }
  }

  /** The file name of an execution's record and history, without extension (a Map Run's child: `<parent>--<label>--<name>`, a nested one's `<parent>--<label>--<label>--<name>`). */
  static fileBase(r: Pick<ExecutionRecord, 'stateMachineArn' | 'name'>): string {
    return `${r.stateMachineArn.split(':').pop()!.replaceAll('/', '--')}--${r.name}`;
  }

  private async save(r: ExecutionRecord): Promise<void> {
    const file = join(this.dir, `${LocalExecutions.fileBase(r)}.json`);
    await writeFile(`${file}.tmp`, JSON.stringify(r));
    await rename(`${file}.tmp`, file);
  }

  private machine(arn: string) {
    const sm = Object.values(this.template.stateMachines).find((m) => m.arn === arn);
    if (!sm)
      throw named(
        'StateMachineDoesNotExist',
        `state machine ${arn} does not exist; known: ${Object.values(this.template.stateMachines)
          .map((m) => m.arn)
          .join(', ')}`,
      );
    return sm;
  }

  private overrides(
    definition: Record<string, unknown>,
    signal: AbortSignal,
    guard: QuotaGuard,
    maps: Record<string, DistributedMapState>,
    record: ExecutionRecord,
    context: Record<string, unknown>,
  ) {
    const handlers: Record<string, (input: never) => Promise<unknown>> = {};
    for (const [name, state] of taskStates(definition)) {
      const resource = state.Resource ?? '';
      const fid = this.template.functions[resource] as LambdaFunctionId | undefined;
      if (resource === DISTRIBUTED_MAP_RESOURCE) {
        handlers[name] = (input) =>
          runMapRun(name, maps[name]!, input, {
            executionArn: record.executionArn,
            execution: context,
            stateMachineArn: record.stateMachineArn,
            objects: this.objects,
            signal,
            runChild: (child) => this.runChild(child, record.executionArn),
            onMapRun: (run) => {
              record.mapRuns = [...(record.mapRuns ?? []), run];
              void this.save(record);
            },
          });
      } else if (fid) {
        handlers[name] = (input) => this.invoke(fid, input);
      } else if (resource.endsWith(':states:::lambda:invoke.waitForTaskToken')) {
        handlers[name] = (input) => this.invokeWithToken(`${record.executionArn}#${name}`, state, input, signal);
      } else if (resource.includes(':activity:')) {
        handlers[name] = (input) =>
          this.broker.schedule(resource, input, {
            timeoutSeconds: state.TimeoutSeconds as number | undefined,
            heartbeatSeconds: state.HeartbeatSeconds as number | undefined,
            signal,
          });
      } else if (resource.endsWith(':states:::events:putEvents')) {
        handlers[name] = (input) => this.events.putEvents(input);
      } else if (resource.endsWith(':states:::states:startExecution')) {
        handlers[name] = (input) => this.startFromTask(input);
      } else {
        throw new Error(`task state '${name}' uses resource ${resource}, which the embedded stack does not run`);
      }
      handlers[name] = guard.guardTask(name, state, handlers[name]!);
    }
    return handlers;
  }

  /**
   * `lambda:invoke.waitForTaskToken`: the function is invoked with `$$.Task.Token` in its
   * payload (a new token per attempt, replacing {@link TASK_TOKEN_PLACEHOLDER}), and the task's
   * result is what SendTaskSuccess sends with it, through the local Step Functions API (the
   * ActivityBroker holds it), whoever sends it and whenever: before the invocation returns or
   * long after. A failed invocation fails the task with the function's error, as in AWS.
   * TimeoutSeconds and HeartbeatSeconds count from the start; once the execution stops the
   * token answers TaskDoesNotExist.
   */
  private async invokeWithToken(label: string, state: AslState, input: { FunctionName?: string; Payload?: unknown }, signal: AbortSignal): Promise<unknown> {
    const fid = this.template.functions[input.FunctionName ?? ''] as LambdaFunctionId | undefined;
    if (!fid) throw named('Lambda.ResourceNotFoundException', `Function not found: ${input.FunctionName ?? '(no FunctionName)'}`);
    const { token, result } = this.broker.awaitCallback(label, {
      timeoutSeconds: state.TimeoutSeconds as number | undefined,
      heartbeatSeconds: state.HeartbeatSeconds as number | undefined,
      signal,
    });
    result.catch(() => {}); // settled below or by the runner's own timeout
    const payload = JSON.parse(JSON.stringify(input.Payload ?? {}).replaceAll(JSON.stringify(TASK_TOKEN_PLACEHOLDER), JSON.stringify(token))) as unknown;
    try {
      await this.invoke(fid, payload);
    } catch (err) {
      this.broker.cancel(token, err as Error);
    }
    return result;
  }

  /**
   * The `states:startExecution` service integration (request-response): starts a local
   * execution and answers as Step Functions does. A name already taken by a running
   * execution with the same input returns that execution (StartExecution is idempotent
   * then); otherwise it fails with the integration's error name.
   */
  private async startFromTask(params: { StateMachineArn: string; Input?: unknown; Name?: string }): Promise<{ ExecutionArn: string; StartDate: string }> {
    const input = typeof params.Input === 'string' ? params.Input : JSON.stringify(params.Input ?? {});
    const arn = params.Name ? `${params.StateMachineArn.replace(':stateMachine:', ':execution:')}:${params.Name}` : undefined;
    const existing = arn ? this.records.get(arn) : undefined;
    if (existing) {
      if (existing.status === 'RUNNING' && existing.input === input)
        return { ExecutionArn: existing.executionArn, StartDate: existing.startDate.toISOString() };
      throw named('StepFunctions.ExecutionAlreadyExists', `Execution Already Exists: '${existing.executionArn}'`);
    }
    const started = await this.start(params.StateMachineArn, input, params.Name);
    return { ExecutionArn: started.executionArn, StartDate: started.startDate.toISOString() };
  }

  async start(stateMachineArn: string, input: string, name?: string): Promise<{ executionArn: string; startDate: Date }> {
    return this.launch(this.machine(stateMachineArn), input, name);
  }

  /**
   * One child execution of a Map Run: started as any execution (its own record, history and
   * quotas; an input over the quota is refused, which fails the child), resolved once stopped.
   */
  private async runChild(
    child: { stateMachineArn: string; definition: Record<string, unknown>; input: string; name: string; mapRunArn: string },
    parentExecutionArn: string,
  ): Promise<ChildOutcome> {
    const startDate = new Date();
    try {
      const { executionArn } = await this.launch({ arn: child.stateMachineArn, definition: child.definition }, child.input, child.name, {
        mapRunArn: child.mapRunArn,
        parentExecutionArn,
      });
      await this.running.get(executionArn)?.done;
      const r = this.records.get(executionArn)!;
      return {
        executionArn,
        status: r.status,
        input: r.input,
        startDate: r.startDate,
        ...(r.stopDate ? { stopDate: r.stopDate } : {}),
        ...(r.output !== undefined ? { output: r.output } : {}),
        ...(r.error ? { error: r.error } : {}),
        ...(r.cause ? { cause: r.cause } : {}),
      };
    } catch (err) {
      const executionArn = `${child.stateMachineArn.replace(':stateMachine:', ':execution:')}:${child.name}`;
      return {
        executionArn,
        status: 'FAILED',
        input: child.input,
        startDate,
        stopDate: new Date(),
        error: (err as Error).name === 'ValidationException' ? 'States.DataLimitExceeded' : (err as Error).name,
        cause: (err as Error).message,
      };
    }
  }

  private async launch(
    sm: { arn: string; definition: Record<string, unknown> },
    input: string,
    name?: string,
    links: Pick<ExecutionRecord, 'mapRunArn' | 'parentExecutionArn'> = {},
  ): Promise<{ executionArn: string; startDate: Date }> {
    const stateMachineArn = sm.arn;
    const execName = name ?? randomUUID();
    const executionArn = `${stateMachineArn.replace(':stateMachine:', ':execution:')}:${execName}`;
    if (this.records.has(executionArn)) throw named('ExecutionAlreadyExists', `execution ${execName} already exists`);
    const tooLong = fieldTooLong('input', Buffer.byteLength(input || '{}', 'utf8'), this.quotas);
    if (tooLong) throw tooLong;
    let parsed: unknown;
    try {
      parsed = JSON.parse(input || '{}');
    } catch {
      throw named('InvalidExecutionInput', 'execution input is not valid JSON');
    }
    const record: ExecutionRecord = { executionArn, stateMachineArn, name: execName, status: 'RUNNING', startDate: new Date(), input: input || '{}', ...links };
    this.records.set(executionArn, record);
    await this.save(record);
    const abort = new AbortController();
    // Ends the execution's activity tasks still queued or running once it has stopped, however
    // it stopped (in AWS their tokens are then void): no mover takes up a dead execution's work.
    const settled = new AbortController();
    const taskSignal = AbortSignal.any([abort.signal, settled.signal]);
    const { definition, maps, machine } = prepareDefinition(sm.definition);
    // A history quota failure ends the execution at once, wherever in it the quota was reached.
    const guard = new QuotaGuard(this.quotas, definition as never, () => abort.abort());
    const execution = {
      Id: executionArn,
      Name: execName,
      Input: parsed as never,
      StartTime: record.startDate.toISOString(),
      RoleArn: 'arn:aws:iam::000000000000:role/local',
    };
    const run = machine.run(
      parsed as never,
      guard.runOptions(machine, {
        overrides: { taskResourceLocalHandlers: this.overrides(definition, taskSignal, guard, maps, record, execution) as never },
        context: { Execution: execution, Task: { Token: TASK_TOKEN_PLACEHOLDER } },
      }),
    );
    abort.signal.addEventListener('abort', () => run.abort());
    const history = this.recordHistory(record, run.eventLogs);
    const done = run.result
      .then(
        (output): Partial<ExecutionRecord> => ({ status: 'SUCCEEDED', output: JSON.stringify(output) }),
        (err: Error): Partial<ExecutionRecord> => {
          if (guard.failure) return { status: 'FAILED', error: guard.failure.name, cause: guard.failure.message };
          if (abort.signal.aborted) return { status: 'ABORTED' };
          const caught = err.cause as Error | undefined;
          if (err.name === 'ExecutionTimeoutError') return { status: 'TIMED_OUT', error: 'States.Timeout' };
          return { status: 'FAILED', error: caught?.name ?? err.name, cause: caught?.message ?? err.message };
        },
      )
      .then(async (outcome) => {
        settled.abort();
        // The execution reads as stopped only once its history is on disk, so a client that
        // saw it stop can read the whole history.
        await history;
        Object.assign(record, outcome, { quotaUsage: guard.usage() });
        record.stopDate = new Date();
        this.running.delete(executionArn);
        await this.save(record);
      });
    this.running.set(executionArn, { abort, done });
    return { executionArn, startDate: record.startDate };
  }

  /** Writes the execution's event history (as GetExecutionHistory would list it) beside its record. */
  private async recordHistory(record: ExecutionRecord, events: AsyncGenerator<unknown>): Promise<void> {
    const lines: string[] = [];
    for await (const ev of events) {
      // A Map iteration's event repeats the whole Map state's input (every item): keep the
      // parent's name and type only, or the history grows with the square of the items.
      const e = ev as { parentState?: { input?: unknown } };
      if (e.parentState) delete e.parentState.input;
      lines.push(JSON.stringify(ev));
    }
    await writeFile(join(this.dir, `${LocalExecutions.fileBase(record)}.history.jsonl`), lines.join('\n') + '\n');
  }

  async describe(executionArn: string): Promise<ExecutionRecord> {
    const r = this.records.get(executionArn);
    if (!r) throw named('ExecutionDoesNotExist', `execution ${executionArn} does not exist`);
    return r;
  }

  /** The executions of a state machine, or (`mapRunArn`) the child executions of a Map Run, newest first. */
  async list(stateMachineArn: string | undefined, statusFilter?: string, maxResults?: number, mapRunArn?: string): Promise<ExecutionRecord[]> {
    if (stateMachineArn) this.machine(stateMachineArn.split('/')[0]!);
    else if (!mapRunArn) throw named('ValidationException', 'ListExecutions needs a stateMachineArn or a mapRunArn');
    const all = [...this.records.values()].filter(
      (r) =>
        (!stateMachineArn || r.stateMachineArn === stateMachineArn) &&
        (!mapRunArn || r.mapRunArn === mapRunArn) &&
        (!statusFilter || r.status === statusFilter),
    );
    all.sort((a, b) => b.startDate.getTime() - a.startDate.getTime());
    return maxResults ? all.slice(0, maxResults) : all;
  }

  async stop(executionArn: string, error?: string, cause?: string): Promise<{ stopDate: Date }> {
    const r = await this.describe(executionArn);
    const run = this.running.get(executionArn);
    if (run) {
      run.abort.abort();
      await run.done;
      Object.assign(r, { error, cause });
      await this.save(r);
      this.onStopped(r);
    }
    return { stopDate: r.stopDate ?? new Date() };
  }

  /** Aborts every running execution (stack shutdown). */
  async close(): Promise<void> {
    for (const r of this.running.values()) r.abort.abort();
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }
}
