/**
 * The web console: its pages (pages.ts), drawn from the operator API, the API itself passed
 * through under `/api/`, and the console's actions: start a backup, a deep verification or
 * a restore (Step Functions StartExecution on the stack's own workflows). It knows a stack
 * only by the functions it is given: the embedded stack's (local/operator.ts: the
 * `OperatorApi` function invoked in process) or a deployed stack's (cli/console.ts: the
 * `OperatorApiUrl` function URL, SigV4-signed, and the stack's state machines), so the same
 * pages serve both.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import type { Alert, BackupRow, OperationProgressRow, PolicyRow, RestorePointRow, RunRow, VmRow } from '../../contracts/operator.ts';
import type { MoverView } from '../../core/mover-fleet.ts';
import * as pages from './pages.ts';

export type ConsoleWorkflow = 'Backup' | 'Restore' | 'DeepVerify';

export interface ConsoleServerOptions {
  port: number;
  /** One request of the operator API (path with its query; a POST's JSON text): its status and JSON body. */
  api(method: 'GET' | 'POST', path: string, body?: string): Promise<{ status: number; body: unknown }>;
  /** The mover groups of the stack (restore and verify run on one). */
  groups: string[];
  start(workflow: ConsoleWorkflow, input: Record<string, unknown>): Promise<{ name: string }>;
  describe(workflow: ConsoleWorkflow, name: string): Promise<{ status: string; output?: string; error?: string; cause?: string } | undefined>;
}

class BadRequest extends Error {}
const MAX_BODY = 64 * 1024;

async function body(req: IncomingMessage): Promise<string> {
  let text = '';
  for await (const chunk of req) {
    text += String(chunk);
    if (text.length > MAX_BODY) throw new BadRequest(`the request body is over ${MAX_BODY} bytes`);
  }
  return text;
}

export async function startConsoleServer(o: ConsoleServerOptions): Promise<{ url: string; close(): Promise<void> }> {
  const send = (res: ServerResponse, status: number, type: string, text: string) => {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
    res.end(text);
  };
  const html = (res: ServerResponse, page: string, status = 200) => send(res, status, 'text/html; charset=utf-8', page);
  const json = (res: ServerResponse, status: number, v: unknown) => send(res, status, 'application/json', JSON.stringify(v));
  const field = (form: URLSearchParams, name: string) => {
    const v = form.get(name)?.trim();
    if (!v) throw new BadRequest(`the form has no ${name}`);
    return v;
  };

  async function action(what: string, form: URLSearchParams): Promise<string> {
    const backup = form.get('backupId') ? { backupId: form.get('backupId') } : {};
    if (what === 'backup') {
      const { name } = await o.start('Backup', { policyId: field(form, 'policyId') });
      return `/runs/${encodeURIComponent(name)}`;
    }
    const vmId = field(form, 'vmId');
    const moverGroup = field(form, 'group');
    if (!o.groups.includes(moverGroup)) throw new BadRequest(`mover group '${moverGroup}' is not in the configuration (it has ${o.groups.join(', ')})`);
    if (what === 'verify') {
      const { name } = await o.start('DeepVerify', { vmId, moverGroup, ...backup });
      return `/executions/DeepVerify/${encodeURIComponent(name)}`;
    }
    if (what === 'restore') {
      const target = field(form, 'target');
      if (!target.startsWith('/')) throw new BadRequest(`the restore target '${target}' is not an absolute path on the mover`);
      const { name } = await o.start('Restore', { vmId, moverGroup, target: resolve(target), ...backup });
      return `/executions/Restore/${encodeURIComponent(name)}`;
    }
    throw new BadRequest(`no action '${what}': the console starts backup, verify and restore`);
  }

  /** The API's answer at `path`; undefined for a 404 (the page says not found), an error for anything else. */
  async function get<T>(path: string): Promise<T | undefined> {
    const a = await o.api('GET', path);
    if (a.status === 404) return undefined;
    if (a.status !== 200) throw new Error((a.body as { message?: string })?.message ?? `the operator API answered ${a.status} for ${path}`);
    return a.body as T;
  }
  const must = async <T>(path: string) => (await get<T>(path))!;

  async function page(path: string[]): Promise<string | undefined> {
    const [what, id, name] = path;
    if (!what) {
      const [alerts, runs, policies, vms, movers] = await Promise.all([
        must<Alert[]>('/api/alerts'),
        must<RunRow[]>('/api/runs?max=10'),
        must<PolicyRow[]>('/api/policies'),
        must<VmRow[]>('/api/vms'),
        must<MoverView[]>('/api/movers'),
      ]);
      return pages.layout(
        'Overview',
        `<h2>Alerts</h2>${pages.alertsSection(alerts)}<h2>Runs</h2>${pages.runsTable(runs)}<h2>Policies</h2>${pages.policiesTable(policies)}<h2>VMs</h2>${pages.vmsTable(vms)}<h2>Movers</h2>${pages.moversTable(movers)}`,
        runs.some((r) => r.status === 'RUNNING') ? { refreshSeconds: 2 } : {},
      );
    }
    if (what === 'vms' && !id) return pages.layout('VMs', pages.vmsTable(await must<VmRow[]>('/api/vms')));
    if (what === 'vms' && id) {
      const [backups, vms] = await Promise.all([get<BackupRow[]>(`/api/vms/${encodeURIComponent(id)}/backups`), must<VmRow[]>('/api/vms')]);
      if (!backups) return undefined;
      return pages.vmPage(id, backups, o.groups, vms.find((v) => v.vmId === id)?.moverGroup);
    }
    if (what === 'runs' && !id) return pages.layout('Runs', pages.runsTable(await must<RunRow[]>('/api/runs?max=50')));
    if (what === 'runs' && id) {
      const run = await get<RunRow>(`/api/runs/${encodeURIComponent(id)}`);
      return run ? pages.runPage(run) : undefined;
    }
    if (what === 'restore-points')
      return pages.layout('Restore points (DR repositories)', pages.restorePointsTable(await must<RestorePointRow[]>('/api/restore-points')));
    if (what === 'movers') return pages.layout('Movers', pages.moversTable(await must<MoverView[]>('/api/movers')));
    if (what === 'alerts') return pages.layout('Alerts', pages.alertsSection(await must<Alert[]>('/api/alerts')));
    if (what === 'executions' && (id === 'Restore' || id === 'DeepVerify') && name) {
      const e = await o.describe(id, name);
      // A restore's and a verification's progress objects are named by their execution's name.
      return e ? pages.executionPage(id, name, e, await get<OperationProgressRow>(`/api/progress/${encodeURIComponent(name)}`)) : undefined;
    }
    return undefined;
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://console');
    const path = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    // The console acts with its stack's (or its operator's) rights and has no login of its own: it answers only
    // requests addressed to this loopback listener (no DNS rebinding), and actions only from its own pages (no cross-site POST).
    const host = req.headers.host ?? '';
    if (!/^(127\.0\.0\.1|localhost|\[::1\]):\d+$/.test(host))
      return send(res, 421, 'text/plain', `the console answers requests to 127.0.0.1 or localhost only, not to '${host}'\n`);
    const origin = req.headers.origin;
    if (req.method === 'POST' && origin && (origin === 'null' || URL.parse(origin)?.host !== host))
      return send(res, 403, 'text/plain', `a POST from ${origin} is not one of the console's own forms: refused\n`);
    try {
      if (path[0] === 'api') {
        if (req.method !== 'GET' && req.method !== 'POST')
          return json(res, 405, { error: 'MethodNotAllowed', message: 'the operator API takes GET, and POST /api/vms (`lifeboat vm add`)' });
        const a = await o.api(req.method, `${url.pathname}${url.search}`, req.method === 'POST' ? await body(req) : undefined);
        return json(res, a.status, a.body);
      }
      if (req.method === 'POST' && path[0] === 'actions' && path[1]) {
        const to = await action(path[1], new URLSearchParams(await body(req)));
        res.writeHead(303, { location: to });
        return void res.end();
      }
      if (req.method !== 'GET') return html(res, pages.layout('Not allowed', `<p>${req.method} ${url.pathname} is not an action.</p>`), 405);
      const p = await page(path);
      return p ? html(res, p) : html(res, pages.layout('Not found', `<p>Nothing at ${pages.esc(url.pathname)}.</p>`), 404);
    } catch (err) {
      const status = err instanceof BadRequest || err instanceof SyntaxError ? 400 : 500;
      const message = (err as Error).message;
      if (path[0] === 'api') return json(res, status, { error: status === 400 ? 'BadRequest' : (err as Error).name, message });
      return html(res, pages.layout(status === 400 ? 'Bad request' : 'Error', `<p class="bad" id="error">${pages.esc(message)}</p>`), status);
    }
  }

  const server = createServer((req, res) => void handle(req, res));
  await new Promise<void>((ok, fail) => server.once('error', fail).listen(o.port, '127.0.0.1', ok));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}
