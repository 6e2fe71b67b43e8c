/**
 * The embedded stack's EventBridge: `events:putEvents` tasks of the state machines append
 * their entries, one JSON line each, to `<dataDir>/events.jsonl`, where an operator (or a
 * test) reads them. In AWS the same task puts them on the default event bus.
 */
import { randomUUID } from 'node:crypto';
import { appendFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface LocalEvent {
  id: string;
  time: string;
  source: string;
  detailType: string;
  detail: unknown;
}

export const eventsFile = (dataDir: string) => join(dataDir, 'events.jsonl');

export class LocalEventBus {
  private readonly file: string;
  constructor(dataDir: string) {
    this.file = eventsFile(dataDir);
  }

  /** What Step Functions' `events:putEvents` integration passes: `{ Entries: [{ Source, DetailType, Detail }] }`. */
  async putEvents(params: {
    Entries?: { Source?: string; DetailType?: string; Detail?: unknown }[];
  }): Promise<{ Entries: { EventId: string }[]; FailedEntryCount: number }> {
    const entries = params?.Entries ?? [];
    const events: LocalEvent[] = entries.map((e) => ({
      id: randomUUID(),
      time: new Date().toISOString(),
      source: String(e.Source ?? ''),
      detailType: String(e.DetailType ?? ''),
      detail: typeof e.Detail === 'string' ? (JSON.parse(e.Detail) as unknown) : e.Detail,
    }));
    if (events.length) await appendFile(this.file, events.map((e) => JSON.stringify(e) + '\n').join(''));
    return { Entries: events.map((e) => ({ EventId: e.id })), FailedEntryCount: 0 };
  }
}

/** Every event put so far (an empty list before the first). */
export async function readLocalEvents(dataDir: string): Promise<LocalEvent[]> {
  const text = await readFile(eventsFile(dataDir), 'utf8').catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return '';
    throw err;
  });
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as LocalEvent);
}
